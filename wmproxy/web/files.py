"""Static files of a ``file_server`` location.

GET and HEAD; the path is the request's (decoded, normalized) path under ``root``, as nginx's
``root``. A directory gets its first ``index`` file, a listing with ``browse = true``, else
403; a directory path without its final slash is redirected (301) to the one with it. MIME
types from the extension; ``ETag``/``Last-Modified`` with ``If-None-Match``/
``If-Modified-Since`` (304); ``Range`` with one or several ranges (206, multipart/byteranges),
``If-Range``, 416 when none is satisfiable; ``Cache-Control: max-age`` from ``cache_time``; a
``.br`` or ``.gz`` sibling for a client that accepts it (``Vary: Accept-Encoding``), else a
text-like file gzipped on the fly (``gzip``: small ones once per LOOKUP_TTL, larger ones as they
are sent, chunked; never with ranges). Bodies
go out with ``sendfile(2)`` on plain sockets, never read whole into memory, except files up
to SMALL_FILE, whose bytes are kept for LOOKUP_TTL as their lookup is (head and body then go
in one send). A path that leaves ``root`` through a symlink is 403 unless ``follow_symlinks``;
``..`` never gets past the root (the path is normalized first). Missing paths try
``try_paths``, then ``path404``.
"""

from __future__ import annotations

import functools
import gzip
import html
import mimetypes
import os
import re
import socket
import stat
import time
import zlib
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, BinaryIO, Callable, Iterator, Optional, Sequence
from urllib.parse import quote

from gevent import Timeout, get_hub
from gevent import ssl as gssl

from ..config import FileServerConfig
from ..net.writer import send_all
from ..prot.http1 import REASONS, Head, Headers, encode_head, encode_lines, http_date, simple_response

Finish = Callable[[Headers], Headers]  # header rules applied to an answer's headers
Found = Any  # what a lookup found: a _lookup tuple, a Reply or a _Meta
from .route import normalize_path

CHUNK = 1 << 16
LOOKUP_TTL = 1.0  # seconds a path's lookup is reused: a changed file shows within a second
LOOKUP_ENTRIES = 4096
_LOOKUPS: dict = {}
SMALL_FILE = 32 * 1024  # files up to this size are answered from memory (read once per LOOKUP_TTL)
CACHE_BYTES = 16 << 20  # at most this much of them
_cache_bytes = 0
MAX_RANGES = 32
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))
GZIP_MIN = 256  # smaller files go as they are (the gzip wrapper alone is 18 bytes)
GZIP_LEVEL = 6  # small files: compressed once per LOOKUP_TTL
GZIP_STREAM_LEVEL = 1  # larger ones, as they are sent (nginx's gzip_comp_level)
COMPRESSIBLE = frozenset((b"application/json", b"application/javascript", b"application/xml", b"image/svg+xml",
                          b"application/xhtml+xml", b"application/rss+xml", b"application/atom+xml",
                          b"application/wasm", b"application/x-javascript", b"application/manifest+json"))


_OK_DATE = b"HTTP/1.1 200 OK\r\nDate: "


class Reply:
    """What the file server answered: status and body bytes, for the access log. ``sent``
    False: nothing went out, the caller answers ``status`` (an error it has a page for, or
    ``then``: try_paths' last entry, a named location '@name' or a status '=404')."""

    __slots__ = ("status", "size", "sent", "then")

    def __init__(self, status: int, size: int = 0, sent: bool = True, then: str = "") -> None:
        self.status = status
        self.size = size
        self.sent = sent
        self.then = then


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _checked(fs: FileServerConfig, root: str, path: str) -> Optional[str]:
    """The one root check of every path the file server opens (the requested file, index
    files, try_paths and path404 fallbacks, .br/.gz siblings): its real path when it stays
    inside ``root`` (the real path of fs.root) or ``follow_symlinks`` is set, else None."""
    real = os.path.realpath(path)
    return real if fs.follow_symlinks or _inside(root, real) else None


def _open(fs: FileServerConfig, real: str) -> BinaryIO:
    """Open a path :func:`_checked` gave: without following a symlink put there since (unless
    follow_symlinks). Raises OSError."""
    flags = os.O_RDONLY | (0 if fs.follow_symlinks else os.O_NOFOLLOW)
    return os.fdopen(os.open(real, flags), "rb")


