/* Optional speedups for wmproxy.prot.http1: what its pure-Python fallbacks do, in C.
 *
 * Built by setup.py when a C compiler and Python's headers are there (an optional extension:
 * without them wmproxy installs and runs on the fallbacks alone). Every function here reads
 * bytes that llhttp has already validated as a complete head: each line ends in CRLF, names
 * are tokens with no space before the colon, values hold no CR or LF. They still check every
 * index against the buffer's length, so bytes that break those promises give a wrong answer
 * (which the tests compare against the fallback), never a read out of bounds.
 *
 * scan_response(data: bytes) -> (length, chunked, connection, lines) | None
 *     The end-to-end header lines of a response head and what frames its body:
 *     see http1.scan_response_py, which this mirrors.
 * split_headers(data: bytes) -> (headers, index)
 *     The header list of a head and its index by lower-case name, as llhttp's callbacks give
 *     them: see http1.split_headers_py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define CONN_KEEP_ALIVE 1
#define CONN_CLOSE 2

enum kind { OTHER, CONTENT_LENGTH, CONNECTION, TRANSFER_ENCODING, HOP };

static int is_space(unsigned char c) {
    /* what bytes.strip() strips */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

static int lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* Whether name[0:n] equals the lower-case word w (of length wn), ignoring ASCII case. */
static int name_is_n(const char *name, Py_ssize_t n, const char *w, Py_ssize_t wn) {
    Py_ssize_t i;
    if (wn != n)
        return 0;
    for (i = 0; i < n; i++)
        if (lower((unsigned char)name[i]) != (unsigned char)w[i])
            return 0;
    return 1;
}

#define name_is(name, n, w) name_is_n((name), (n), (w), (Py_ssize_t)sizeof(w) - 1)

/* The index of the CRLF at or after pos, or n when there is none. */
static Py_ssize_t find_crlf(const char *s, Py_ssize_t pos, Py_ssize_t n) {
    while (pos + 1 < n) {
        const char *cr = memchr(s + pos, '\r', (size_t)(n - 1 - pos));
        if (cr == NULL)
            return n;
        pos = cr - s;
        if (s[pos + 1] == '\n')
            return pos;
        pos++;
    }
    return n;
}

static enum kind name_kind(const char *name, Py_ssize_t n) {
    switch (lower((unsigned char)name[0])) {
    case 'c':
        if (name_is(name, n, "content-length")) return CONTENT_LENGTH;
        if (name_is(name, n, "connection")) return CONNECTION;
        return OTHER;
    case 'k':
        return name_is(name, n, "keep-alive") ? HOP : OTHER;
    case 'p':
        return (name_is(name, n, "proxy-connection") || name_is(name, n, "proxy-authenticate") ||
                name_is(name, n, "proxy-authorization")) ? HOP : OTHER;
    case 't':
        if (name_is(name, n, "transfer-encoding")) return TRANSFER_ENCODING;
        return (name_is(name, n, "te") || name_is(name, n, "trailer")) ? HOP : OTHER;
    case 'u':
        return name_is(name, n, "upgrade") ? HOP : OTHER;
    default:
        return OTHER;
    }
}

/* Trim bytes.strip() white space from both ends of [*b, *e). */
static void strip(const char *s, Py_ssize_t *b, Py_ssize_t *e) {
    while (*b < *e && is_space((unsigned char)s[*b])) (*b)++;
    while (*e > *b && is_space((unsigned char)s[*e - 1])) (*e)--;
}

/* The tokens of a Connection value as flags; -1 when one is neither keep-alive nor close
 * (nor empty): it names other headers, and the full parse decides. */
static int connection_flags(const char *s, Py_ssize_t b, Py_ssize_t e) {
    int flags = 0;
    while (b <= e) {
        Py_ssize_t comma = b, tb, te;
        while (comma < e && s[comma] != ',') comma++;
        tb = b;
        te = comma;
        strip(s, &tb, &te);
        if (te == tb)
            ;
        else if (name_is(s + tb, te - tb, "keep-alive"))
            flags |= CONN_KEEP_ALIVE;
        else if (name_is(s + tb, te - tb, "close"))
            flags |= CONN_CLOSE;
        else
            return -1;
        b = comma + 1;
    }
    return flags;
}

