"""HTTP/1.x message heads for the proxy: parsing through httptools (llhttp) or the C readers,
hop-by-hop headers (RFC 9110 7.6.1), the heads passed on and the proxy's own short answers.
Pure: bytes in, values out.

A head is parsed only once its terminating blank line is in hand (the reader finds it), so a
fresh parser per head is fed exactly the head bytes. The neighbours: prot/framing.py says how
a body is delimited, prot/chunked.py decodes the chunked coding, prot/target.py reads request
targets, prot/rules.py applies header rules, prot/auth.py reads Basic credentials.
"""

from __future__ import annotations

from email.utils import formatdate
from http import HTTPStatus

import re
import time
from typing import Any, Callable, Optional, Sequence
import httptools

from ..errors import ProtocolError
from . import speedups
from .framing import CHUNKED, NO_BODY, UNTIL_CLOSE, Framing, of_length, response_framing

Headers = list[tuple[bytes, bytes]]  # original case and order kept
Index = dict[bytes, list[bytes]]  # lower-case name -> values

# RFC 9110 7.6.1, plus the proxy-only ones a proxy consumes.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    )
)

REASONS = {status.value: status.phrase for status in HTTPStatus}  # 413 is "Content Too Large" (RFC 9110)
REASONS[413] = "Content Too Large"


class Head:
    """A request or response head. For a request ``status`` is 0; for a response
    ``method``/``target`` are empty."""

    __slots__ = ("version", "headers", "method", "target", "status", "reason", "upgrade", "index", "connection")

    def __init__(self, version: str, headers: Headers, method: str = "", target: str = "", status: int = 0,
                 reason: bytes = b"", upgrade: bool = False, index: Optional[Index] = None) -> None:
        self.version = version  # "1.1" or "1.0"
        self.headers = headers
        self.method = method
        self.target = target
        self.status = status
        self.reason = reason
        self.upgrade = upgrade  # llhttp saw CONNECT or a valid Upgrade request
        if index is None:  # lower-case name -> [values]
            index = {}
            for k, v in headers:
                index.setdefault(k.lower(), []).append(v)
        self.index = index
        values = index.get(b"connection")  # its tokens, lower-case: asked for by every message
        if not values:
            self.connection = _NONE
        elif len(values) == 1 and b"," not in values[0]:  # the usual "keep-alive" or "close"
            token = values[0].strip().lower()
            self.connection = frozenset((token,)) if token else _NONE
        else:
            self.connection = frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())

    def __repr__(self) -> str:
        return (f"Head({self.version!r}, {self.headers!r}, method={self.method!r}, target={self.target!r}, "
                f"status={self.status!r}, reason={self.reason!r}, upgrade={self.upgrade!r})")

    def get(self, name: bytes) -> Optional[bytes]:
        """First value of header ``name`` (lower-case bytes), or None."""
        values = self.index.get(name)
        return values[0] if values else None

    def get_all(self, name: bytes) -> list[bytes]:
        return self.index.get(name, [])

    def tokens(self, name: bytes) -> frozenset[bytes]:
        """Comma-separated tokens of every ``name`` header, lower-cased (Connection, TE...)."""
        if name == b"connection":
            return self.connection
        values = self.index.get(name)
        return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip()) if values else _NONE

    def without(self, names: frozenset[bytes] | set[bytes]) -> Headers:
        """The headers minus those whose lower-case name is in ``names`` (order kept)."""
        if names.isdisjoint(self.index):
            return list(self.headers)
        return [(k, v) for k, v in self.headers if k.lower() not in names]

    def end_to_end(self, also: frozenset[bytes] = frozenset()) -> Headers:
        """The headers to forward: without hop-by-hop ones (RFC 9110 7.6.1), those the
        Connection header names, and ``also``."""
        drop = _dropped(also)
        named = self.connection
        if named:  # (never the framing or the Host: a Connection line naming those would desync the next hop)
            drop = drop | (named - _NEVER_NAMED)
        return self.without(drop)

    def expects_continue(self) -> bool:
        """Whether the request asks for a 100 (Continue) before sending its body."""
        value = self.get(b"expect")
        return value is not None and value.lower() == b"100-continue"

    def wants_keep_alive(self) -> bool:
        """Whether the sender of this head asks to keep the connection open ("close" wins over
        "keep-alive", RFC 9112 9.3)."""
        if b"close" in self.connection:
            return False
        return self.version == "1.1" or b"keep-alive" in self.connection


