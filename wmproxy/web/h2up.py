"""HTTP/2 to upstream servers (``protocol = "h2"`` on an upstream, or a proxy_url of h2c://,
grpc://, grpcs://): a location's requests multiplexed over few connections per server, as
nginx's ``grpc_pass``.

Each server keeps its connections (:class:`H2Upstream`): one reader greenlet each hands the
server's frames to the streams; a request is one stream (:class:`UpStream`), its headers the
request's (hop-by-hop ones out, ``te: trailers`` kept, as gRPC needs), its body sent as it is
read from the client (within the server's windows, while the answer may already be coming:
gRPC's bidirectional streams), and the answer written to the client as HTTP/1.1 as it comes:
chunked, each DATA frame a chunk sent at once (no buffering of streamed messages), the trailers
(``grpc-status``) as the chunked body's trailers, which an HTTP/2 client gets as trailers again
(web/h2.py). A stream's window is granted again as its data reaches the client, so a slow
client holds at most a window of the server's answer here.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections import deque
from typing import Any, Callable, Optional

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ..errors import ProtocolError, UpstreamError
from ..metrics import Histogram
from ..net import httpio
from ..net.conn import Conn, Data
from ..net.reader import PeerClosed, Reader
from ..net.throttle import Throttled
from ..prot import http1
from ..prot.framing import NO_BODY
from .h2 import Cut, FrameScan, H2Stream, send_room

log = logging.getLogger("wmproxy.http")

MAX_HEADER_LIST = 1 << 16  # a server's decoded header list (and its header block's bytes)
WINDOW = 1 << 18  # each stream's receive window (what a server may send ahead of the client's reading)
CONNECTION_WINDOW = 16 << 20
RECV_SIZE = 65536
# what HTTP/1.1 can carry of a server's header field (RFC 9110 5.1, 5.5): the h2 library refuses
# upper case, ':' and controls in names, CR, LF and NUL in values, but not '=', '"', '(' or '@' in
# a name, nor the other controls in a value, which an HTTP/1.1 client refuses or misreads
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _carriable(name: bytes, value: bytes) -> bool:
    """Whether a server's header field can go on in an HTTP/1.1 head (pseudo-headers aside)."""
    return _TOKEN.match(name) is not None and _CONTROL.search(value) is None


def _check_fields(headers: list) -> None:
    """Raises ConnectionResetError for an answer's field HTTP/1.1 cannot carry, or a
    content-length that is not one number (h2 checks it, but not in answers to HEAD)."""
    length = None
    for name, value in headers:
        if name[:1] == b":":
            continue
        if not _carriable(name, value):
            raise ConnectionResetError(f"the server answered with a header field HTTP/1.1 cannot carry: {name[:40]!r}")
        if name == b"content-length":
            if not value.isdigit() or length not in (None, value):
                raise ConnectionResetError(f"the server answered with content-length {value[:40]!r}")
            length = value


HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host",
                  b"http2-settings"))