class Out:
    """Where the answer goes: the client, the response header rules, keep-alive."""

    __slots__ = ("client", "finish", "keep", "timeout", "echo", "quick")

    def __init__(self, client: socket.socket, finish: Optional[Finish], keep: bool, timeout: float | None,
                 version: str = "1.1") -> None:
        self.client = client
        self.finish = finish  # headers -> headers (the location's response rules; None: it has none)
        self.keep = keep
        self.timeout = timeout  # for each wait while sending a body
        self.echo = keep and version == "1.0"  # an HTTP/1.0 client kept: told Connection: keep-alive
        self.quick = finish is None and keep and not self.echo  # a cached small file's one-piece 200 may go

    def head(self, status: int, headers: list) -> bytes:
        headers = [(b"Date", http_date()), *headers]  # (an origin's answers have one, RFC 9110 6.6.1)
        if self.finish is not None:
            headers = self.finish(headers)
        if not self.keep:
            headers.append((b"Connection", b"close"))
        elif self.echo:
            headers.append((b"Connection", b"keep-alive"))
        return encode_head(f"HTTP/1.1 {status} {REASONS.get(status, '')}", headers)


def _small(out: Out, status: int, text: str, head_only: bool, extra: Sequence[tuple[bytes, bytes]] = (),
           exact: bool = False) -> Reply:
    data = simple_response(status, text, out.finish(list(extra)) if out.finish is not None else extra,
                           close=not out.keep, body=not head_only, exact=exact, keep_alive=out.echo)
    send_all(out.client, data, out.timeout)
    size = len(text.encode()) if exact else len(text.rstrip("\n")) + 1
    return Reply(status, 0 if head_only else size)


def serve(fs: FileServerConfig, client: socket.socket, head: Head, path: str, keep: bool,
          finish: Optional[Finish] = None, timeout: float | None = None, pages: frozenset = frozenset(),
          status: int = 0) -> Reply:
    """Answer ``head`` (its normalized ``path``) from ``fs``; the connection stays open when
    ``keep``; ``finish`` applies the response header rules (None: there are none); a client
    that takes no bytes for ``timeout`` is given up. An error whose status is in ``pages``
    (the caller's error pages) is not sent: the Reply says so. ``status``: answer a file with
    it (an error page's).
    Raises OSError when the client goes away (socket.timeout)."""
    out = Out(client, finish, keep, timeout, head.version)
    head_only = head.method == "HEAD"
    if head.method not in ("GET", "HEAD"):
        return _small(out, 405, "only GET and HEAD here", False, [(b"Allow", b"GET, HEAD")])
    if fs.robots and path == "/robots.txt":
        return _small(out, 200, fs.robots, head_only, _cors(fs), exact=True)
    lookup = path
    if fs.prefix:  # (the Rust wmproxy's prefix, nginx's alias: taken off the path before it is looked up)
        base = fs.prefix.rstrip("/")
        if path != base and not path.startswith(base + "/"):
            return _small(out, 404, REASONS[404], head_only)
        lookup = path[len(base):] or "/"
    found = _cached_lookup(fs, lookup)
    if isinstance(found, Reply):
        last = fs.try_paths[-1] if fs.try_paths else ""
        if found.status == 404 and last.startswith(("@", "=")):
            return Reply(int(last[1:]) if last[0] == "=" else 404, sent=False, then=last)
        if found.status in pages:
            return Reply(found.status, sent=False)
        return _small(out, found.status, REASONS.get(found.status, ""), head_only)
    kind, fs_path, found_status = found
    status = status or found_status
    if kind == "redirect":
        query = head.target[len(head.target.split("?", 1)[0]):]
        location = quote(path + "/") + query
        return _small(out, 301, f"moved to {location}", head_only, [(b"Location", location.encode())])
    if kind == "listing":
        return _listing(fs, out, fs_path, path, head_only)
    return _file(fs, out, head, fs_path, status, head_only)


def _cached_lookup(fs: FileServerConfig, path: str) -> Found:
    """:func:`_lookup`, remembered for LOOKUP_TTL (as nginx's open_file_cache): the path
    checks (realpath, stats) cost more than sending a small file."""
    return _cached((id(fs), path), fs, _lookup_now, fs, path)


def _lookup_now(fs: FileServerConfig, path: str) -> Found:
    return _lookup(fs, os.path.realpath(fs.root), path)


