/* Optional speedups for wmproxy.prot.http1: what its pure-Python fallbacks do, in C.
 *
 * Built by setup.py when a C compiler and Python's headers are there (an optional extension:
 * without them wmproxy installs and runs on the fallbacks and llhttp alone). The first three
 * functions read bytes already validated as a complete head (by llhttp, or by the strict
 * grammar of the last two): each line ends in CRLF, names are tokens with no space before the
 * colon, values hold no CR or LF. They still check every index against the buffer's length,
 * so bytes that break those promises give a wrong answer (which the tests compare against the
 * fallback), never a read out of bounds.
 *
 * scan_response(data: bytes) -> (length, chunked, connection, lines) | None
 *     The end-to-end header lines of a response head and what frames its body:
 *     see http1.scan_response_py, which this mirrors.
 * split_headers(data: bytes) -> (headers, index)
 *     The header list of a head and its index by lower-case name, as llhttp's callbacks give
 *     them: see http1.split_headers_py.
 * join_head(data, start_line, extra, old_host, host) -> bytes | None
 *     A head passed on with another start line, lines appended and its Host line changed:
 *     see http1.join_head_py.
 *
 * And two that validate as well, for heads llhttp has not seen: each checks the head against a
 * strict grammar, a subset of what llhttp (strict, as httptools runs it) accepts, and answers
 * None for anything outside it, never an error: the caller then has llhttp parse the head,
 * and llhttp decides (so a refusal and its message are llhttp's alone). The subset is the
 * usual head: a start line in its plain form, header names that are tokens followed at once
 * by a colon, values of visible ASCII, space and tab, every line ending in CRLF, and no header
 * whose meaning llhttp enforces beyond that (Upgrade, Transfer-Encoding in a request, several
 * or odd Content-Length values, Content-Length beside Transfer-Encoding). The tests hold that
 * whatever these take, llhttp takes, with the same parts.
 *
 * request_head(data: bytes) -> (method, target, version, headers, index) | None
 *     A request head whose method is one of GET HEAD POST PUT DELETE OPTIONS PATCH TRACE,
 *     its target origin-form or absolute-form (http://authority/path), its version
 *     HTTP/1.1 or HTTP/1.0: method, target and version ("1.1" or "1.0") as str, and
 *     split_headers' two parts.
 * response_head(data: bytes, head_request: bool) -> (status, reason, lines, framing, reusable) | None
 *     A final response head with a status from 200 to 599 and its version HTTP/1.1 or HTTP/1.0,
 *     to a HEAD request or not: the arguments of http1.Response, as http1.quick_response_llhttp
 *     gives them (its end-to-end lines from scan_response, its body's framing, whether the
 *     server keeps the connection).
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


/* -- the strict grammar of request_head and response_head --------------------------------- */

static unsigned char TOKEN[256];   /* tchar (RFC 9110 5.6.2) */
static unsigned char VALUE[256];   /* a field value's bytes here: HTAB, SP and visible ASCII */
static unsigned char PATH[256];    /* a target's path and query: unreserved, sub-delims, ":@/?#%[]" */
static unsigned char SERVER[256];  /* an absolute-form authority: unreserved, sub-delims, ":%[]" (no
                                      * userinfo: llhttp refuses a second '@', and a proxy any) */
static PyObject *STR_11, *STR_10, *METHOD_STR[8];
static PyObject *NO_BODY, *CHUNKED, *UNTIL_CLOSE, *STR_LENGTH; /* framing.py's constants, and "length" */
static PyTypeObject *FRAMING;                                    /* framing.Framing (a tuple subclass) */
static const char *METHODS[8] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"};

static void init_tables(void) {
    const char *p;
    int c;
    for (c = '0'; c <= '9'; c++) TOKEN[c] = PATH[c] = SERVER[c] = 1;
    for (c = 'a'; c <= 'z'; c++) TOKEN[c] = PATH[c] = SERVER[c] = TOKEN[c - 32] = PATH[c - 32] = SERVER[c - 32] = 1;
    for (p = "!#$%&'*+-.^_`|~"; *p; p++) TOKEN[(unsigned char)*p] = 1;
    for (p = "-._~!$&'()*+,;=:%[]"; *p; p++) PATH[(unsigned char)*p] = SERVER[(unsigned char)*p] = 1;
    for (p = "/?#@"; *p; p++) PATH[(unsigned char)*p] = 1;
    for (c = 0x20; c < 0x7f; c++) VALUE[c] = 1;
    VALUE['\t'] = 1;
}