_NONE: frozenset[bytes] = frozenset()
_NEVER_NAMED = frozenset((b"content-length", b"host"))


_DROPPED: dict[frozenset[bytes], frozenset[bytes]] = {}  # also -> HOP_BY_HOP | also


def _dropped(also: frozenset[bytes]) -> frozenset[bytes]:
    """HOP_BY_HOP | also, remembered (a dict, not lru_cache: a lookup per head)."""
    drop = _DROPPED.get(also)
    if drop is None:
        if len(_DROPPED) > 64:  # callers pass a few constant sets; bounded all the same
            _DROPPED.clear()
        drop = _DROPPED[also] = HOP_BY_HOP | also
    return drop


class _Silent:
    """httptools callbacks for a head validated, not collected: none. A parser looks up every
    callback name when it is made, and a missing one costs it an exception: here they are
    all present, as None (the parser then does not call back)."""

    __slots__ = ()
    on_message_begin = on_url = on_status = on_header = on_headers_complete = on_body = None
    on_chunk_header = on_chunk_complete = None
    on_message_complete: Any = None  # (a subclass's method)


_SILENT = _Silent()


class _Ending(_Silent):
    """httptools callbacks for a request head split apart afterwards (:func:`split_headers`):
    only whether llhttp saw its message end with it."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


def split_headers_py(data: bytes) -> tuple[Headers, dict[bytes, list[bytes]]]:
    """The header list of a head llhttp has validated, as its callbacks would give it (each
    value without its leading white space: llhttp keeps the trailing), and its index: lower-case
    name -> values. ``split_headers`` is this function in C (wmproxy/prot/_speedups.c) where it
    was built."""
    headers: Headers = []
    index: dict[bytes, list[bytes]] = {}
    eol = data.find(b"\r\n")
    if eol + 4 == len(data):
        return headers, index
    for line in data[eol + 2:-4].split(b"\r\n"):
        name, _, value = line.partition(b":")
        value = value.lstrip(b" \t")
        headers.append((name, value))
        lower = name.lower()
        if lower in index:
            index[lower].append(value)
        else:
            index[lower] = [value]
    return headers, index


def _feed(parser: Any, data: bytes) -> bool:
    """Feed a complete head (up to its first CRLF CRLF, as httpio.read_head cuts it); returns
    whether llhttp flagged an upgrade (CONNECT/Upgrade). llhttp requires CRLF at the end of
    every line, so a head it takes without an error ends its header section exactly at the
    end of ``data``: no callback is needed to know it did."""
    if data[-4:] != b"\r\n\r\n":
        raise ProtocolError("malformed HTTP head: incomplete")
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return True
    except httptools.HttpParserError as e:
        raise ProtocolError(f"malformed HTTP head: {e}") from None
    return False


_spare: list[tuple[Any, Any]] = []  # a request parser and its collector back at the start of a message
_VERSIONS = {b" HTTP/1.1": "1.1", b" HTTP/1.0": "1.0"}


def _reusable(version: str, connection: frozenset[bytes], proxy_connection: bool) -> bool:
    """Whether llhttp is back at the start of a message after a complete head without a body
    and without an upgrade: not after a close, which llhttp also reads from Proxy-Connection."""
    if proxy_connection or b"close" in connection:
        return False
    return version == "1.1" or b"keep-alive" in connection


def parse_request_head(data: bytes) -> Head:
    """Parse a request head ending in CRLF CRLF. Raises ProtocolError (status 400).

    Where the C speedups are built, ``request_head`` reads the usual head in one call: it
    checks a strict grammar, a subset of what llhttp takes (the tests hold it to that), and
    answers None for anything outside it (wmproxy/prot/_speedups.c). Every other head goes to
    :func:`parse_request_head_llhttp`: llhttp decides, so a refusal is always llhttp's."""
    if request_head is not None:
        parsed = request_head(data)
        if parsed is not None:
            method, target, version, headers, index = parsed
            return Head(version, headers, method, target, 0, b"", False, index)
    return parse_request_head_llhttp(data)