def _cached(key: tuple[object, ...], fs: FileServerConfig, compute: Callable[..., Any], *args: Any) -> Any:
    """``compute(*args)``, remembered under ``key`` for LOOKUP_TTL (at most LOOKUP_ENTRIES keys
    and CACHE_BYTES of small files' bytes). ``key`` names ``fs`` by its id, which the entry
    checks is still that object's (hashing the config's every field, twice a request, cost more
    than the rest of the look-up). The function and its arguments, not a closure: nothing is
    made for a hit."""
    global _cache_bytes
    now = time.monotonic()
    hit = _LOOKUPS.get(key)
    if hit is not None and hit[0] > now and hit[2] is fs:
        return hit[1]
    if hit is not None and isinstance(hit[1], _Meta):
        _cache_bytes -= len(hit[1].data or b"")
    found = compute(*args)
    size = len(found.data or b"") if isinstance(found, _Meta) else 0
    if len(_LOOKUPS) >= LOOKUP_ENTRIES or _cache_bytes + size > CACHE_BYTES:
        _LOOKUPS.clear()
        _cache_bytes = 0
    _LOOKUPS[key] = (now + LOOKUP_TTL, found, fs)
    _cache_bytes += size
    return found


def _lookup(fs: FileServerConfig, root: str, path: str) -> Found:
    """-> ("file", fs path, status) | ("listing", dir, 200) | ("redirect", None, 301) | Reply(403/404)."""
    for candidate, status in _candidates(fs, path):
        if fs.hide and _hidden(fs, candidate):
            continue  # (as if it were not there)
        full = os.path.join(root, candidate.lstrip("/"))
        if not os.path.exists(full):
            continue
        real = _checked(fs, root, full)
        if real is None:
            return Reply(403)
        if os.path.isdir(real):
            if not candidate.endswith("/"):
                return ("redirect", None, 301) if candidate == path else Reply(403)
            for index in fs.index:
                page = os.path.join(real, index)
                if os.path.isfile(page):
                    checked = _checked(fs, root, page)
                    if checked is None:
                        return Reply(403)
                    return ("file", checked, status)
            return ("listing", real, status) if fs.browse else Reply(403)
        if os.path.isfile(real):
            return ("file", real, status)
        return Reply(403)
    return Reply(404)


def _candidates(fs: FileServerConfig, path: str) -> Iterator[tuple[str, int]]:
    yield path, 200
    for pattern in fs.try_paths:
        if pattern.startswith(("@", "=")):
            break  # (the last entry, for the caller: serve)
        if " " in pattern:  # 'REGEX SOURCE REPLACEMENT' (the Rust wmproxy's): SOURCE rewritten by REGEX
            tried = _normalized(_rewrite(pattern, path))
            if tried is not None:
                yield tried, 200
            continue
        tried = _normalized(pattern.replace("{path}", path))
        if tried is not None:
            yield tried, 200
    if fs.path404:
        page = _normalized("/" + fs.path404.lstrip("/"))
        if page is not None:
            yield page, 404


def _rewrite(entry: str, path: str) -> str:
    """'/ro(\\w+)/(.*) {path} /ro$1/Cargo.toml' on /root/x -> /root/Cargo.toml: each match of
    REGEX in SOURCE (with {path}) replaced by REPLACEMENT ($1, ${name}), as the Rust wmproxy's
    replace_all (no match: SOURCE as it is)."""
    regex, source, replacement = entry.split(" ", 2)
    template = re.sub(r"\$(\d+|\{(\w+)\})", lambda m: f"\\g<{m.group(2) or m.group(1)}>", replacement)
    return _rewrite_regex(regex).sub(template, source.replace("{path}", path))


@functools.lru_cache(maxsize=256)
def _rewrite_regex(regex: str) -> "re.Pattern[str]":
    return re.compile(regex)


def _normalized(path: str) -> Optional[str]:
    try:
        return normalize_path(path)
    except ValueError:
        return None


def _hidden(fs: FileServerConfig, path: str) -> bool:
    """A component of ``path`` is one of ``hide`` (or starts with a ``'prefix*'`` of it)."""
    return any(_hides(fs.hide, part) for part in path.split("/") if part)


def _hides(hide: tuple, name: str) -> bool:
    return any(name == h or (h.endswith("*") and name.startswith(h[:-1])) for h in hide)