class H2Upstream:
    """One HTTP/2 connection to a server (the client side)."""

    def __init__(self, sock: socket.socket, label: str) -> None:
        self.sock = sock
        self.label = label
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=True, validate_outbound_headers=False))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        })
        # what a server sends is bounded from its first byte, not once it acknowledges our SETTINGS
        # (a center client's local service is such a server, to the center server: not trusted)
        self.conn.decoder.max_header_list_size = MAX_HEADER_LIST  # (the HPACK bomb)
        self.conn.decoder.max_allowed_table_size = h2.settings.Settings(client=False).header_table_size
        self.frames = FrameScan(MAX_HEADER_LIST, server=True)  # (the CONTINUATION flood)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.streams: dict[int, UpStream] = {}
        self.write_lock = Semaphore()
        self.closed = False
        self.going = False  # the server said GOAWAY: no new streams on it
        self.why = ""
        self.flush()
        self.reader = gevent.spawn(self._read)

    @property
    def usable(self) -> bool:
        return not (self.closed or self.going) and len(self.streams) < self.conn.remote_settings.max_concurrent_streams

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if not data:
            return
        try:
            with self.write_lock:
                if self.closed:
                    raise ConnectionResetError(f"the HTTP/2 connection to {self.label} is closed")
                self.sock.sendall(data)
        except OSError as e:
            self.close(f"write failed: {e}")
            raise

    def _read(self) -> None:
        try:
            while not self.closed:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    self.close("closed by the server")
                    return
                self.frames.feed(data)
                for event in self.conn.receive_data(data):
                    self._event(event)
                self.flush()
        except Cut as e:
            log.warning("upstream %s: HTTP/2 connection cut: %s", self.label, e)
            try:
                self.conn.close_connection(error_code=e.code)
                self.flush()
            except (h2.exceptions.H2Error, OSError):
                pass
            self.close(f"cut: {e}")
        except h2.exceptions.ProtocolError as e:
            if "ConnectionState.CLOSED" in str(e):  # a frame after the server's GOAWAY (gRPC's graceful
                self.close("the server went away")  # shutdown sends a PING): h2 takes none after it
                return
            log.warning("upstream %s: HTTP/2 protocol error: %s", self.label, e)
            try:
                self.flush()
            except OSError:
                pass
            self.close(f"protocol error: {e}")
        except OSError as e:
            self.close(f"read failed: {e}")

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.put(("data", event.data, event.flow_controlled_length))
            elif event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, (h2.events.ResponseReceived, h2.events.InformationalResponseReceived)):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.put(("head", event.headers, 0))
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.put(("trailers", event.headers, 0))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.put(("end", None, 0))
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.put(("reset", f"reset by the server ({event.error_code!s})", 0))
        elif isinstance(event, h2.events.WindowUpdated):
            targets = self.streams.values() if not event.stream_id else [self.streams.get(event.stream_id)]
            for stream in targets:
                if stream is not None:
                    stream.window.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for stream in self.streams.values():
                stream.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for sid, stream in list(self.streams.items()):
                if sid > last:  # never taken by the server: safe to send again elsewhere
                    stream.put(("reset", "refused: the server is going away", 0))
                    stream.unprocessed = True
            if not self.streams:
                self.close("the server went away")

    def open(self, headers: list, end: bool) -> "UpStream":
        """A new stream with the request's ``headers`` (END_STREAM when ``end``). Raises
        ConnectionResetError when the connection is closed."""
        if self.closed:
            raise ConnectionResetError(f"the HTTP/2 connection to {self.label} is closed")
        sid = self.conn.get_next_available_stream_id()
        stream = self.streams[sid] = UpStream(self, sid)
        try:
            self.conn.send_headers(sid, headers, end_stream=end)
        except h2.exceptions.H2Error as e:
            self.streams.pop(sid, None)
            raise ConnectionResetError(f"HTTP/2 to {self.label}: {e}") from None
        self.flush()
        return stream

    def forget(self, stream: "UpStream") -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
        unacked = stream.unacked()
        if not self.closed:
            try:
                if unacked:
                    self.conn.acknowledge_received_data(unacked, stream.sid)
                if not stream.done:
                    self.conn.reset_stream(stream.sid, h2.errors.ErrorCodes.CANCEL)
                self.flush()
            except (h2.exceptions.H2Error, OSError):
                pass
        if self.going and not self.streams:
            self.close("the server went away")

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.why = why
        for stream in list(self.streams.values()):
            stream.put(("reset", f"the connection to {self.label} ended: {why}", 0))
        try:
            self.sock.close()
        except OSError:
            pass
        if gevent.getcurrent() is not self.reader:
            self.reader.kill(block=False)


class UpStream:
    """One request to a server: events from its reader, sends within the server's windows."""

    def __init__(self, owner: H2Upstream, sid: int) -> None:
        self.owner = owner
        self.sid = sid
        self.events: deque[tuple[str, object, int]] = deque()
        self.ready = Event()
        self.window = Event()
        self.done = False  # the server ended its answer (END_STREAM), or reset the stream
        self.sent_end = False
        self.unprocessed = False  # refused by a GOAWAY before the server took it: may go elsewhere
        self.cancelled = False  # by the client (it reset its own stream): no fault of the server's

    def put(self, event: tuple[str, object, int]) -> None:
        if event[0] in ("end", "reset"):
            self.done = True
            self.window.set()  # (a sender waiting for a window finds the stream over)
        self.events.append(event)
        self.ready.set()

    def next(self, timeout: Optional[float]) -> tuple[str, object, int]:
        """The next event: ("head", headers), ("data", bytes, flow), ("trailers", headers),
        ("end", None), ("reset", why). Raises socket.timeout after ``timeout`` without one."""
        while not self.events:
            self.ready.clear()
            if not self.ready.wait(timeout):
                raise socket.timeout(f"the server {self.owner.label} was silent for {timeout:g}s")
        return self.events.popleft()

    def consumed(self, flow: int) -> None:
        """``flow`` bytes of the answer reached the client: the server may send as much again."""
        owner = self.owner
        if flow and not owner.closed and not self.done:
            try:
                owner.conn.acknowledge_received_data(flow, self.sid)
                owner.flush()
            except h2.exceptions.H2Error:
                pass

    def unacked(self) -> int:
        n = sum(flow for kind, _, flow in self.events if kind == "data")
        self.events.clear()
        return n

    def send(self, data: Data, timeout: Optional[float]) -> None:
        """Request body bytes, as DATA frames within the server's windows."""
        owner, conn, sid = self.owner, self.owner.conn, self.sid
        view = memoryview(data)
        while view:
            if owner.closed or self.done:
                raise ConnectionResetError(f"the stream to {owner.label} ended")
            room = send_room(conn, sid, self.window, timeout, f"HTTP/2 to {owner.label}")
            if not room:
                continue
            piece, view = view[:room], view[room:]
            try:
                conn.send_data(sid, piece.tobytes())
            except h2.exceptions.H2Error as e:
                raise ConnectionResetError(f"HTTP/2 to {owner.label}: {e}") from None
            owner.flush()

    def end(self) -> None:
        if self.sent_end:
            return
        self.sent_end = True
        try:
            self.owner.conn.end_stream(self.sid)
        except h2.exceptions.H2Error as e:
            raise ConnectionResetError(f"HTTP/2 to {self.owner.label}: {e}") from None
        self.owner.flush()

    def cancel(self) -> None:
        """The client went: the server stops too (RST_STREAM CANCEL, once forgotten)."""
        self.cancelled = True
        self.put(("reset", "the client went away", 0))