def parse_request_head_llhttp(data: bytes) -> Head:
    """:func:`parse_request_head` by llhttp alone. llhttp validates the head;
    :func:`split_headers` then takes it apart (one call, not a callback per header). A parser
    whose message ended with its head (no body, keep-alive, no upgrade) is clean again and kept
    for the next call (creating one costs as much as parsing a short head). A kept parser that
    refuses a head is not trusted with the verdict: a fresh one parses it again (one client's
    message must never fail another's)."""
    p = None
    if _spare:
        p, c = _spare.pop()
        try:
            upgrade = _feed(p, data)
        except ProtocolError:
            p = None
    if p is None:
        c = _Ending()
        p = httptools.HttpRequestParser(c)
        upgrade = _feed(p, data)
    eol = data.find(b"\r\n")  # the request line, which llhttp has checked: METHOD SP target SP HTTP/x.y
    version = _VERSIONS.get(data[eol - 9:eol])
    if version is None:
        raise ProtocolError(f"{data[eol - 8:eol].decode('latin-1')} is not supported (HTTP/1.1 and 1.0 are)", 505)
    method = p.get_method().decode("ascii")
    headers, index = split_headers(data)
    target = data[len(method) + 1:eol - 9].strip(b" ")  # (llhttp lets more than one space through)
    head = Head(version, headers, method, target.decode("latin-1"), 0, b"", upgrade, index)
    if c.complete and not upgrade and _reusable(version, head.connection, b"proxy-connection" in index):
        c.complete = False
        _spare.append((p, c))
    return head


def parse_response_head(data: bytes) -> Head:
    """Parse a response head ending in CRLF CRLF. Raises ProtocolError."""
    p = httptools.HttpResponseParser(_SILENT)
    upgrade = _feed(p, data)
    status = p.get_status_code()
    if status < 100:  # (llhttp takes any three digits; "099" is no status: RFC 9110 15, as HAProxy refuses it)
        raise ProtocolError(f"status {status:03d} is not a status code (100-999 are)", 502)
    headers, index = split_headers(data)
    # the status line, which llhttp has checked: HTTP/x.y SP 3DIGIT SP reason
    return Head(p.get_http_version(), headers, status=status, reason=_reason(data), upgrade=upgrade, index=index)


_NOT_REASON = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")


def _reason(data: bytes) -> bytes:
    """The reason phrase of a response head's status line, "HTTP/x.y SP 3DIGIT SP reason",
    which llhttp has checked but for the reason's bytes: it lets NUL and other controls
    through, which RFC 9112 4 does not (HTAB, SP, VCHAR, obs-text) and a client may cut or act
    on. Raises ProtocolError (502) for one."""
    reason = data[13:data.find(b"\r\n")]
    if _NOT_REASON.search(reason):
        raise ProtocolError(f"a control byte in the reason phrase {reason[:40]!r}", 502)
    return reason


def passthrough_head(head: Head, data: bytes, start_line: bytes, extra: bytes, drop: frozenset[bytes],
                     host: Optional[bytes] = None) -> Optional[bytes]:
    """The head to send on for request ``head`` (parsed from ``data``): ``start_line``, the
    header lines of ``data`` as they came, then ``extra`` lines (each ``b"\r\nName: value"``),
    when every header goes on unchanged: no hop-by-hop one (so no Connection header either,
    nor anything it could name) and none in ``drop``. With ``host``, the request's one Host
    line says that instead (a forward proxy's Host is the URL's, RFC 9112 3.2.2), when the line
    is in the usual form ``Host: value``. None when a line must go or the Host line is not
    there as expected: then :func:`upstream_headers` builds the list. The head has been
    validated: every line ends in CRLF, no folding, no space before a colon, no CR or LF inside
    a value (Python building the same lines again cost a twentieth of a proxied request)."""
    index = head.index
    if not (HOP_BY_HOP.isdisjoint(index) and drop.isdisjoint(index)):
        return None
    old = None
    if host is not None:
        values = index.get(b"host")
        if values is None or len(values) != 1:
            return None
        old = values[0]
        if old == host:  # the line says it already
            old = host = None
    return join_head(data, start_line, extra, old, host)


def join_head_py(data: bytes, start_line: bytes, extra: bytes, old_host: Optional[bytes],
                 host: Optional[bytes]) -> Optional[bytes]:
    """``start_line``, the header lines of the head ``data`` (its own start line and final
    CRLF CRLF left out), ``extra``, CRLF CRLF; with ``host``, its line ``Host: <old_host>``
    says ``Host: <host>`` instead (None when there is no such line). ``join_head`` is this
    function in C (wmproxy/prot/_speedups.c) where it was built."""
    eol = data.find(b"\r\n")
    if (host is None) != (old_host is None):
        raise TypeError("join_head takes a host and the old host together, or neither")
    if host is None or old_host is None:
        return b"".join((start_line, data[eol:-4], extra, b"\r\n\r\n"))
    line = b"\r\nHost: " + old_host + b"\r\n"
    i = data.find(line, eol)  # a CRLF starts a line: this is the one Host line
    if i < 0:
        return None
    return b"".join((start_line, data[eol:i], b"\r\nHost: ", host, data[i + len(line) - 2:-4], extra, b"\r\n\r\n"))