def _cors(fs: FileServerConfig) -> list[tuple[bytes, bytes]]:
    return [(b"Access-Control-Allow-Origin", b"*"),
            (b"Access-Control-Allow-Headers", b"Origin, X-Requested-With, Content-Type, Accept, Range")] \
        if fs.cors else []


def _listing(fs: FileServerConfig, out: Out, directory: str, path: str, head_only: bool) -> Reply:
    rows = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if fs.hide and _hides(fs.hide, entry.name):
            continue
        name = entry.name + ("/" if entry.is_dir() else "")
        rows.append(f'<li><a href="{quote(name)}">{html.escape(name)}</a></li>')
    title = html.escape(path)
    body = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>"
            f"<body><h1>Index of {title}</h1><ul><li><a href=\"../\">../</a></li>{''.join(rows)}</ul></body></html>\n"
            ).encode()
    headers = [(b"Content-Type", b"text/html; charset=utf-8"), (b"Content-Length", str(len(body)).encode()),
               *_cors(fs)]
    send_all(out.client, out.head(200, headers) + (b"" if head_only else body), out.timeout)
    return Reply(200, 0 if head_only else len(body))


@functools.lru_cache(maxsize=1024)  # (mimetypes' guess, a few microseconds, once per file: paths of found files only)
def _content_type(path: str, ext_mimetype: tuple = ()) -> bytes:
    kind = None
    if ext_mimetype:
        ext = os.path.splitext(path)[1].lower().lstrip(".")
        kind = next((k for e, k in ext_mimetype if e == ext), None)
        if kind is not None and "charset" in kind:
            return kind.encode()
    if kind is None:
        kind, _ = mimetypes.guess_type(path)
    kind = kind or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json", "image/svg+xml"):
        kind += "; charset=utf-8"
    return kind.encode()


def _encoded(fs: FileServerConfig, values: list[bytes], fs_path: str) -> tuple[str, Optional[str]]:
    """The precompressed sibling the client accepts (``values``: its Accept-Encoding headers),
    if any: (path to send, encoding)."""
    if not fs.precompressed:
        return fs_path, None
    siblings = _cached(("siblings", id(fs), fs_path), fs, _siblings, fs, fs_path)
    if not siblings:
        return fs_path, None
    accepted = {part.split(";", 1)[0].strip().lower() for part in b",".join(values).decode("latin-1").split(",")}
    for encoding, real in siblings:
        if encoding in accepted:
            return real, encoding
    return fs_path, None


def _siblings(fs: FileServerConfig, fs_path: str) -> tuple:
    """((encoding, real path), ...) of the precompressed siblings of ``fs_path`` that are
    files and pass the root check (a sibling symlinked out of root is not one)."""
    root = os.path.realpath(fs.root)
    found = []
    for encoding, suffix in ENCODINGS:
        if os.path.isfile(fs_path + suffix):
            real = _checked(fs, root, fs_path + suffix)
            if real is not None:
                found.append((encoding, real))
    return tuple(found)


class _Meta:
    """What one file's answers share: size, mtime, ETag and the headers every answer carries;
    with the bytes themselves for a small file (read once per LOOKUP_TTL, as a lookup)."""

    __slots__ = ("size", "mtime", "etag", "headers", "data", "ok")

    def __init__(self, fs: FileServerConfig, fs_path: str, encoding: Optional[str], st: os.stat_result,
                 data: Optional[bytes]) -> None:
        self.size = st.st_size
        self.mtime = int(st.st_mtime)
        self.data = data
        self.ok: Optional[bytes] = None  # (ok_lines())
        self.etag = f'"{st.st_mtime_ns:x}-{self.size:x}{"-" + encoding if encoding else ""}"'.encode()
        headers = [(b"Content-Type", _content_type(fs_path, fs.ext_mimetype)), (b"ETag", self.etag),
                   (b"Last-Modified", formatdate(st.st_mtime, usegmt=True).encode()), (b"Accept-Ranges", b"bytes")]
        if encoding:
            headers += [(b"Content-Encoding", encoding.encode()), (b"Vary", b"Accept-Encoding")]
        elif fs.precompressed or fs.gzip:
            headers.append((b"Vary", b"Accept-Encoding"))
        if fs.cache_time:
            headers.append((b"Cache-Control", f"max-age={int(fs.cache_time)}".encode()))
        self.headers = tuple(headers + _cors(fs))

    def ok_lines(self) -> bytes:
        """Its header lines and Content-Length, as a plain 200 sends them after the Date (made
        at the first such answer: the gzip cache sets its size and headers after __init__)."""
        ok = self.ok
        if ok is None:
            ok = self.ok = encode_lines(self.headers) + b"\r\nContent-Length: %d\r\n\r\n" % self.size
        return ok