static PyObject *scan_response(PyObject *self, PyObject *arg) {
    const char *s;
    Py_ssize_t n, pos, eol, out_len = 0, length = -1;
    int chunked = 0, connection = 0;
    char *out;
    PyObject *lines;

    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "scan_response takes bytes");
        return NULL;
    }
    s = PyBytes_AS_STRING(arg);
    n = PyBytes_GET_SIZE(arg);
    eol = find_crlf(s, 0, n);
    if (eol >= n)
        Py_RETURN_NONE;
    lines = PyBytes_FromStringAndSize(NULL, n - eol);
    if (lines == NULL)
        return NULL;
    out = PyBytes_AS_STRING(lines);
    pos = eol; /* at the CRLF before a header line, or before the blank line that ends the head */
    while (pos + 3 < n && !(s[pos + 2] == '\r' && s[pos + 3] == '\n')) {
        Py_ssize_t start = pos + 2, end = find_crlf(s, pos + 2, n), colon, vb, ve;
        const char *c;
        enum kind kind;
        if (end >= n)
            goto full_parse; /* no CRLF after it: not a head llhttp took */
        c = memchr(s + start, ':', (size_t)(end - start));
        colon = c == NULL ? start : c - s;
        if (colon == start)
            goto full_parse; /* no name */
        kind = name_kind(s + start, colon - start);
        vb = colon + 1;
        ve = end;
        if (kind == CONTENT_LENGTH) {
            Py_ssize_t i;
            strip(s, &vb, &ve);
            if (length >= 0 || ve == vb || ve - vb > 18)
                goto full_parse; /* several, or not a plain number */
            length = 0;
            for (i = vb; i < ve; i++) {
                if (s[i] < '0' || s[i] > '9')
                    goto full_parse;
                length = length * 10 + (s[i] - '0');
            }
        } else if (kind == CONNECTION) {
            int flags = connection_flags(s, vb, ve);
            if (flags < 0)
                goto full_parse;
            connection |= flags;
        } else if (kind == TRANSFER_ENCODING) {
            strip(s, &vb, &ve);
            if (chunked || !name_is(s + vb, ve - vb, "chunked"))
                goto full_parse;
            chunked = 1;
        }
        if (kind == OTHER || kind == CONTENT_LENGTH) { /* kept: CRLF and the line */
            memcpy(out + out_len, s + pos, end - pos);
            out_len += end - pos;
        }
        pos = end;
    }
    if (_PyBytes_Resize(&lines, out_len) < 0)
        return NULL;
    return Py_BuildValue("(niiN)", length, chunked, connection, lines);

full_parse:
    Py_DECREF(lines);
    Py_RETURN_NONE;
}

static PyObject *split_headers(PyObject *self, PyObject *arg) {
    const char *s;
    Py_ssize_t n, pos;
    PyObject *headers = NULL, *index = NULL, *name = NULL, *value = NULL, *key = NULL, *pair, *values;

    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "split_headers takes bytes");
        return NULL;
    }
    s = PyBytes_AS_STRING(arg);
    n = PyBytes_GET_SIZE(arg);
    headers = PyList_New(0);
    index = PyDict_New();
    if (headers == NULL || index == NULL)
        goto error;
    pos = find_crlf(s, 0, n);
    while (pos + 3 < n && !(s[pos + 2] == '\r' && s[pos + 3] == '\n')) {
        Py_ssize_t start = pos + 2, end = find_crlf(s, pos + 2, n), colon, vb, i;
        const char *c;
        char *k;
        if (end >= n)
            break; /* not a line llhttp took: the caller's parse has failed already */
        c = memchr(s + start, ':', (size_t)(end - start));
        if (c == NULL)
            break;
        colon = c - s;
        vb = colon + 1;
        while (vb < end && (s[vb] == ' ' || s[vb] == '\t')) vb++; /* llhttp drops leading white space only */
        name = PyBytes_FromStringAndSize(s + start, colon - start);
        value = PyBytes_FromStringAndSize(s + vb, end - vb);
        key = PyBytes_FromStringAndSize(NULL, colon - start);
        if (name == NULL || value == NULL || key == NULL)
            goto error;
        k = PyBytes_AS_STRING(key);
        for (i = 0; i < colon - start; i++)
            k[i] = (char)lower((unsigned char)s[start + i]);
        pair = PyTuple_Pack(2, name, value);
        if (pair == NULL)
            goto error;
        if (PyList_Append(headers, pair) < 0) {
            Py_DECREF(pair);
            goto error;
        }
        Py_DECREF(pair);
        values = PyDict_GetItemWithError(index, key); /* borrowed */
        if (values == NULL) {
            if (PyErr_Occurred())
                goto error;
            values = PyList_New(1);
            if (values == NULL)
                goto error;
            Py_INCREF(value);
            PyList_SET_ITEM(values, 0, value);
            if (PyDict_SetItem(index, key, values) < 0) {
                Py_DECREF(values);
                goto error;
            }
            Py_DECREF(values);
        } else if (PyList_Append(values, value) < 0) {
            goto error;
        }
        Py_CLEAR(name);
        Py_CLEAR(value);
        Py_CLEAR(key);
        pos = end;
    }
    return Py_BuildValue("(NN)", headers, index);

error:
    Py_XDECREF(name);
    Py_XDECREF(value);
    Py_XDECREF(key);
    Py_XDECREF(headers);
    Py_XDECREF(index);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_response", scan_response, METH_O,
     "scan_response(head: bytes) -> (length, chunked, connection flags, end-to-end lines) | None"},
    {"split_headers", split_headers, METH_O, "split_headers(head: bytes) -> (headers, index by lower-case name)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "wmproxy.prot._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