def upstream_headers(head: Head, framing: Framing, drop: frozenset[bytes]) -> tuple[Headers, Optional[bytes]]:
    """The headers of request ``head`` to pass on to its server: end to end ones without
    ``drop``, with the upgrade the client asks for and the chunked coding of its body (which
    the proxy decodes and codes again); and that upgrade's protocol (None: none)."""
    headers = head.end_to_end(drop)
    upgrade = head.get(b"upgrade") if b"upgrade" in head.connection else None
    if upgrade:
        headers += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
    if framing == CHUNKED:
        headers.append((b"Transfer-Encoding", b"chunked"))
    return headers, upgrade


def forwarded_for(head: Head, ip: bytes) -> bytes:
    """The X-Forwarded-For value to send on: the client's list with ``ip`` appended."""
    earlier = head.index.get(b"x-forwarded-for")
    return b", ".join([*earlier, ip]) if earlier else ip


class Response:
    """A server's final response head as the proxy passes it on: ``lines`` are its end-to-end
    header lines (each ``b"\r\nName: value"``), ``framing`` its body's, ``reusable`` whether the
    server keeps its connection open after the body; ``head`` the parsed Head, or None when
    the head was passed through as bytes (:func:`quick_response`)."""

    __slots__ = ("status", "reason", "lines", "framing", "reusable", "head")

    def __init__(self, status: int, reason: bytes, lines: bytes, framing: Framing, reusable: bool,
                 head: Optional[Head] = None) -> None:
        self.status = status
        self.reason = reason or REASONS.get(status, "").encode("latin-1")
        self.lines = lines
        self.framing = framing
        self.reusable = reusable
        self.head = head

    @classmethod
    def of(cls, head: Head, method: str, finish: Optional[Callable[[Headers], Headers]] = None) -> "Response":
        """From a parsed head; ``finish`` (headers -> headers: header rules) applied to its
        end-to-end headers."""
        framing = response_framing(method, head)
        headers = head.end_to_end()  # (llhttp refuses a Content-Length beside a Transfer-Encoding)
        if finish is not None:
            headers = finish(headers)
        # (after a 101 the connection speaks another protocol: never one for a next request)
        return cls(head.status, head.reason, encode_lines(headers), framing,
                   framing != UNTIL_CLOSE and head.status != 101 and head.wants_keep_alive(), head)

    def encode(self, extra: bytes = b"") -> bytes:
        """The head to send to an HTTP/1.1 or 1.0 client, ``extra`` lines (same form) appended."""
        usual = _STATUS_LINES.get(self.status)  # (its usual reason, the status line with it)
        if usual is not None and usual[0] == self.reason:
            return b"".join((usual[1], self.lines, extra, b"\r\n\r\n"))
        return b"HTTP/1.1 %d %s%s%s\r\n\r\n" % (self.status, self.reason, self.lines, extra)


# status -> (the usual reason phrase, the status line saying it), built once
_STATUS_LINES = {status: (reason.encode("latin-1"), b"HTTP/1.1 %d %s" % (status, reason.encode("latin-1")))
                 for status, reason in REASONS.items()}


# The lines a passed-on head reads: the hop-by-hop ones (RFC 9110 7.6.1), which it loses, and
# Content-Length, names in their own case. llhttp (strict) has made sure every line ends in
# CRLF, with no folding and no space before ':'. (The lookahead on the first letter lets sre
# leave the other lines sooner: a third fewer instructions per head.)
_READ_LINES = re.compile(rb"(\r\n(?=[cCkKpPtTuU])(connection|keep-alive|proxy-connection|te|trailer|transfer-encoding"
                         rb"|upgrade|proxy-authenticate|proxy-authorization|content-length):([^\r]*))", re.I)
CONN_KEEP_ALIVE, CONN_CLOSE = 1, 2  # Connection tokens as scan_response gives them
_CONNECTION_FLAGS = {b" keep-alive": CONN_KEEP_ALIVE, b" close": CONN_CLOSE, b"keep-alive": CONN_KEEP_ALIVE,
                     b"close": CONN_CLOSE, b" Keep-Alive": CONN_KEEP_ALIVE, b" Close": CONN_CLOSE}