def _small_meta(fs: FileServerConfig, fs_path: str, send_path: str, encoding: Optional[str]) -> Optional[_Meta]:
    """The cached _Meta (bytes included) of a small regular file; None for any other (sent
    from a fresh open)."""
    return _cached(("small", id(fs), send_path, encoding), fs, _read_small, fs, fs_path, send_path, encoding)


def _read_small(fs: FileServerConfig, fs_path: str, send_path: str, encoding: Optional[str]) -> Optional[_Meta]:
    try:
        with _open(fs, send_path) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > SMALL_FILE:
                return None
            data = f.read(SMALL_FILE + 1)
    except OSError:
        return None
    return _Meta(fs, fs_path, encoding, st, data) if len(data) == st.st_size else None


def _gzip_wanted(fs: FileServerConfig, head: Head, values: list[bytes], fs_path: str) -> bool:
    """Compress this answer on the fly: the client takes gzip (``values``: its Accept-Encoding
    headers; a q=0 refuses it), asks no range (ranges are of the file as it is), and the type is
    text-like."""
    if head.get(b"range") is not None or not _compressible(fs, fs_path):
        return False
    for part in b",".join(values).decode("latin-1").split(","):
        name, _, params = part.partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def _compressible(fs: FileServerConfig, fs_path: str) -> bool:
    kind = _content_type(fs_path, fs.ext_mimetype).split(b";", 1)[0].strip().lower()
    return kind.startswith(b"text/") or kind in COMPRESSIBLE


def _gzipped(fs: FileServerConfig, out: Out, head: Head, fs_path: str, status: int, head_only: bool) -> Reply:
    """A text-like file compressed for this answer (no .gz sibling): a small one from the
    cache (compressed once per LOOKUP_TTL, with its length), a larger one compressed as it is
    sent (chunked; to an HTTP/1.0 client it goes as it is). No ranges of either."""
    opened = _open_regular(fs, fs_path)
    if opened is None:
        return _small(out, 403, "Forbidden", head_only)
    f, st = opened
    with f:
        if st.st_size < GZIP_MIN:  # (not worth it: the file as it is)
            return _answer(out, head, _Meta(fs, fs_path, None, st, None), f, status, head_only)
        if st.st_size <= SMALL_FILE:
            def compress() -> Optional[_Meta]:
                data = f.read(SMALL_FILE + 1)
                if len(data) != st.st_size:
                    return None
                meta = _Meta(fs, fs_path, "gzip", st, gzip.compress(data, GZIP_LEVEL, mtime=0))
                meta.size = len(meta.data or b"")
                meta.headers = tuple(h for h in meta.headers if h[0] != b"Accept-Ranges")
                return meta
            meta = _cached(("gzip", id(fs), fs_path, st.st_mtime_ns, st.st_size), fs, compress)
            if meta is not None:
                return _answer(out, head, meta, None, status, head_only)
            f.seek(0)
        if head.version != "1.1":  # (no chunked: a body of unknown length would end the connection)
            return _answer(out, head, _Meta(fs, fs_path, None, st, None), f, status, head_only)
        meta = _Meta(fs, fs_path, "gzip", st, None)
        headers = [(k, v) for k, v in meta.headers if k != b"Accept-Ranges"]
        if status == 200 and _not_modified(head, meta.etag, meta.mtime):
            send_all(out.client, out.head(304, headers), out.timeout)
            return Reply(304)
        send_all(out.client, out.head(status, [*headers, (b"Transfer-Encoding", b"chunked")]), out.timeout)
        if head_only:
            return Reply(status)
        return Reply(status, _send_gzip(out, f))


def _send_gzip(out: Out, f: BinaryIO) -> int:
    """The file compressed as it is read, in chunks (chunked encoding); the compressed bytes sent."""
    z = zlib.compressobj(GZIP_STREAM_LEVEL, zlib.DEFLATED, 31)  # (31: the gzip wrapper)
    sent = 0

    def put(data: bytes, last: bytes = b"") -> None:
        nonlocal sent
        send_all(out.client, (b"%x\r\n%s\r\n" % (len(data), data) if data else b"") + last, out.timeout)
        sent += len(data)

    while block := f.read(CHUNK):
        data = z.compress(block)
        if data:
            put(data)
    put(z.flush(), b"0\r\n\r\n")
    return sent