class H2Pool:
    """A server's HTTP/2 connections: the first with room for one more stream, else a new one."""

    __slots__ = ("conns",)

    def __init__(self) -> None:
        self.conns: list[H2Upstream] = []

    def get(self, dial: Callable[[], socket.socket], label: str) -> H2Upstream:
        """A connection to send a request on: an open one with room, else a new one. Raises
        UpstreamError when a new one cannot be made."""
        self.conns = [c for c in self.conns if not c.closed]
        for conn in self.conns:
            if conn.usable:
                return conn
        sock = dial()
        try:
            conn = H2Upstream(sock, label)
        except OSError as e:
            sock.close()
            raise UpstreamError(f"HTTP/2 with {label}: {e}") from None
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.conns:
            conn.close("closed")
        self.conns = []


def request_headers(method: str, scheme: bytes, authority: bytes, path: str, headers: list) -> list:
    """The HTTP/2 header list of a request: pseudo-headers first, names in lower case, the
    hop-by-hop ones out (``te: trailers`` kept)."""
    out = [(b":method", method.encode("latin-1")), (b":scheme", scheme), (b":authority", authority),
           (b":path", path.encode("latin-1"))]
    for name, value in headers:
        name = name.lower()
        if name in HOP or (name == b"te" and value.strip().lower() != b"trailers"):
            continue
        out.append((name, value))
    return out


def trailer_block(headers: list) -> bytes:
    """The last chunk of a chunked body, with the answer's trailers."""
    return b"0\r\n" + b"".join(b"%s: %s\r\n" % (n, v) for n, v in headers if n[:1] != b":" and n not in HOP) + b"\r\n"


def wait_answer(stream: UpStream, timeout: float) -> list:
    """The final answer's headers (informational ones skipped). Raises socket.timeout,
    ConnectionResetError (the stream reset before an answer, or an answer whose :status is not
    three digits from 100 to 999, or 101, which HTTP/2 has not: RFC 9113 8.3.2 and 8.6; the h2
    library checks only that there is one)."""
    while True:
        kind, value, _ = stream.next(timeout)
        if kind == "head":
            headers = value
            assert isinstance(headers, list)
            status = next((v for n, v in headers if n == b":status"), b"")
            if len(status) != 3 or not status.isdigit() or status < b"100" or status == b"101":
                raise ConnectionResetError(f"the server answered with :status {status[:20]!r} (100-999 but 101 are)")
            if status[0] != 49:  # (not 1xx)
                _check_fields(headers)
                return headers
        elif kind == "reset":
            raise ConnectionResetError(str(value))
        elif kind == "end":
            raise ConnectionResetError("the server ended the stream without an answer")


class Unprocessed(Exception):
    """A server refused a stream before taking it (GOAWAY, a closed connection): the request
    may go to another server whatever it is."""


class _Upload:
    """A request body sent to the server as the client sends it, in a greenlet of its own,
    while the answer may already be coming (gRPC's client and bidirectional streams)."""

    def __init__(self, reader: Reader, req: Any, stream: UpStream, timeout: float) -> None:
        self.stream = stream
        self.timeout = timeout
        self.client_error: Optional[httpio.ClientBodyError] = None
        self.greenlet = gevent.spawn(self._run, reader, req)

    def _run(self, reader: Reader, req: Any) -> None:
        stream = self.stream
        try:
            httpio.copy_body(reader, self._send, req.framing, False, limit=getattr(req, "body_limit", 0))
        except (PeerClosed, ProtocolError, socket.timeout) as e:  # (the client's side)
            self.client_error = httpio.ClientBodyError(e)
            stream.put(("reset", f"the client's body: {e}", 0))
            return
        except OSError as e:  # the server's side: the answer says what happened
            log.debug("HTTP/2 request body to %s: %s", stream.owner.label, e)
            return
        req.framing = NO_BODY  # (read whole)
        try:
            stream.end()
        except OSError:
            pass

    def _send(self, data: Data) -> None:
        self.stream.send(data, self.timeout)

    def stop(self) -> None:
        self.greenlet.kill(block=False)


