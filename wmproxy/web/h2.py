"""HTTP/2 on ``[http]`` listeners (RFC 9113): h2 by ALPN on TLS binds, h2c with prior knowledge
on plain ones. The protocol's state machine is the ``h2`` library's (hyper-h2: framing, HPACK,
flow control, stream states, the validation of what the client sends).

Each stream is served by the listener's own request machinery, the one HTTP/1.1 requests go
through (routing, header rules, ACLs, rate limits, files with Range and 304, static answers,
redirects, the reverse proxy, the access log), over an :class:`H2Stream`: a socket-like object
that gives the handler the request as an HTTP/1.1 head and body and turns the HTTP/1.1 answer
it writes back into HEADERS, DATA and trailers. Streams of one connection are served
concurrently, a greenlet each; a stream's answer is sent within the client's flow-control
windows (a stream waits for its window, not the connection), and the request body is granted
to the client as the handler reads it, so one stream holds at most its window. A websocket's
extended CONNECT (RFC 8441; the server offers SETTINGS_ENABLE_CONNECT_PROTOCOL) is given to the
handler as the HTTP/1.1 GET with Upgrade that opens one, and its 101 goes back as a 200 after
which the stream's DATA carries the websocket's bytes both ways.

Limits against the known HTTP/2 attacks (each cuts the connection with GOAWAY and a log line):
``http2_max_concurrent_streams`` streams open at once (a client that opens more than the
SETTINGS said is cut: h2 enforces it as a connection error);
a decoded header list at most ``max_header_size`` (the HPACK bomb) and the HPACK table
``http2_header_table_size``; a header block of at most 64 CONTINUATION frames and
``max_header_size`` bytes (CONTINUATION flood); streams the client resets before their answer
(rapid reset, CVE-2023-44487), PINGs and SETTINGS each within a budget that refills at a fixed
rate (ENHANCE_YOUR_CALM beyond); what waits to be sent to a client that does not read bounded
(the senders wait, and a reader that still only sends control frames is cut). A connection
without open streams must start one within ``client_read_timeout`` (the first within
``client_header_timeout``): PINGs do not keep it open.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import time
from collections import deque
from typing import Callable, Optional

from gevent.event import Event
from gevent.pool import Group
import gevent
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from ..errors import ProtocolError
from ..net.conn import Address, Data
from ..net.dial import fmt_addr
from ..net.gevent_io import nonblocking_sender
from ..net.reader import PeerClosed
from ..net.writer import linger
from ..prot import http1
from ..prot.chunked import ChunkedDecoder
from ..prot.framing import CHUNKED, NO_BODY, UNTIL_CLOSE, response_framing

log = logging.getLogger("wmproxy.http")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PREFACE_HEAD = b"PRI * HTTP/2.0\r\n\r\n"  # what an HTTP/1.1 head reader takes of the preface
RECV_SIZE = 65536
STREAM_WINDOW = 65535  # a request body's window (the protocol's initial one): what one stream may have buffered
MAX_PENDING_OUT = 1 << 20  # bytes waiting for a client that does not read: senders (and the reader) wait beyond
# budgets (burst, refilled per second) of what a client may make the server do for nothing
RESET_BUDGET = (200.0, 100.0)  # streams reset by the client before their answer ended (rapid reset)
PING_BUDGET = (50.0, 5.0)
SETTINGS_BUDGET = (50.0, 5.0)
MAX_HEADER_FRAMES = 64  # HEADERS + CONTINUATION frames of one header block (h2's own cap too)
_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"))
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # a lowercase token: an h2 field name
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


def send_room(conn: h2.connection.H2Connection, sid: int, window: Event, timeout: Optional[float], what: str) -> int:
    """The DATA bytes stream ``sid`` may send now (a frame's at most, within both of the
    peer's windows), else 0 after waiting for ``window`` (set on WINDOW_UPDATE, or when the
    stream ends: the caller looks at its stream again). Raises socket.timeout after ``timeout``
    without a window, ConnectionResetError when h2 has closed the stream."""
    try:
        room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
    except h2.exceptions.H2Error as e:
        raise ConnectionResetError(f"{what}: {e}") from None
    if room > 0:
        return room
    window.clear()
    if not window.wait(timeout):
        raise socket.timeout(f"{what}: no window from the peer for {timeout:g}s")
    return 0


class Budget:
    """A token bucket: :meth:`spend` is False once the burst is spent faster than it refills."""

    __slots__ = ("tokens", "burst", "rate", "at")

    def __init__(self, burst: float, rate: float) -> None:
        self.tokens = self.burst = burst
        self.rate = rate
        self.at = time.monotonic()

    def spend(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1
        return self.tokens >= 0


class Cut(Exception):
    """The client broke a limit: GOAWAY with ``code`` and close."""

    def __init__(self, why: str, code: int = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM) -> None:
        super().__init__(why)
        self.code = code


class H2Settings:
    """What one listener's HTTP/2 connections are made with."""

    __slots__ = ("max_streams", "table_size", "max_head", "read_timeout", "header_timeout")

    def __init__(self, max_streams: int, table_size: int, max_head: int, read_timeout: float,
                 header_timeout: float) -> None:
        self.max_streams = max_streams
        self.table_size = table_size
        self.max_head = max_head
        self.read_timeout = read_timeout
        self.header_timeout = header_timeout