/* Whether the header lines from pos (the CRLF that ends the start line) to the end of the
 * n bytes are in the strict grammar: each line `token ":" value CRLF`, then the blank line as
 * the last two bytes; no Upgrade; in a request no Transfer-Encoding; at most one
 * Content-Length, of digits alone, and in a response at most one Transfer-Encoding, a lone
 * "chunked", never with a Content-Length. */
static int strict_lines(const char *s, Py_ssize_t pos, Py_ssize_t n, int request) {
    int length = 0, chunked = 0;
    for (;;) {
        Py_ssize_t start = pos + 2, i = start, vb, ve;
        if (start + 2 > n)
            return 0;
        if (s[start] == '\r')
            return s[start + 1] == '\n' && start + 2 == n;
        while (i < n && TOKEN[(unsigned char)s[i]]) i++;
        if (i == start || i >= n || s[i] != ':')
            return 0;
        vb = i + 1;
        ve = vb;
        while (ve < n && VALUE[(unsigned char)s[ve]]) ve++;
        if (ve + 1 >= n || s[ve] != '\r' || s[ve + 1] != '\n')
            return 0;
        switch (name_kind(s + start, i - start)) {
        case CONTENT_LENGTH:
            while (vb < ve && (s[vb] == ' ' || s[vb] == '\t')) vb++;
            if (length || chunked || vb == ve || ve - vb > 18)
                return 0;
            for (; vb < ve; vb++)
                if (s[vb] < '0' || s[vb] > '9')
                    return 0;
            length = 1;
            break;
        case TRANSFER_ENCODING:
            while (vb < ve && (s[vb] == ' ' || s[vb] == '\t')) vb++;
            if (request || length || chunked || !name_is(s + vb, ve - vb, "chunked"))
                return 0;
            chunked = 1;
            break;
        case HOP:
            if (name_is(s + start, i - start, "upgrade"))
                return 0;
            break;
        default:
            break;
        }
        pos = ve;
    }
}

/* scan_response's work on the n bytes at s, whose start line ends at eol (< n): the lines
 * (a new reference; None when the full parse must decide; NULL on an error), and through the
 * pointers the Content-Length (-1: none), whether chunked, the Connection flags. */
static PyObject *scan_lines(const char *s, Py_ssize_t n, Py_ssize_t eol, Py_ssize_t *length_out, int *chunked_out,
                            int *connection_out) {
    Py_ssize_t pos, out_len = 0, length = -1;
    int chunked = 0, connection = 0;
    char *out;
    PyObject *lines;

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
    *length_out = length;
    *chunked_out = chunked;
    *connection_out = connection;
    return lines;

full_parse:
    Py_DECREF(lines);
    Py_RETURN_NONE;
}

static PyObject *scan(const char *s, Py_ssize_t n, Py_ssize_t eol) {
    Py_ssize_t length;
    int chunked, connection;
    PyObject *lines = scan_lines(s, n, eol, &length, &chunked, &connection);
    if (lines == NULL || lines == Py_None)
        return lines;
    return Py_BuildValue("(niiN)", length, chunked, connection, lines);
}

static PyObject *scan_response(PyObject *self, PyObject *arg) {
    Py_ssize_t eol;

    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "scan_response takes bytes");
        return NULL;
    }
    eol = find_crlf(PyBytes_AS_STRING(arg), 0, PyBytes_GET_SIZE(arg));
    if (eol >= PyBytes_GET_SIZE(arg))
        Py_RETURN_NONE;
    return scan(PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg), eol);
}

/* split_headers' work on the n bytes at s, from pos (the CRLF that ends the start line):
 * (headers, index), or NULL with an exception set. */