def _connection_flags(value: bytes) -> Optional[int]:
    """The tokens of a Connection value as CONN_* flags; None when one names another header
    (which then goes too: the full parse does that)."""
    flags = _CONNECTION_FLAGS.get(value)
    if flags is not None:
        return flags
    flags = 0
    for token in value.split(b","):
        token = token.strip().lower()
        if token == b"keep-alive":
            flags |= CONN_KEEP_ALIVE
        elif token == b"close":
            flags |= CONN_CLOSE
        elif token:
            return None
    return flags


def quick_response(data: bytes, method: str) -> Optional[Response]:
    """The common final response passed on without building its header list: its end-to-end
    lines and what frames its body read by :func:`scan_response`. None when the head needs
    :func:`parse_response_head` (1xx and 101, a version other than 1.0/1.1, a Connection
    header naming other headers, several or invalid Content-Length values, a
    Transfer-Encoding other than a lone chunked). Raises ProtocolError for a malformed head.
    The C ``response_head``, where built, reads the usual head in one call (a strict grammar,
    a subset of what llhttp takes); any other goes to :func:`quick_response_llhttp`."""
    if response_head is not None:
        fast = response_head(data, method == "HEAD")
        if fast is not None:
            return Response(*fast)
    return quick_response_llhttp(data, method)


def quick_response_llhttp(data: bytes, method: str) -> Optional[Response]:
    """:func:`quick_response` with the head validated by llhttp."""
    parser = httptools.HttpResponseParser(_SILENT)
    if _feed(parser, data):
        return None
    status = parser.get_status_code()
    version = data[:9]
    if status < 200 or (version != b"HTTP/1.1 " and version != b"HTTP/1.0 "):
        return None
    scanned = scan_response(data)
    if scanned is None:
        return None
    length, chunked, connection, lines = scanned
    if method == "HEAD" or status == 204 or status == 304:
        framing = NO_BODY
    elif chunked:
        framing = CHUNKED
    elif length < 0:
        framing = UNTIL_CLOSE
    else:
        framing = of_length(length)
    if connection & CONN_CLOSE:
        keep = False
    else:
        keep = version == b"HTTP/1.1 " or bool(connection & CONN_KEEP_ALIVE)
    return Response(status, _reason(data), lines, framing, keep and framing != UNTIL_CLOSE)


def scan_response_py(data: bytes) -> Optional[tuple[int, bool, int, bytes]]:
    """For a response head llhttp has validated: (its Content-Length or -1, whether its
    Transfer-Encoding is a lone chunked, its Connection tokens as CONN_* flags, its end-to-end
    header lines: each ``b"\r\nName: value"``, the hop-by-hop ones cut out). None when the
    full parse must decide: several or invalid Content-Length values, another
    Transfer-Encoding, a Connection header naming other headers. ``scan_response`` is this
    function in C (wmproxy/prot/_speedups.c) where it was built."""
    connection = 0
    chunked = False
    length = -1
    kept = data
    for line, name, value in _READ_LINES.findall(data):
        name = name.lower()
        if name == b"content-length":
            value = value.strip()
            if length >= 0 or not value.isdigit() or len(value) > 18:
                return None  # several, or not a plain number: the full parse decides
            length = int(value)
            continue
        # out with the line: its first occurrence is this one (an earlier line starting the
        # same way would have the same hop-by-hop name, so it was found and cut before it)
        kept = kept.replace(line, b"", 1)
        if name == b"connection":
            flags = _connection_flags(value)
            if flags is None:
                return None
            connection |= flags
        elif name == b"transfer-encoding":
            if chunked or value.strip().lower() != b"chunked":
                return None
            chunked = True
    return length, chunked, connection, kept[data.find(b"\r\n"):-4]


# The C versions of split_headers_py and scan_response_py, where setup.py could build them, and
# the C readers of the usual heads (request_head, response_head; without them llhttp reads all).
split_headers: Callable[[bytes], tuple[Headers, Index]] = split_headers_py
scan_response: Callable[[bytes], Optional[tuple[int, bool, int, bytes]]] = scan_response_py
join_head: Callable[[bytes, bytes, bytes, Optional[bytes], Optional[bytes]], Optional[bytes]] = join_head_py
request_head: Optional[Callable[[bytes], Optional[tuple[str, str, str, Headers, Index]]]] = None
response_head: Optional[Callable[[bytes, bool], Optional[tuple[int, bytes, bytes, Framing, bool]]]] = None
if speedups.C is not None:  # (prot/speedups.py decides)
    split_headers, scan_response, join_head = speedups.C.split_headers, speedups.C.scan_response, speedups.C.join_head
    request_head, response_head = speedups.C.request_head, speedups.C.response_head