class H2Server:
    """One HTTP/2 connection, server side. :meth:`run` serves it until it ends; each request
    stream goes to ``serve(stream)`` in a greenlet of its own."""

    def __init__(self, sock: socket.socket, address: Address, settings: H2Settings,
                 serve: Callable[["H2Stream"], None]) -> None:
        self.sock = sock
        self.address = address
        self.peer = fmt_addr(address[0], address[1])
        self.settings = settings
        self.serve = serve
        # (what goes out is ours, lower case already; what comes in is validated, upper case refused)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True,
                                           normalize_inbound_headers=False, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_streams,
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: settings.table_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_head,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,  # websockets over HTTP/2 (RFC 8441)
        })
        self.conn.decoder.max_header_list_size = settings.max_head  # (h2 sets it only once the client acks)
        self.conn.decoder.max_allowed_table_size = settings.table_size
        self.streams: dict[int, H2Stream] = {}
        self.handlers = Group()
        self.closed = False
        # writing: h2's frames of a turn of the loop go out in one write by the hub, without
        # waiting; what does not go at once is the writer greenlet's (nothing else writes then)
        self._send_now = nonblocking_sender(sock)
        self._loop = gevent.get_hub().loop
        self._armed = False  # a write by the hub is scheduled
        self._busy = False  # the writer greenlet has bytes to write
        self._rest: Data = b""  # what the hub could not write (TLS: the same bytes again)
        self._raw = b""  # frames around h2 (our GOAWAY of a drain), after what h2 has
        self._wake = Event()
        self._backlog: list[bytes] = []  # h2's frames while the writer greenlet is busy
        self._backlogged = 0  # their bytes
        self._room = Event()  # set while at most MAX_PENDING_OUT waits in the backlog
        self._room.set()
        self._writer: Optional[gevent.Greenlet] = None
        self.broken = False  # a write failed
        self.going = False  # our GOAWAY went: the streams open finish, no new ones
        self.resets = Budget(*RESET_BUDGET)
        self.pings = Budget(*PING_BUDGET)
        self.settings_budget = Budget(*SETTINGS_BUDGET)
        self.frames = FrameScan(settings.max_head)
        self.requests = 0

    # -- writing -------------------------------------------------------------------------------
    def flush(self) -> None:
        """Have what h2 has to send written: at the end of this turn of the loop by the hub
        (every stream's frames of the turn in one write), the rest by the writer greenlet.
        Waits while a client that does not read has more than MAX_PENDING_OUT waiting for it;
        raises OSError once the connection failed."""
        if self.broken:
            raise ConnectionResetError("the HTTP/2 connection failed")
        data = self._take()  # (taken now and counted: a stream's loop may make megabytes within a turn)
        if data:
            self._backlog.append(data)
            self._backlogged += len(data)
            if self._backlogged > MAX_PENDING_OUT:
                self._room.clear()
        if not (self._busy or self._armed):
            self._armed = True
            self._loop.run_callback(self._write_now)
        if not self._room.is_set() and gevent.getcurrent() is not self._writer:
            if not self._room.wait(self.settings.read_timeout):
                raise socket.timeout(f"the client read nothing for {self.settings.read_timeout:g}s")
            if self.broken:
                raise ConnectionResetError("the HTTP/2 connection failed")

    def _take(self) -> bytes:
        data = self.conn.data_to_send()
        if self._raw:
            data, self._raw = data + self._raw, b""
        return data

    def _drain(self) -> bytes:
        """What waits in the backlog and what h2 has now, in order (room again for the senders)."""
        if not self._backlog:
            return self._take()
        data = b"".join(self._backlog) + self._take()
        self._backlog.clear()
        self._backlogged = 0
        self._room.set()
        return data

    def _write_now(self) -> None:
        """(In the hub: never waits, never raises.)"""
        self._armed = False
        if self._busy or self.broken:
            return
        data = self._drain()
        if not data:
            return
        try:
            sent = self._send_now(data) if self._send_now is not None else 0
        except OSError:
            self._fail()
            return
        if sent < len(data):
            self._rest = memoryview(data)[sent:] if sent else data
            self._busy = True
            if self._writer is None:
                self._writer = gevent.spawn(self._write_rest)
            self._wake.set()

    def _write_rest(self) -> None:
        """The writer greenlet: what the hub could not write, then whatever h2 has, until none."""
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                while True:
                    data, self._rest = self._rest or self._drain(), b""
                    if not data:
                        break
                    self.sock.sendall(data)
                self._busy = False
        except OSError:
            self._fail()

    def _fail(self) -> None:
        """A write failed: part of a frame may have gone, nothing more can follow it."""
        self.broken = self.closed = True
        self._room.set()
        for stream in list(self.streams.values()):
            stream.on_reset("the connection failed")
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # (the reader's wait ends)
        except OSError:
            pass

    def go_away(self) -> None:
        """The listener drains: GOAWAY now (NO_ERROR, the last stream taken), the open streams
        finish, then the connection ends. The frame goes around h2's state machine, which would
        refuse to send on the open streams after a GOAWAY of its own. Blocks while it is sent."""
        if self.going or self.closed:
            return
        self.going = True
        self._raw += GoAwayFrame(0, last_stream_id=self.conn.highest_inbound_stream_id,
                                 error_code=h2.errors.ErrorCodes.NO_ERROR).serialize()
        try:
            self.flush()
        except OSError:
            pass
        self._wake_if_done()

    def _wake_if_done(self) -> None:
        """After our GOAWAY, once no stream is open: end the reader's wait (it returns)."""
        if self.going and not self.streams:
            try:
                self.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    # -- reading -------------------------------------------------------------------------------
    def run(self, first: bytes = b"") -> None:
        """Serve the connection: ``first``, the bytes already read (the preface, for h2c)."""
        settings = self.settings
        self.conn.initiate_connection()
        # the connection's window: every stream's at once, so a stream whose handler reads its body
        # slowly holds its own window and not the others' (each stream's bounds what is buffered)
        self.conn.increment_flow_control_window(settings.max_streams * STREAM_WINDOW)
        started = time.monotonic()
        idle_since, idle_limit = started, settings.header_timeout  # the first stream: within the head deadline
        why = ""
        try:
            self.flush()
            data = first
            while not self.closed:
                if data:
                    self._receive(data)
                    self.flush()
                if self.going and not self.streams:
                    return
                if self.streams:
                    idle_since = 0.0
                elif not idle_since:
                    idle_since, idle_limit = time.monotonic(), settings.read_timeout
                wait = settings.read_timeout if self.streams else idle_since + idle_limit - time.monotonic()
                if wait <= 0:
                    why = f"no request for {idle_limit:g}s"
                    self._goaway(h2.errors.ErrorCodes.NO_ERROR)
                    return
                self.sock.settimeout(wait)
                try:
                    data = self.sock.recv(RECV_SIZE)
                except socket.timeout:
                    data = b""
                    continue
                if not data:  # the client's EOF: what it asked whole is still answered (it may read on), then the end
                    for stream in [s for s in self.streams.values() if not s.ended]:
                        stream.on_reset("the client closed before the end of its request")
                    if self.streams:
                        self.handlers.join(timeout=settings.read_timeout)
                    self._try_flush()
                    return
        except Cut as e:
            why = str(e)
            log.info("%s http2: cut: %s", self.peer, e)
            self._goaway(e.code)  # (and closed at once: a flood is not read on)
        except h2.exceptions.ProtocolError as e:  # h2 queued its GOAWAY
            text = str(e)  # (some say only a stream id: StreamClosedError(1) is "1")
            why = f"protocol error: {text if text and not text.isdigit() else f'{type(e).__name__} {text}'}"
            log.info("%s http2: cut: %s", self.peer, why)
            self._try_flush()
            linger(self.sock)  # (what the client still sends is dropped first, so that it reads the GOAWAY)
        except (OSError, ProtocolError):
            pass
        finally:
            self.closed = True
            for stream in list(self.streams.values()):
                stream.on_reset("the connection ended")
            self.handlers.kill(block=True, timeout=5)
            if self._writer is not None:
                self._writer.kill(block=False)
            log.debug("%s http2: done after %d requests %s", self.peer, self.requests, why)

    def _goaway(self, code: int) -> None:
        try:
            self.conn.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            return
        self._try_flush()

    def _try_flush(self) -> None:
        """Before the connection closes: write what is left now, waiting a second at most."""
        if self.broken:
            return
        try:
            self.sock.settimeout(1.0)
            if self._busy:  # (the writer greenlet's bytes first)
                self._room.wait(1.0)
                gevent.sleep(0)
            if not self._busy:
                data = self._drain()
                if data:
                    self.sock.sendall(data)
        except OSError:
            pass

    def _receive(self, data: bytes) -> None:
        self.frames.feed(data)  # (raises Cut for a header block past the limits)
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.on_data(event.data, event.flow_controlled_length)
                elif event.flow_controlled_length:  # (a stream that is done: its bytes free the window still)
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.WindowUpdated):
                if event.stream_id:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.window.set()
                else:
                    for stream in self.streams.values():
                        stream.window.set()
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.on_end(None)
            elif isinstance(event, h2.events.TrailersReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.on_end(event.headers)
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None and event.remote_reset:
                    if not stream.answered and not self.resets.spend():
                        raise Cut("rapid reset: the client reset more streams than it let finish")
                    stream.on_reset(f"reset by the client ({event.error_code!s})")
            elif isinstance(event, h2.events.PingReceived):
                if not self.pings.spend():
                    raise Cut("PING flood")
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if not self.settings_budget.spend():
                    raise Cut("SETTINGS flood")
                for stream in self.streams.values():  # (a new initial window may open every stream)
                    stream.window.set()
            elif isinstance(event, h2.events.ConnectionTerminated):  # (h2 sends nothing more after it)
                self.closed = True

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if self.going:  # (after our GOAWAY: a stream the client opened before it saw it)
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        try:
            stream = H2Stream(self, sid, event.headers, event.stream_ended is not None)
        except ProtocolError as e:  # a request h2 took but HTTP/1.1 cannot say: 400 on its stream alone
            log.info("%s http2: stream %d: bad request: %s", self.peer, sid, e)
            self.conn.send_headers(sid, [(b":status", b"%d" % e.http_status), (b"content-length", b"0")],
                                   end_stream=True)
            return
        self.streams[sid] = stream
        self.requests += 1
        self.handlers.spawn(self._serve_stream, stream)

    def _serve_stream(self, stream: "H2Stream") -> None:
        try:
            self.serve(stream)
        except (OSError, PeerClosed, ProtocolError):  # the stream's own end: reset, timed out, cut
            pass
        except Exception:
            log.exception("%s http2: stream %d: internal error", self.peer, stream.sid)
        finally:
            try:
                stream.finish()
            except (OSError, h2.exceptions.H2Error):
                pass
            self.forget(stream)

    def forget(self, stream: "H2Stream") -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
            self._wake_if_done()
        unacked = stream.unacked()
        if unacked and not self.closed:
            try:
                self.conn.acknowledge_received_data(unacked, stream.sid)
            except h2.exceptions.H2Error:
                pass


class H2Connections:
    """A listener's HTTP/2 connections: each told GOAWAY when the listener drains."""

    def __init__(self) -> None:
        self.conns: set[H2Server] = set()

    def serve(self, sock: socket.socket, address: Address, settings: H2Settings, serve: Callable[["H2Stream"], None],
              first: bytes = b"") -> None:
        """Serve one connection (H2Server.run) as one of these."""
        conn = H2Server(sock, address, settings, serve)
        self.conns.add(conn)
        try:
            conn.run(first)
        finally:
            self.conns.discard(conn)

    def go_away(self) -> None:
        for conn in list(self.conns):
            gevent.spawn(conn.go_away)


class FrameScan:
    """Reads the frame headers of what the peer sends, before h2 does, for what h2 does not
    bound itself: the bytes of one header block (HEADERS and its CONTINUATION frames) and the
    count of its frames. ``server``: the peer is an HTTP/2 server (an upstream): no client
    preface comes first."""

    __slots__ = ("limit", "buf", "skip", "block", "frames", "preface")

    def __init__(self, limit: int, server: bool = False) -> None:
        self.limit = limit
        self.buf = b""  # an incomplete frame header
        self.skip = 0  # payload bytes of the current frame still to pass
        self.block = -1  # bytes of the header block in progress (-1: none)
        self.frames = 0
        self.preface = 0 if server else len(PREFACE)  # preface bytes still to pass

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        if self.preface:
            take = min(self.preface, end)
            self.preface -= take
            pos = take
        while pos < end:
            if self.skip:
                take = min(self.skip, end - pos)
                self.skip -= take
                pos += take
                continue
            need = 9 - len(self.buf)
            self.buf += data[pos:pos + need]
            pos += need
            if len(self.buf) < 9:
                return
            header, self.buf = self.buf, b""
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            self.skip = length
            if kind == 0x1 or (kind == 0x9 and self.block >= 0):  # HEADERS, or CONTINUATION of a block
                self.block = max(self.block, 0) + length
                self.frames += 1
                if self.block > self.limit + 16384 or self.frames > MAX_HEADER_FRAMES:
                    raise Cut(f"a header block over {self.limit} bytes or {MAX_HEADER_FRAMES} frames "
                              f"(CONTINUATION flood)")
                if flags & 0x4:  # END_HEADERS
                    self.block, self.frames = -1, 0


class H2Stream:
    """One request stream, used by the HTTP/1.1 request machinery like a client socket: it
    reads the request as an HTTP/1.1 head and body, and what it writes (an HTTP/1.1 answer) is
    sent as HEADERS, DATA and trailers."""

    def __init__(self, owner: H2Server, sid: int, headers: list, ended: bool) -> None:
        self.owner = owner
        self.sid = sid
        self.timeout: Optional[float] = None
        self.inbox: deque[tuple[bytes, int]] = deque()  # (bytes for the handler, flow-controlled bytes they stand for)
        self.readable = Event()
        self.window = Event()  # set when the client may have granted more
        self.ended = ended  # the request's body is all here (END_STREAM)
        self.reset: Optional[str] = None
        self.on_cancel: Optional[Callable[[], None]] = None
        self.answered = False  # the answer ended (END_STREAM sent)
        self.method, head, self.chunked, self.websocket = _request_head(headers, ended)
        self.inbox.append((head, 0))
        self.readable.set()
        if ended and self.chunked:
            self.inbox.append((b"0\r\n\r\n", 0))
        # the answer
        self.out_head = b""  # until the head is whole
        self.framing = NO_BODY
        self.left = 0  # of a length framing
        self.decoder: Optional[ChunkedDecoder] = None
        self.chunk_buf = bytearray()
        self.sent_head = False

    # -- events from the connection ------------------------------------------------------------
    def on_data(self, data: bytes, flow: int) -> None:
        if not data:  # (an empty DATA frame, END_STREAM on it, say: b'' would read as the end here)
            if flow and not self.owner.closed:
                self.owner.conn.acknowledge_received_data(flow, self.sid)
            return
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.inbox.append((data, flow))
        self.readable.set()

    def on_end(self, trailers: Optional[list]) -> None:
        if self.ended:
            return
        self.ended = True
        if self.chunked:
            lines = b"".join(b"%s: %s\r\n" % (n, v) for n, v in trailers or () if _NAME.fullmatch(n)
                             and not _BAD_VALUE.search(v) and n not in _HOP and not n.startswith(b":"))
            self.inbox.append((b"0\r\n" + lines + b"\r\n", 0))
        self.readable.set()

    def on_reset(self, why: str) -> None:
        if self.reset is None:
            self.reset = why
        self.readable.set()
        self.window.set()
        if self.on_cancel is not None:  # (a stream to an HTTP/2 upstream stops too)
            self.on_cancel()

    def unacked(self) -> int:
        n = sum(flow for _, flow in self.inbox)
        self.inbox.clear()
        return n

    # -- the socket API ------------------------------------------------------------------------
    def settimeout(self, timeout: Optional[float]) -> None:
        self.timeout = timeout

    def gettimeout(self) -> Optional[float]:
        return self.timeout

    def setsockopt(self, *args: object) -> None:
        pass

    def getpeername(self) -> Address:
        return self.owner.address

    def getsockname(self) -> Address:
        return self.owner.sock.getsockname()

    def recv(self, n: int) -> bytes:
        while not self.inbox:
            if self.reset is not None:
                raise ConnectionResetError(f"HTTP/2 stream {self.sid}: {self.reset}")
            if self.ended:
                return b""
            self.readable.clear()
            if not self.readable.wait(self.timeout):
                raise socket.timeout("timed out")
        if self.reset is not None:
            raise ConnectionResetError(f"HTTP/2 stream {self.sid}: {self.reset}")
        data, flow = self.inbox.popleft()
        if len(data) > n:
            self.inbox.appendleft((data[n:], 0))
            data = data[:n]
        if flow and not self.owner.closed:
            self.owner.conn.acknowledge_received_data(flow, self.sid)
            self.owner.flush()
        return data

    def send(self, data: Data) -> int:
        self.sendall(data)
        return len(data)

    def sendall(self, data: Data) -> None:
        if self.reset is not None:
            raise ConnectionResetError(f"HTTP/2 stream {self.sid}: {self.reset}")
        if not self.sent_head:
            raw = self.out_head + data if self.out_head else bytes(data)  # (a head in pieces: rare)
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                if len(raw) > 1 << 20:
                    raise ConnectionResetError("an answer head over 1 MiB")
                self.out_head = raw
                return
            self.out_head = b""
            head, data = raw[:end + 4], memoryview(raw)[end + 4:]  # (the body after it: not copied)
            self._answer_head(head)
            if not self.sent_head:  # (a 1xx: the real head follows)
                if data:
                    self.sendall(data)
                return
        if self.answered or not data:
            return
        if self.framing == CHUNKED:
            assert self.decoder is not None
            self.chunk_buf += data
            pieces, used = self.decoder.feed(self.chunk_buf)
            del self.chunk_buf[:used]
            for piece, _, _ in pieces:
                self._data(piece, False)
            if self.decoder.done:
                trailers = [(n.strip().lower(), v.strip()) for n, _, v in
                            (line.partition(b":") for line in self.decoder.trailers.split(b"\r\n") if line)]
                trailers = [(n, v) for n, v in trailers if n not in _HOP]
                if trailers:
                    self._call(self.owner.conn.send_headers, self.sid, trailers, end_stream=True)
                else:
                    self._data(b"", True)
        elif self.framing == UNTIL_CLOSE:
            self._data(data, False)
        else:
            take = data[:self.left]
            self.left -= len(take)
            self._data(take, not self.left)

    def _answer_head(self, raw: bytes) -> None:
        head = http1.parse_response_head(raw)
        upgraded = self.websocket and head.status == 101  # (RFC 8441: 200, then the websocket's bytes as DATA)
        if head.status < 200 and not upgraded:
            return  # 100 Continue and the like: HTTP/2 needs none of them here
        self.framing = UNTIL_CLOSE if upgraded else response_framing(self.method, head)
        connection = {t.strip().lower() for v in head.get_all(b"connection") or () for t in v.split(b",")}
        status = head.status
        if self.websocket and not upgraded and status < 300:  # (a 2xx would tell the client its websocket is
            status = 501  # open: what answered it, a file or a static answer, does not speak websocket)
        headers = [(b":status", b"200" if upgraded else b"%d" % status)]
        for name, value in head.headers:
            name = name.lower()
            if name not in _HOP and name not in connection and name != b"sec-websocket-accept":
                headers.append((name, value.strip(b" \t")))  # (HTTP/1.1's whitespace around a value is not
                # part of it, and HTTP/2 refuses a value it surrounds: an answer every h2 client would refuse)
        self.sent_head = True
        end = self.framing == NO_BODY
        if self.framing == CHUNKED:
            self.decoder = ChunkedDecoder()
        elif self.framing.kind == "length":
            self.left = self.framing.length
        self._call(self.owner.conn.send_headers, self.sid, headers, end_stream=end)
        if end:
            self.answered = True

    def _data(self, data: Data, end: bool) -> None:
        """``data`` as DATA frames within the client's windows; END_STREAM with the last."""
        owner, conn, sid = self.owner, self.owner.conn, self.sid
        view = memoryview(data)
        while True:
            if self.reset is not None:
                raise ConnectionResetError(f"HTTP/2 stream {sid}: {self.reset}")
            if not view:
                if end:
                    self._call(conn.end_stream, sid)
                return
            room = send_room(conn, sid, self.window, owner.settings.read_timeout, f"HTTP/2 stream {sid}")
            if not room:
                continue
            piece, view = view[:room], view[room:]
            last = end and not view
            self._call(conn.send_data, sid, piece.tobytes(), end_stream=last)
            if last:
                return

    def _call(self, method: Callable, *args: object, **kwargs: object) -> None:
        if self.owner.closed:
            raise ConnectionResetError("the HTTP/2 connection ended")
        try:
            method(*args, **kwargs)
        except h2.exceptions.H2Error as e:  # the stream was reset or closed meanwhile
            raise ConnectionResetError(f"HTTP/2 stream {self.sid}: {e}") from None
        if kwargs.get("end_stream") or method == self.owner.conn.end_stream:
            self.answered = True
        self.owner.flush()

    def shutdown(self, how: int) -> None:
        """The end of an answer that ends with its close (a websocket's relay: its server went):
        END_STREAM, so the client ends its side too."""
        if how != socket.SHUT_RD and self.sent_head and self.framing == UNTIL_CLOSE and not self.answered \
                and self.reset is None and not self.owner.closed:
            try:
                self._call(self.owner.conn.end_stream, self.sid)
            except ConnectionResetError:
                pass

    def close(self) -> None:
        pass

    def finish(self) -> None:
        """The handler is done: end an answer whose end is its close, reset a cut one, and
        stop a request body nobody reads."""
        owner = self.owner
        if owner.closed or self.reset is not None:
            return
        conn = owner.conn
        if not self.answered:
            if self.sent_head and self.framing == UNTIL_CLOSE:
                self._call(conn.end_stream, self.sid)
            else:
                self._call(conn.reset_stream, self.sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self.answered = True
                return
        if not self.ended:  # answered before the body was read: the client may stop sending (RFC 9113 8.1)
            self._call(conn.reset_stream, self.sid, h2.errors.ErrorCodes.NO_ERROR)


def _request_head(headers: list, ended: bool) -> tuple[str, bytes, bool, bool]:
    """(method, the request as an HTTP/1.1 head, whether its body is sent on chunked, whether
    it opens a websocket) from an HTTP/2 header list h2 has validated (pseudo-headers first,
    lowercase names). A websocket's extended CONNECT (RFC 8441: ``:protocol websocket``)
    becomes the HTTP/1.1 GET with Upgrade that opens one (a fresh Sec-WebSocket-Key; the
    server's Sec-WebSocket-Accept is not passed back: HTTP/2 has none). Raises ProtocolError
    for what HTTP/1.1 cannot carry: a CR, LF or NUL in a value, a name that is not a token,
    a Host that says otherwise than :authority, another CONNECT."""
    method = path = authority = protocol = b""
    lines = []
    cookies = []
    host = None
    length = False
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
            continue
        if not _NAME.fullmatch(name) or _BAD_VALUE.search(value):
            raise ProtocolError(f"a header HTTP/1.1 cannot carry: {name[:60]!r}")
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            host = value
            continue
        if name == b"content-length":
            length = True
        if name == b"sec-websocket-key":
            continue  # (ours goes upstream)
        lines.append(b"%s: %s\r\n" % (name, value))
    websocket = method == b"CONNECT" and protocol.lower() == b"websocket"
    if websocket:
        if length:
            raise ProtocolError("a websocket's CONNECT with a Content-Length")
        method = b"GET"
        lines.append(b"connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: %s\r\n"
                     % base64.b64encode(os.urandom(16)))
    elif method == b"CONNECT":
        raise ProtocolError("CONNECT over HTTP/2 is not served here (but a websocket's, RFC 8441)", 501)
    if not path or not method or b" " in path or b" " in method:
        raise ProtocolError("a request without :method or :path")
    if authority and host is not None and host != authority:
        raise ProtocolError("Host says otherwise than :authority")
    host = authority or host
    if host is None:
        raise ProtocolError("a request without :authority or Host")
    if _BAD_VALUE.search(host) or _BAD_VALUE.search(path) or b" " in host:
        raise ProtocolError("a bad :authority or :path")
    chunked = not ended and not length and not websocket
    if cookies:
        lines.append(b"cookie: %s\r\n" % b"; ".join(cookies))
    if chunked:
        lines.append(b"transfer-encoding: chunked\r\n")
    head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (method, path, host, b"".join(lines))
    return method.decode("latin-1"), head, chunked, websocket