static PyObject *split(const char *s, Py_ssize_t n, Py_ssize_t pos) {
    PyObject *headers = NULL, *index = NULL, *name = NULL, *value = NULL, *key = NULL, *pair, *values;

    headers = PyList_New(0);
    index = PyDict_New();
    if (headers == NULL || index == NULL)
        goto error;
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

static PyObject *split_headers(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "split_headers takes bytes");
        return NULL;
    }
    return split(PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg), find_crlf(PyBytes_AS_STRING(arg), 0, PyBytes_GET_SIZE(arg)));
}

/* The end of an absolute-form target's scheme and authority (http://authority) starting at i,
 * followed by its path or the space that ends the target; 0 when the bytes there are not one. */
static Py_ssize_t absolute_prefix(const char *s, Py_ssize_t i, Py_ssize_t end) {
    Py_ssize_t b = i;
    while (i < end && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z'))) i++;
    if (i == b || i + 3 > end || s[i] != ':' || s[i + 1] != '/' || s[i + 2] != '/')
        return 0;
    i += 3;
    b = i;
    while (i < end && SERVER[(unsigned char)s[i]]) i++;
    if (i == b || i >= end || (s[i] != '/' && s[i] != ' '))
        return 0;
    return i;
}

static PyObject *request_head(PyObject *self, PyObject *arg) {
    const char *s;
    Py_ssize_t n, i, start, end, eol;
    int m;
    PyObject *parts, *target, *result;

    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "request_head takes bytes");
        return NULL;
    }
    s = PyBytes_AS_STRING(arg);
    n = PyBytes_GET_SIZE(arg);
    for (m = 0; m < 8; m++) {
        size_t len = strlen(METHODS[m]);
        if ((Py_ssize_t)len + 1 < n && memcmp(s, METHODS[m], len) == 0 && s[len] == ' ')
            break;
    }
    if (m == 8)
        Py_RETURN_NONE;
    start = i = (Py_ssize_t)strlen(METHODS[m]) + 1;
    if (i < n && s[i] != '/') {
        i = absolute_prefix(s, i, n);
        if (i == 0)
            Py_RETURN_NONE;
    }
    while (i < n && PATH[(unsigned char)s[i]]) i++;
    end = i;
    if (end == start || end + 11 > n || memcmp(s + end, " HTTP/1.", 8) != 0 || (s[end + 8] != '1' && s[end + 8] != '0') ||
        s[end + 9] != '\r' || s[end + 10] != '\n')
        Py_RETURN_NONE;
    eol = end + 9;
    if (!strict_lines(s, eol, n, 1))
        Py_RETURN_NONE;
    parts = split(s, n, eol);
    if (parts == NULL)
        return NULL;
    target = PyUnicode_DecodeLatin1(s + start, end - start, NULL);
    if (target == NULL) {
        Py_DECREF(parts);
        return NULL;
    }
    result = Py_BuildValue("(ONOOO)", METHOD_STR[m], target, s[end + 8] == '1' ? STR_11 : STR_10,
                           PyTuple_GET_ITEM(parts, 0), PyTuple_GET_ITEM(parts, 1));
    Py_DECREF(parts);
    return result;
}