def _not_modified(head: Head, etag: bytes, mtime: int) -> bool:
    inm = head.get(b"if-none-match")
    if inm is not None:
        tags = {t.strip().removeprefix(b"W/") for t in inm.split(b",")}
        return b"*" in tags or etag in tags
    ims = head.get(b"if-modified-since")
    if ims is not None:
        when = _http_time(ims)
        return when is not None and mtime <= when
    return False


def _http_time(value: bytes) -> Optional[float]:
    """An HTTP date (If-Modified-Since, If-Range) as a POSIX time; None when it is not one
    (the year 10**20 overflows rather than failing: no date either)."""
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None


def parse_ranges(value: str, size: int) -> Optional[list[tuple[int, int]]]:
    """'bytes=0-99,200-,-50' -> [(start, end inclusive)] within ``size``; [] when none is
    satisfiable; None when the header is to be ignored (the whole file goes out, 200): not a
    valid byte range set (positions are ASCII digits only: no sign, space or underscore), more
    than MAX_RANGES ranges, or ranges that add up to more than the file (overlapping ones:
    nginx declines those too, so a few bytes of header cannot make an answer many times the
    file's size; CVE-2011-3192)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    out = []
    total = 0
    for part in spec.split(","):
        part = part.strip(" \t")
        if not part:  # (an empty list element: ignored, RFC 9110 5.6.1.2)
            continue
        first, dash, last = part.partition("-")
        if not dash or not (first or last) or not _digits(first) or not _digits(last):
            return None
        try:  # (more digits than int() takes, 4300: ignored as any invalid header)
            if first == "":
                n = int(last)
                if n <= 0:
                    continue
                start, end = max(0, size - n), size - 1
            else:
                start = int(first)
                end = int(last) if last else size - 1
                if last and end < start:
                    return None
                end = min(end, size - 1)
        except ValueError:
            return None
        if start < size and start <= end:
            out.append((start, end))
            total += end - start + 1
    if len(out) > MAX_RANGES or total > size:
        return None
    return out


def _digits(text: str) -> bool:
    """'' or ASCII digits alone (int() would also take '+1', ' 1', '1_0' and other scripts' digits)."""
    return not text or (text.isascii() and text.isdigit())


def _file(fs: FileServerConfig, out: Out, head: Head, fs_path: str, status: int, head_only: bool) -> Reply:
    accepted = head.get_all(b"accept-encoding")  # (looked up once; none: no sibling, no gzip to weigh)
    send_path, encoding = _encoded(fs, accepted, fs_path) if accepted else (fs_path, None)
    if encoding is None and accepted and fs.gzip and _gzip_wanted(fs, head, accepted, fs_path):
        return _gzipped(fs, out, head, fs_path, status, head_only)
    meta = _small_meta(fs, fs_path, send_path, encoding)
    if meta is not None:
        return _answer(out, head, meta, None, status, head_only)
    opened = _open_regular(fs, send_path)
    if opened is None:
        return _small(out, 403, "Forbidden", head_only)
    f, st = opened
    with f:
        return _answer(out, head, _Meta(fs, fs_path, encoding, st, None), f, status, head_only)


def _open_regular(fs: FileServerConfig, path: str) -> Optional[tuple[BinaryIO, os.stat_result]]:
    """``path`` opened (as _open does) and its stat, or None when it cannot be opened or is no
    regular file (the caller answers 403)."""
    try:
        f = _open(fs, path)
    except OSError:
        return None
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        f.close()
        return None
    return f, st


def _answer(out: Out, head: Head, meta: _Meta, f: Optional[BinaryIO], status: int, head_only: bool) -> Reply:
    """The answer to a file: from ``meta.data`` (a small file) or the open file ``f``."""
    client, size = out.client, meta.size
    if status == 200 and _not_modified(head, meta.etag, meta.mtime):
        send_all(client, out.head(304, list(meta.headers)), out.timeout)
        return Reply(304)
    ranges = None
    range_header = head.get(b"range")
    data = meta.data
    if range_header is None and data is not None and status == 200 and out.quick and not head_only:
        # the usual answer, a small file whole: its head made once, but for the Date
        send_all(client, b"".join((_OK_DATE, http_date(), meta.ok_lines(), data)), out.timeout)
        return Reply(200, size)
    headers = list(meta.headers)
    if status == 200 and range_header is not None and _if_range_ok(head, meta.etag, meta.mtime):
        ranges = parse_ranges(range_header.decode("latin-1"), size)
    if ranges == []:
        headers = [(b"Content-Range", f"bytes */{size}".encode()), (b"Content-Length", b"0")]
        send_all(client, out.head(416, headers), out.timeout)
        return Reply(416)
    if ranges and len(ranges) == 1:
        start, end = ranges[0]
        headers += [(b"Content-Range", f"bytes {start}-{end}/{size}".encode()),
                    (b"Content-Length", str(end - start + 1).encode())]
        status, start_at, count = 206, start, end - start + 1
    elif ranges:
        return _multipart(out, meta, f, headers, ranges, head_only)
    else:
        headers.append((b"Content-Length", str(size).encode()))
        start_at, count = 0, size
    if head_only:
        send_all(client, out.head(status, headers), out.timeout)
        return Reply(status)
    _send(out, meta, f, out.head(status, headers), start_at, count)
    return Reply(status, count)


def _send(out: Out, meta: _Meta, f: Optional[BinaryIO], prefix: bytes, start: int, count: int) -> None:
    """``prefix``, then ``count`` bytes of the file from ``start``: in one send from memory for
    a small file, else with sendfile."""
    if meta.data is not None:
        send_all(out.client, prefix + meta.data[start:start + count], out.timeout)
    else:
        assert f is not None  # (a file not kept in memory is open)
        send_all(out.client, prefix, out.timeout)
        send_file(out.client, f, start, count, out.timeout)


def _if_range_ok(head: Head, etag: bytes, mtime: int) -> bool:
    value = head.get(b"if-range")
    if value is None:
        return True
    if value.startswith(b'"') or value.startswith(b"W/"):
        return value == etag
    when = _http_time(value)
    return when is not None and int(when) == mtime


def _multipart(out: Out, meta: _Meta, f: Optional[BinaryIO], headers: Headers, ranges: list[tuple[int, int]],
               head_only: bool) -> Reply:
    client, size = out.client, meta.size
    boundary = f"wmproxy-{time.monotonic_ns():x}"
    content_type = dict(headers)[b"Content-Type"]
    parts = [(f"\r\n--{boundary}\r\nContent-Type: ".encode() + content_type +
              f"\r\nContent-Range: bytes {s}-{e}/{size}\r\n\r\n".encode(), s, e) for s, e in ranges]
    closing = f"\r\n--{boundary}--\r\n".encode()
    length = sum(len(p) + e - s + 1 for p, s, e in parts) + len(closing)
    headers = [(k, v) for k, v in headers if k != b"Content-Type"]
    headers += [(b"Content-Type", f"multipart/byteranges; boundary={boundary}".encode()),
                (b"Content-Length", str(length).encode())]
    send_all(client, out.head(206, headers), out.timeout)
    if not head_only:
        for preamble, start, end in parts:
            _send(out, meta, f, preamble, start, end - start + 1)
        send_all(client, closing, out.timeout)
    return Reply(206, 0 if head_only else length)


def send_file(client: socket.socket, f: BinaryIO, offset: int, count: int, timeout: float | None = None) -> None:
    """``count`` bytes of ``f`` from ``offset``: sendfile(2) on a plain socket (waiting for
    room cooperatively), read-and-send on TLS. socket.timeout when a wait for room lasts
    ``timeout``."""
    if isinstance(client, gssl.SSLSocket) or not isinstance(client, socket.socket) or not hasattr(os, "sendfile"):
        f.seek(offset)
        while count > 0:
            data = f.read(min(CHUNK, count))
            if not data:
                raise OSError("file shrank while being sent")
            send_all(client, data, timeout)
            count -= len(data)
        return
    out = client.fileno()
    writable = None
    try:
        while count > 0:
            try:
                sent = os.sendfile(out, f.fileno(), offset, min(count, 1 << 30))
            except BlockingIOError:
                if writable is None:
                    writable = get_hub().loop.io(out, 2)
                with Timeout(timeout, socket.timeout("timed out sending a file")):
                    get_hub().wait(writable)
                continue
            if sent == 0:
                raise OSError("file shrank while being sent")
            offset += sent
            count -= sent
    finally:
        if writable is not None:
            writable.close()