def forward(client: Conn, reader: Reader, req: Any, conn: H2Upstream, out: list, timeout: float,
            finish: Optional[Callable[[list], list]], first_byte: Optional[Histogram]) -> Optional[BaseException]:
    """One try of a request on ``conn``: the stream with headers ``out``, the body read from
    ``reader`` (``req.framing``) as it comes, the answer written to ``client`` as HTTP/1.1
    (``finish``: the response's header rules). ``req`` has ``head``, ``framing``, ``keep``,
    ``status`` and ``size`` (set here). Returns None once the answer was forwarded whole, else
    what stopped it before any byte of an answer reached the client (Unprocessed: the server
    never took it; httpio.ClientBodyError: the client's body broke). Raises once the answer
    began, and when the client reset its stream (status 499)."""
    body = req.framing != NO_BODY
    try:
        stream = conn.open(out, end=not body)
    except ConnectionResetError as e:
        return Unprocessed(str(e))
    inner = client
    while isinstance(inner, Throttled):
        inner = inner.conn
    if isinstance(inner, H2Stream):  # an HTTP/2 client that resets its stream cancels the server's
        inner.on_cancel = stream.cancel
    upload = _Upload(reader, req, stream, timeout) if body else None
    sent_at = time.monotonic()
    try:
        try:
            headers = wait_answer(stream, timeout)
        except (socket.timeout, ConnectionResetError) as e:
            if stream.cancelled:  # the client reset its stream (a gRPC deadline, say): it is gone
                req.status, req.keep = 499, False  # (nginx's "client closed request", for the log)
                raise
            if upload is not None and upload.client_error is not None:
                return upload.client_error
            if stream.unprocessed:
                return Unprocessed(str(e))
            return e
        if first_byte is not None:
            first_byte.observe(time.monotonic() - sent_at)
        _answer(client, req, stream, headers, timeout, finish)
        return None
    finally:
        if upload is not None:
            upload.stop()
        if isinstance(inner, H2Stream):
            inner.on_cancel = None
        conn.forget(stream)


def _answer(client: Conn, req: Any, stream: UpStream, headers: list, timeout: float,
            finish: Optional[Callable[[list], list]]) -> None:
    """The server's answer to ``client`` as HTTP/1.1: chunked (each DATA frame a chunk at
    once, the trailers after the last) unless it has a length; raises when it breaks off."""
    status = int(next(v for n, v in headers if n == b":status"))
    no_body = req.head.method == "HEAD" or status in (204, 304)
    length = next((v for n, v in headers if n == b"content-length"), None)
    if stream.events and stream.events[0][0] == "end" and length is None:  # a head that ended the stream
        headers = [*headers, (b"content-length", b"0")]  # (gRPC's trailers-only answer): one HEADERS
        length = b"0"  # with END_STREAM again for an HTTP/2 client
    chunked = not no_body and length is None and req.head.version == "1.1"
    if not no_body and length is None and not chunked:
        req.keep = False  # (an HTTP/1.0 client: the body ends with the connection)
    lines = [(n, v) for n, v in headers if n[:1] != b":" and n not in HOP and not (chunked and n == b"content-length")]
    if chunked:
        lines.append((b"Transfer-Encoding", b"chunked"))
    if not req.keep:
        lines.append((b"Connection", b"close"))
    req.status = status
    try:
        client.sendall(http1.encode_head(f"HTTP/1.1 {status} {http1.REASONS.get(status, '')}",
                                         finish(lines) if finish is not None else lines))
        size = 0
        trailers: list = []
        while True:
            kind, value, flow = stream.next(timeout)
            if kind == "data":
                assert isinstance(value, bytes)
                if value and not no_body:
                    client.sendall(b"%x\r\n%s\r\n" % (len(value), value) if chunked else value)
                    size += len(value)
                stream.consumed(flow)
            elif kind == "trailers":
                assert isinstance(value, list)
                trailers = [(n, v) for n, v in value if _carriable(n, v)]  # (the head is out: others dropped)
            elif kind == "end":
                if chunked:
                    client.sendall(trailer_block(trailers))
                break
            else:  # a reset in the middle of the answer: the client's answer is cut too
                raise ConnectionResetError(str(value))
        req.size = size
    except BaseException:
        req.keep = False
        raise