static PyObject *response_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const char *s;
    Py_ssize_t n, eol, length;
    int status, chunked, connection, keep, head;
    PyObject *lines, *framing;

    (void)self;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "response_head takes (bytes, bool)");
        return NULL;
    }
    s = PyBytes_AS_STRING(args[0]);
    n = PyBytes_GET_SIZE(args[0]);
    /* HTTP/1.x SP 3DIGIT SP reason CRLF */
    if (n < 15 || memcmp(s, "HTTP/1.", 7) != 0 || (s[7] != '1' && s[7] != '0') || s[8] != ' ' || s[9] < '2' ||
        s[9] > '5' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9' || s[12] != ' ')
        Py_RETURN_NONE;
    for (eol = 13; eol < n && VALUE[(unsigned char)s[eol]]; eol++)
        ;
    if (eol + 1 >= n || s[eol] != '\r' || s[eol + 1] != '\n' || !strict_lines(s, eol, n, 0))
        Py_RETURN_NONE;
    lines = scan_lines(s, n, eol, &length, &chunked, &connection);
    if (lines == NULL || lines == Py_None)
        return lines;
    status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    head = PyObject_IsTrue(args[1]);
    if (head < 0) {
        Py_DECREF(lines);
        return NULL;
    }
    /* the body's framing (RFC 9112 6.3) and whether the server keeps the connection after it */
    if (head || status == 204 || status == 304)
        framing = NO_BODY;
    else if (chunked)
        framing = CHUNKED;
    else if (length < 0)
        framing = UNTIL_CLOSE;
    else
        framing = length ? NULL : NO_BODY;
    keep = !(connection & CONN_CLOSE) && (s[7] == '1' || (connection & CONN_KEEP_ALIVE)) && framing != UNTIL_CLOSE;
    if (framing == NULL) {
        /* Framing("length", length), built as the tuple it is (its __new__ is Python code) */
        PyObject *n = PyLong_FromSsize_t(length);
        if (n == NULL || (framing = FRAMING->tp_alloc(FRAMING, 2)) == NULL) {
            Py_XDECREF(n);
            Py_DECREF(lines);
            return NULL;
        }
        Py_INCREF(STR_LENGTH);
        PyTuple_SET_ITEM(framing, 0, STR_LENGTH);
        PyTuple_SET_ITEM(framing, 1, n);
        return Py_BuildValue("(iy#NNO)", status, s + 13, eol - 13, lines, framing, keep ? Py_True : Py_False);
    }
    return Py_BuildValue("(iy#NOO)", status, s + 13, eol - 13, lines, framing, keep ? Py_True : Py_False);
}

/* join_head(data, start_line, extra, old_host, host): see http1.join_head_py. */
static PyObject *join_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const char *s, *old = NULL;
    Py_ssize_t n, eol, line = -1, line_end = 0, old_n = 0, host_n = 0, size;
    PyObject *start, *extra, *host, *out;
    char *o;

    (void)self;
    if (nargs != 5 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) || !PyBytes_Check(args[2]) ||
        (args[3] != Py_None && !PyBytes_Check(args[3])) || (args[4] != Py_None && !PyBytes_Check(args[4])) ||
        (args[3] == Py_None) != (args[4] == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "join_head takes (bytes, bytes, bytes, bytes | None, bytes | None)");
        return NULL;
    }
    s = PyBytes_AS_STRING(args[0]);
    n = PyBytes_GET_SIZE(args[0]);
    start = args[1];
    extra = args[2];
    host = args[4];
    eol = find_crlf(s, 0, n);
    if (eol + 4 > n)
        Py_RETURN_NONE; /* not a head ending in CRLF CRLF */
    if (host != Py_None) {
        Py_ssize_t pos = eol;
        old = PyBytes_AS_STRING(args[3]);
        old_n = PyBytes_GET_SIZE(args[3]);
        host_n = PyBytes_GET_SIZE(host);
        /* the line "Host: <old>" (a CRLF starts a line: the first such is the one) */
        while (pos + 1 < n) {
            Py_ssize_t end = find_crlf(s, pos + 2, n);
            if (end >= n)
                break;
            if (end - (pos + 2) == 6 + old_n && memcmp(s + pos + 2, "Host: ", 6) == 0 &&
                memcmp(s + pos + 8, old, (size_t)old_n) == 0) {
                line = pos;
                line_end = end;
                break;
            }
            pos = end;
        }
        if (line < 0)
            Py_RETURN_NONE;
    }
    size = PyBytes_GET_SIZE(start) + (n - 4 - eol) + PyBytes_GET_SIZE(extra) + 4 +
           (line < 0 ? 0 : host_n - old_n);
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    o = PyBytes_AS_STRING(out);
    memcpy(o, PyBytes_AS_STRING(start), (size_t)PyBytes_GET_SIZE(start));
    o += PyBytes_GET_SIZE(start);
    if (line < 0) {
        memcpy(o, s + eol, (size_t)(n - 4 - eol));
        o += n - 4 - eol;
    } else {
        memcpy(o, s + eol, (size_t)(line + 8 - eol)); /* up to and with "\r\nHost: " */
        o += line + 8 - eol;
        memcpy(o, PyBytes_AS_STRING(host), (size_t)host_n);
        o += host_n;
        memcpy(o, s + line_end, (size_t)(n - 4 - line_end));
        o += n - 4 - line_end;
    }
    memcpy(o, PyBytes_AS_STRING(extra), (size_t)PyBytes_GET_SIZE(extra));
    o += PyBytes_GET_SIZE(extra);
    memcpy(o, "\r\n\r\n", 4);
    return out;
}