SPEEDUPS = scan_response is not scan_response_py  # whether the C versions are in use


# A Host value (RFC 9112 3.2, RFC 3986 3.2.2): uri-host [ ":" port ]
_HOST_VALUE = re.compile(rb"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?")
MAX_HEADERS = 100
_GOOD_HOSTS: set[bytes] = set()  # Host values found valid (bounded: cleared at 4096)


def check_request(head: Head, max_headers: int = MAX_HEADERS, host_required: bool = True) -> None:
    """What RFC 9112 asks of a request head beyond its syntax, checked by every server here:
    at most ``max_headers`` header lines (431), one valid Host (a missing one only in
    HTTP/1.1 and when ``host_required``), no Transfer-Encoding in HTTP/1.0 (an HTTP/1.0
    receiver does not know chunked: a front end and a back end would frame it two ways, as
    nginx refuses it). Raises ProtocolError."""
    index = head.index
    hosts = index.get(b"host")
    # the usual head: one Host seen valid before, few lines, HTTP/1.1 (a dict lookup, not a regex)
    if hosts is not None and len(hosts) == 1 and hosts[0] in _GOOD_HOSTS and len(head.headers) <= max_headers \
            and head.version == "1.1":
        return
    if len(head.headers) > max_headers:
        raise ProtocolError(f"more than {max_headers} header lines", 431)
    if hosts is None:
        if host_required and head.version == "1.1":
            raise ProtocolError("an HTTP/1.1 request needs a Host header")
    elif len(hosts) != 1:
        raise ProtocolError("more than one Host header")
    elif hosts[0] not in _GOOD_HOSTS:
        if _HOST_VALUE.fullmatch(hosts[0].rstrip(b" \t")) is None:
            raise ProtocolError(f"invalid Host header {hosts[0][:60]!r}")
        if len(_GOOD_HOSTS) >= 4096:  # clients name a few hosts; bounded all the same
            _GOOD_HOSTS.clear()
        _GOOD_HOSTS.add(hosts[0])
    if head.version == "1.0" and b"transfer-encoding" in index:
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")


def encode_lines(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Header lines as a Response keeps them: each b"\r\nName: value"."""
    return b"".join([b"\r\n%s: %s" % kv for kv in headers])


def encode_head(start_line: str, headers: Headers) -> bytes:
    """A head ready to send: start line, headers, blank line."""
    parts = [start_line.encode("latin-1"), b"\r\n"]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


_date_until = 0.0  # the end of the second _date_value says
_date_value = b""


def http_date() -> bytes:
    """Now as a Date value (RFC 9110 5.6.7, IMF-fixdate), made once a second."""
    global _date_until, _date_value
    now = time.time()
    if now >= _date_until or now < _date_until - 1.0:  # (a new second, or the clock was set back)
        second = int(now)
        _date_until, _date_value = second + 1.0, formatdate(second, usegmt=True).encode("ascii")
    return _date_value


def simple_response(status: int, text: str, extra: Sequence[tuple[bytes, bytes]] = (), close: bool = True,
                    body: bool = True, exact: bool = False, keep_alive: bool = False) -> bytes:
    """A complete short text/plain response for the proxy's own answers (errors, static
    answers, redirects), ending in one newline (``exact``: ``text`` as it is, a
    static_response's); without its body, Content-Length kept, when ``body`` is False: the
    answer to HEAD. With a Date, as an origin's answers must have (RFC 9110 6.6.1).
    ``keep_alive``: say Connection: keep-alive (to an HTTP/1.0 client that asked to keep its
    connection: it keeps it only when told, as ab -k does)."""
    data = (text if exact else text.rstrip("\n") + "\n").encode("utf-8")
    headers = [
        (b"Date", http_date()),
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(data)).encode()),
        *extra,
    ]
    if close:
        headers.append((b"Connection", b"close"))
    elif keep_alive:
        headers.append((b"Connection", b"keep-alive"))
    return encode_head(f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", headers) + (data if body else b"")