/* metrics.Histogram.observe: counts is [one count per bucket (the last: above every bound),
 * then the float sum]; the bounds are metrics.BUCKETS (a test compares this with observe_py). */
static const double BOUNDS[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};
#define NBOUNDS ((Py_ssize_t)(sizeof(BOUNDS) / sizeof(BOUNDS[0])))
static PyObject *ONE;

static PyObject *observe(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[0]) || PyList_GET_SIZE(args[0]) != NBOUNDS + 2) {
        PyErr_SetString(PyExc_TypeError, "observe(counts: list of the buckets' counts and the sum, seconds)");
        return NULL;
    }
    double v = PyFloat_AsDouble(args[1]);
    if (v == -1.0 && PyErr_Occurred())
        return NULL;
    Py_ssize_t i = 0;
    while (i < NBOUNDS && v > BOUNDS[i])
        i++;
    PyObject *list = args[0], *old = PyList_GET_ITEM(list, i);
    PyObject *count = PyNumber_Add(old, ONE);
    if (count == NULL)
        return NULL;
    PyList_SET_ITEM(list, i, count);
    Py_DECREF(old);
    old = PyList_GET_ITEM(list, NBOUNDS + 1);
    double sum = PyFloat_AsDouble(old);
    if (sum == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *total = PyFloat_FromDouble(sum + v);
    if (total == NULL)
        return NULL;
    PyList_SET_ITEM(list, NBOUNDS + 1, total);
    Py_DECREF(old);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"observe", (PyCFunction)(void (*)(void))observe, METH_FASTCALL,
     "observe(counts, seconds): metrics.Histogram's observation (see metrics.observe_py)"},
    {"scan_response", scan_response, METH_O,
     "scan_response(head: bytes) -> (length, chunked, connection flags, end-to-end lines) | None"},
    {"split_headers", split_headers, METH_O, "split_headers(head: bytes) -> (headers, index by lower-case name)"},
    {"join_head", (PyCFunction)(void (*)(void))join_head, METH_FASTCALL,
     "join_head(data, start_line, extra, old_host, host) -> bytes | None: see http1.join_head_py"},
    {"request_head", request_head, METH_O,
     "request_head(head: bytes) -> (method, target, version, headers, index) | None (None: llhttp decides)"},
    {"response_head", (PyCFunction)(void (*)(void))response_head, METH_FASTCALL,
     "response_head(head: bytes, head_request: bool) -> (status, reason, lines, framing, reusable) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "wmproxy.prot._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    int m;
    PyObject *framing;
    init_tables();
    ONE = PyLong_FromLong(1);
    if (ONE == NULL)
        return NULL;
    STR_11 = PyUnicode_InternFromString("1.1");
    STR_10 = PyUnicode_InternFromString("1.0");
    if (STR_11 == NULL || STR_10 == NULL)
        return NULL;
    for (m = 0; m < 8; m++)
        if ((METHOD_STR[m] = PyUnicode_InternFromString(METHODS[m])) == NULL)
            return NULL;
    framing = PyImport_ImportModule("wmproxy.prot.framing"); /* pure Python, imports no C */
    if (framing == NULL)
        return NULL;
    NO_BODY = PyObject_GetAttrString(framing, "NO_BODY");
    CHUNKED = PyObject_GetAttrString(framing, "CHUNKED");
    UNTIL_CLOSE = PyObject_GetAttrString(framing, "UNTIL_CLOSE");
    FRAMING = (PyTypeObject *)PyObject_GetAttrString(framing, "Framing");
    Py_DECREF(framing);
    STR_LENGTH = PyUnicode_InternFromString("length");
    if (NO_BODY == NULL || CHUNKED == NULL || UNTIL_CLOSE == NULL || FRAMING == NULL || STR_LENGTH == NULL)
        return NULL;
    if (!PyType_Check(FRAMING) || !PyType_IsSubtype(FRAMING, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "wmproxy.prot.framing.Framing must be a tuple type");
        return NULL;
    }
    return PyModule_Create(&module);
}
