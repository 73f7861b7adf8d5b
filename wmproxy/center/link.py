"""CenterLink: many virtual TCP connections over one socket (shared/docs/PROTOCOL.md).

One reader (the greenlet that calls :meth:`CenterLink.run`) and one writer greenlet per link;
everything sent goes through the writer's queue. Each stream is a :class:`VirtualConn`, a
socket-like object (recv, send, sendall, shutdown, close, settimeout) fed by its own queue, so
the relay and the proxy handlers run on it unchanged.

Flow control: a sender may have at most ``window`` DATA bytes that the far consumer has not
taken yet; the receiver grants more with WINDOW once its consumer has taken a quarter of a
window. So a stream whose reader stalls holds at most one window of memory and the link's
reader never blocks on it: the other streams keep their speed. A stream starts with the link's
``window`` (both ends assume it) and the receiver may grow it, up to ``max_window``, by granting
more than was taken: it doubles each time its consumer took a quarter of it within
``max(4 x RTT, 10 ms)`` of the previous grant (the sender was waiting on the window, not on the
consumer; go-yamux grows its windows the same way). A stalled consumer's window never grows.

Memory stays bounded whatever the far end sends (docs/SECURITY.md): credit that would let this
end's window on a stream exceed ``max_window`` is a protocol error (the link is closed with
CLOSE(0)); the writer's outbox holds at most ``max_outbox`` bytes of DATA, and while it is
full the sources stop being read (greenlet senders wait, push-mode relays stop their read
watchers), so a far end that stops reading holds at most ``max_outbox`` here; control frames
(WINDOW, PING answers, CLOSE) are never held back, and an outbox past twice the bound (a far
end that sends PINGs but reads nothing) ends the link.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

import gevent
from gevent.event import Event
from gevent.pool import Group
from gevent.queue import Empty, Queue

from ..errors import ProtocolError
from ..net.gevent_io import kernel_socket, read_waiter
from ..net.reader import PeerClosed, Reader
from ..prot import frame as fr
from ..prot.frame import Flag, Kind

log = logging.getLogger("wmproxy.center")

DATA_CHUNK = 65536
WRITE_BATCH = 262144
MAX_OUTBOX = 8 << 20  # bytes queued for the link's writer: DATA sources pause beyond it
READ_BUFFER = 262144  # the link reader's kept buffer: several DATA frames per recv
_KINDS = frozenset(Kind)
_RESET = object()  # in a stream's inbox: the stream was aborted


def read_frame(reader: Reader, max_body: int) -> fr.Frame:
    """Exactly 8 header bytes, then exactly ``length`` body bytes. Blocks.

    Raises PeerClosed at a clean EOF between frames, ProtocolError for EOF inside a frame,
    an unknown kind or a body over ``max_body``.
    """
    try:
        header = reader.read_exact(fr.HEADER_SIZE)
    except PeerClosed:
        if reader.buf:
            raise ProtocolError("link closed in the middle of a frame header") from None
        raise
    length, kind, flag, sock_map = fr.decode_header(header, max_body)
    try:
        body = reader.read_exact(length) if length else b""
    except PeerClosed:
        raise ProtocolError(f"link closed in the middle of a {kind.name} frame") from None
    return fr.Frame(kind, flag, sock_map, body)


class VirtualConn:
    """One stream of a link, used like a connected socket. Owned by whoever opened or
    accepted it; :meth:`close` ends it (the link forgets it).

    Two ways to take what the far end sends: :meth:`recv` (a greenlet waits on the stream's
    queue), or push mode (:meth:`attach`): the link's reader hands every event to a sink
    object at once, so a stream relayed by callbacks (net.bridge) keeps no greenlet. The
    queue and the credit event are made only when a greenlet needs them: thousands of idle
    attached streams cost a few small objects each.
    """

    __slots__ = ("link", "sid", "_inbox", "pending", "credit", "_credit_event", "window", "granted_at", "consumed",
                 "buffered", "sent_fin", "got_fin", "reset", "closed", "timeout", "sink")

    def __init__(self, link: "CenterLink", sid: int) -> None:
        self.link = link
        self.sid = sid
        self._inbox: Queue | None = None  # bytes chunks; b"" = EOF; _RESET = aborted (bounded by the window)
        self.pending = b""
        self.credit = link.window  # what this end may still send
        self._credit_event: Event | None = None
        self.window = link.window  # what the far end may have in flight to us: grows up to link.max_window
        self.granted_at = 0.0  # when the last WINDOW went out (monotonic)
        self.consumed = 0
        self.buffered = 0  # bytes received and not yet taken by the consumer: at most one window
        self.sent_fin = False
        self.got_fin = False
        self.reset: str | None = None
        self.closed = False
        self.timeout: float | None = None
        self.sink = None  # push mode: gets data(body), fin(), reset(reason), credit()

    def __repr__(self) -> str:
        return f"<VirtualConn {self.sid} of {self.link.name}>"

    @property
    def inbox(self) -> Queue:
        if self._inbox is None:
            self._inbox = Queue()
        return self._inbox

    @property
    def credit_event(self) -> Event:
        if self._credit_event is None:
            self._credit_event = Event()
        return self._credit_event

    # -- the socket API ------------------------------------------------------------------------
    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def gettimeout(self) -> float | None:
        return self.timeout

    def setsockopt(self, *args) -> None:
        pass

    def getsockname(self):
        return self.link.local_address

    def getpeername(self):
        return self.link.peer_address

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; b'' once the far side half-closed. Raises socket.timeout,
        ConnectionResetError when the stream or the link was aborted."""
        if self.pending:
            chunk, self.pending = self.pending[:n], self.pending[n:]
            self.consume(len(chunk))
            return chunk
        try:
            chunk = self.inbox.get(timeout=self.timeout)
        except Empty:
            raise socket.timeout("timed out") from None
        if chunk is _RESET:
            self.inbox.put(_RESET)
            raise ConnectionResetError(f"stream {self.sid} reset: {self.reset}")
        if not chunk:
            self.inbox.put(b"")  # EOF stays EOF
            return b""
        if len(chunk) > n:
            chunk, self.pending = chunk[:n], chunk[n:]
        self.consume(len(chunk))
        return chunk

    def consume(self, n: int) -> None:
        """``n`` received bytes were taken by the consumer: window credit goes back to the
        far end once a quarter of a window was taken, with the window's growth if the
        consumer keeps up (see the module's doc). Never blocks."""
        self.buffered -= n
        self.consumed += n
        window = self.window
        if self.consumed >= window >> 2 and not self.closed and not self.reset:
            grant, link = self.consumed, self.link
            if window < link.max_window:
                now = time.monotonic()
                if now - self.granted_at < link.grow_within:
                    grow = min(window, link.max_window - window)
                    self.window = window + grow
                    grant += grow
                self.granted_at = now
            link.send_frame(Kind.WINDOW, 0, self.sid, fr.encode_window(grant))
            self.consumed = 0

    def sendall(self, data) -> None:
        """Send all of ``data`` as DATA frames, waiting for window credit. Raises
        BrokenPipeError after shutdown/close, ConnectionResetError when reset."""
        view = memoryview(data)
        while view:
            self._check_writable()
            while self.credit <= 0:
                self.credit_event.clear()
                if not self.credit_event.wait(timeout=self.timeout):
                    raise socket.timeout("timed out waiting for window credit")
                self._check_writable()
            if self.link.queued >= self.link.max_outbox:  # the link's writer is behind: wait for room
                if not self.link.room.wait(timeout=self.timeout):
                    raise socket.timeout("timed out waiting for the center link to take more")
                self._check_writable()
                continue
            n = min(len(view), self.credit, DATA_CHUNK)
            # bytes as they are when they fit (the relay's common case): no copy before the writer's
            piece = data if n == len(data) and isinstance(data, bytes) else bytes(view[:n])
            self.push(piece)
            view = view[n:]

    def push(self, data: bytes) -> None:
        """One DATA frame now, never waiting: the caller keeps ``len(data)`` within
        :attr:`credit` and DATA_CHUNK. Raises like :meth:`sendall`."""
        self._check_writable()
        self.link.send_frame(Kind.DATA, 0, self.sid, data)
        self.credit -= len(data)

    def send(self, data) -> int:
        self.sendall(data)
        return len(data)

    def send_datagram(self, data: bytes) -> bool:
        """A UDP datagram as one DATA frame, never split, never waiting: False (dropped, as
        UDP may) when it is empty, does not fit the window credit now, the link's outbox is
        full, or the stream is done."""
        if not data or len(data) > self.credit or self.link.queued >= self.link.max_outbox:
            return False
        try:
            self.push(bytes(data))
        except OSError:  # reset, closed for sending, or the link is gone
            return False
        return True

    def recv_datagram(self) -> bytes:
        """One DATA frame's body: a datagram sent with :meth:`send_datagram` (b'' at EOF)."""
        return self.recv(DATA_CHUNK)

    def _check_writable(self) -> None:
        if self.reset is not None:
            raise ConnectionResetError(f"stream {self.sid} reset: {self.reset}")
        if self.closed or self.sent_fin:
            raise BrokenPipeError(f"stream {self.sid} is closed for sending")

    def shutdown(self, how: int) -> None:
        """SHUT_WR (or RDWR): CLOSE+FIN, the far side reads EOF and may still send."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not (self.sent_fin or self.closed or self.reset):
            self.sent_fin = True
            self.link.send_frame(Kind.CLOSE, Flag.FIN, self.sid, fr.encode_close(""))

    def close(self, reason: str = "") -> None:
        """End the stream like closing a TCP socket: a FIN if none was sent yet (what the far
        side still sends is then refused). With a ``reason``, abort instead: CLOSE without FIN,
        carrying the reason (a failed CONNECT, say)."""
        if self.closed:
            return
        self.closed = True
        if self.reset is None:
            if reason:
                self.link.send_frame(Kind.CLOSE, 0, self.sid, fr.encode_close(reason), quiet=True)
            elif not self.sent_fin:
                self.link.send_frame(Kind.CLOSE, Flag.FIN, self.sid, fr.encode_close(""), quiet=True)
        self.sent_fin = True
        self.link.forget(self.sid)
        if self._credit_event is not None:
            self._credit_event.set()

    def abort(self, reason: str) -> None:
        """End the stream as a cut (CLOSE without FIN, carrying ``reason``), as a reset
        socket ends."""
        self.close(reason)

    def attach(self, sink) -> None:
        """Push mode, for good: the link's reader calls ``sink.data(body)``, ``sink.fin()``,
        ``sink.reset(reason)`` and ``sink.credit()`` (more window credit) as frames arrive,
        in the reader's greenlet, so the sink must not block. What arrived before is handed
        over at once, in order. The sink calls :meth:`consume` as it delivers bytes."""
        self.sink = sink
        queued = [self.pending] if self.pending else []
        self.pending = b""
        box, self._inbox = self._inbox, None
        while box is not None and box.qsize():
            queued.append(box.get_nowait())
        for item in queued:
            if item is _RESET:
                sink.reset(self.reset or "closed by the far side")
                return
            if not item:
                sink.fin()
                return
            sink.data(item)

    # -- fed by the link's reader ----------------------------------------------------------------
    def _on_data(self, body: bytes) -> None:
        if not self.closed and not self.got_fin:
            self.buffered += len(body)
            if self.buffered > self.window:
                raise ProtocolError(f"stream {self.sid}: {self.buffered} bytes sent beyond the "
                                    f"{self.window}-byte window (flow control violated)")
            if self.sink is not None:
                self.sink.data(body)
            else:
                self.inbox.put(body)

    def _on_window(self, credit: int) -> None:
        self.credit += credit
        if self.credit > self.link.max_window:  # more than the far end could ever have room for
            raise ProtocolError(f"stream {self.sid}: WINDOW credit {credit} takes the send window to {self.credit} "
                                f"bytes, over max_window ({self.link.max_window}; both ends must set the same)")
        if self.sink is not None:
            self.sink.credit()
        elif self._credit_event is not None:
            self._credit_event.set()

    def _on_close(self, fin: bool, reason: str) -> None:
        if fin:
            if self.got_fin:
                return
            self.got_fin = True
            if self.sink is not None:
                self.sink.fin()
            else:
                self.inbox.put(b"")
        elif self.reset is None:
            self.reset = reason or "closed by the far side"
            if self.sink is not None:
                self.sink.reset(self.reset)
            else:
                self.inbox.put(_RESET)
                if self._credit_event is not None:
                    self._credit_event.set()


class LinkClosed(Exception):
    pass


class CenterLink:
    """One established link (after the handshake). :meth:`run` serves it until it ends."""

    def __init__(self, sock, reader: Reader, *, is_client: bool, window: int, max_frame: int, heartbeat: float,
                 on_create: Callable[[VirtualConn, fr.CreateMode, str], None], name: str, max_window: int = 0,
                 on_mapping: Callable[[list], list] | None = None,
                 on_mapping_answer: Callable[[list], None] | None = None, max_outbox: int = MAX_OUTBOX) -> None:
        self.sock = sock
        self.reader = reader
        self.is_client = is_client
        self.window = window
        self.max_window = max(window, max_window)
        self.rtt: float | None = None  # measured by the first PING
        self._ping: tuple[bytes, float] | None = None  # the last PING sent and when
        self.max_frame = max_frame
        self.heartbeat = heartbeat
        self.on_create = on_create
        self.on_mapping = on_mapping  # server: a client's new MAPPING -> the answers
        self.on_mapping_answer = on_mapping_answer  # client: the server's MAPPING+ACK
        self.name = name
        self.streams: dict[int, VirtualConn] = {}
        self.outbox: Queue = Queue()  # bounded in bytes (queued, max_outbox), not in items
        self.queued = 0  # bytes in the outbox, not yet written
        self.max_outbox = max_outbox
        self.room = Event()  # set while the outbox has room for DATA
        self.room.set()
        self._waiting_room: set = set()  # push-mode sinks paused for room: credit() once there is
        self._overflowed = False  # the outbox passed twice its bound: the link is being closed
        self.handlers = Group()
        self.closed = False
        self.draining = False
        self.close_reason = ""
        self.started_at = time.time()
        self.last_rx = time.monotonic()
        self.bytes_in = 0
        self.bytes_out = 0
        self._next_id = 1 if is_client else 2
        try:
            self.local_address = sock.getsockname()
            self.peer_address = sock.getpeername()
        except OSError:
            self.local_address = self.peer_address = ("0.0.0.0", 0)

    # -- streams ---------------------------------------------------------------------------------
    def open_stream(self, mode: fr.CreateMode, target: str = "") -> VirtualConn:
        """A new stream asking the far end for ``mode``/``target``. Data may follow at once.
        Raises ConnectionResetError when the link is closed."""
        if self.closed:
            raise ConnectionResetError(f"center link {self.name} is closed")
        sid = self._allocate()
        vc = self.streams[sid] = VirtualConn(self, sid)
        self.send_frame(Kind.CREATE, 0, sid, fr.encode_create(mode, target))
        return vc

    def _allocate(self) -> int:
        for _ in range(1 << 23):
            sid = self._next_id
            self._next_id = (self._next_id + 2) & fr.MAX_SOCK_MAP
            if self._next_id == 0:
                self._next_id = 2
            if sid and sid not in self.streams:
                return sid
        raise ConnectionResetError("no free stream id on the link")

    def forget(self, sid: int) -> None:
        self.streams.pop(sid, None)
        if self.draining and not self.streams:
            gevent.spawn_later(0.05, self.close, "stopping: last stream done")

    def drain(self) -> None:
        """Take no new streams; close the link once the open ones are done."""
        self.draining = True
        if not self.streams:
            self.close("stopping")

    # -- sending -------------------------------------------------------------------------------
    def send_frame(self, kind: Kind, flag: int, sid: int, body: bytes = b"", quiet: bool = False) -> None:
        """Queue a frame for the writer. Raises ConnectionResetError once the link is closed
        (unless ``quiet``)."""
        if self.closed:
            if quiet:
                return
            raise ConnectionResetError(f"center link {self.name} is closed")
        self.outbox.put(fr.encode_header(len(body), kind, flag, sid))
        if body:
            self.outbox.put(body)  # joined with its header by the writer: one copy, not two
        self.queued += fr.HEADER_SIZE + len(body)
        if self.queued >= self.max_outbox:
            self.room.clear()
            if self.queued > 2 * self.max_outbox and not self._overflowed:  # control frames alone: it reads nothing
                self._overflowed = True
                gevent.spawn(self.close, f"the far end does not read: over {2 * self.max_outbox} bytes queued")

    def _writer(self) -> None:
        try:
            while True:
                batch = [self.outbox.get()]
                size = len(batch[0])
                while size < WRITE_BATCH:
                    try:
                        item = self.outbox.get_nowait()
                    except Empty:
                        break
                    batch.append(item)
                    size += len(item)
                self.sock.sendall(b"".join(batch) if len(batch) > 1 else batch[0])
                self.bytes_out += size
                self.queued -= size
                if not self.room.is_set() and self.queued < self.max_outbox >> 1:
                    self.room.set()
                    waiting, self._waiting_room = self._waiting_room, set()
                    for sink in waiting:
                        sink.credit()
        except OSError as e:
            self.close(f"write failed: {e}")

    def when_room(self, sink) -> None:
        """A push-mode relay paused because the outbox is full: ``sink.credit()`` is called
        once it has room again. Never blocks."""
        self._waiting_room.add(sink)

    @property
    def grow_within(self) -> float:
        """A stream's window grows when a quarter of it was taken within this many seconds
        of the previous grant."""
        return max(4 * (self.rtt if self.rtt is not None else 0.05), 0.01)

    def _send_ping(self) -> None:
        body = os.urandom(fr.PING_SIZE)
        self._ping = (body, time.monotonic())
        self.send_frame(Kind.PING, 0, 0, body, quiet=True)

    def _heartbeats(self) -> None:
        self._send_ping()  # at once: its answer measures the round trip
        while True:
            gevent.sleep(self.heartbeat)
            if time.monotonic() - self.last_rx > 3 * self.heartbeat:
                self.close(f"no frame for {3 * self.heartbeat:.0f}s (dead link)")
                return
            self._send_ping()

    # -- the reader ------------------------------------------------------------------------------
    def run(self) -> str:
        """Serve the link until it ends; returns why. Blocks; spawns the writer, the heartbeat
        and a greenlet per incoming stream, all killed before it returns; closes the socket."""
        self.sock.settimeout(None)
        helpers = [gevent.spawn(self._writer), gevent.spawn(self._heartbeats)]
        try:
            self._read_frames()
        except PeerClosed:
            self.close("the far end closed the link")
        except ProtocolError as e:
            log.warning("center link %s: protocol error: %s", self.name, e)
            self.send_frame(Kind.CLOSE, 0, 0, fr.encode_close(str(e)), quiet=True)
            gevent.sleep(0.05)  # let the writer try to tell the far end why
            self.close(f"protocol error: {e}")
        except LinkClosed as e:
            self.close(f"closed by the far end: {e}")
        except OSError as e:
            self.close(f"read failed: {e.strerror or e}")
        finally:
            self.close(self.close_reason or "stopped")
            gevent.killall(helpers)
            self.handlers.kill(block=False)
        return self.close_reason

    def _read_frames(self) -> None:
        """Read and dispatch frames until the link ends. Each frame is exactly 8 header bytes,
        then exactly ``length`` body bytes (read_frame's rules: a header is checked before its
        body is waited for, EOF inside a frame is a ProtocolError, EOF between frames
        PeerClosed), but the bytes come by ``recv_into`` a kept buffer and every whole frame in
        it is handled before the next recv: one syscall and one copy (the body's) for several
        DATA frames. DATA and WINDOW, the frames of a transfer, go to their stream inline."""
        sock, streams, max_body, unpack = self.sock, self.streams, self.max_frame, fr.HEADER_STRUCT.unpack_from
        kernel = kernel_socket(sock)
        recv_into = kernel.recv_into if kernel is not None else sock.recv_into
        wait_readable = read_waiter(sock)
        buf = bytearray(READ_BUFFER)
        mv = memoryview(buf)
        pending = self.reader.take_pending()  # what came after the handshake
        start, end = 0, len(pending)
        buf[:end] = pending
        need = fr.HEADER_SIZE  # bytes from ``start`` the next step waits for
        while not self.closed:
            while end - start >= need:
                first, second = unpack(buf, start)
                length, kind, sid = first >> 8, first & 0xFF, second & 0xFFFFFF
                if end - start < fr.HEADER_SIZE + length:
                    if length > max_body or kind not in _KINDS:
                        fr.decode_header(bytes(mv[start:start + fr.HEADER_SIZE]), max_body)  # raises
                    need = fr.HEADER_SIZE + length
                    break
                body, start = start + fr.HEADER_SIZE, start + fr.HEADER_SIZE + length
                need = fr.HEADER_SIZE
                if kind == Kind.DATA and length <= max_body:
                    vc = streams.get(sid)
                    if vc is not None:
                        vc._on_data(bytes(mv[body:start]))
                    elif sid:  # like TCP's RST for data to a closed socket: the sender stops waiting
                        self.send_frame(Kind.CLOSE, 0, sid, fr.encode_close("stream closed"), quiet=True)
                elif kind == Kind.WINDOW and length == 4:
                    vc = streams.get(sid)
                    if vc is not None:
                        vc._on_window(int.from_bytes(mv[body:start], "big"))
                else:
                    k = fr.decode_header(bytes(mv[body - fr.HEADER_SIZE:body]), max_body)[1]
                    self._dispatch(fr.Frame(k, second >> 24, sid, bytes(mv[body:start])))
                    if self.closed:
                        return
            if start == end:
                start = end = 0
            elif start + need > len(buf):  # make room: the partial frame to the front, or a bigger buffer
                rest = bytes(mv[start:end])
                if need > len(buf):
                    mv.release()
                    buf = bytearray(max(need, READ_BUFFER))
                    mv = memoryview(buf)
                buf[:len(rest)] = rest
                start, end = 0, len(rest)
            try:
                n = recv_into(mv[end:])
            except BlockingIOError:  # a plain socket with nothing yet: wait for it
                wait_readable()
                continue
            if not n:
                if start != end:
                    raise ProtocolError("link closed in the middle of a frame")
                raise PeerClosed("the far end closed the link")
            end += n
            self.last_rx = time.monotonic()
            self.bytes_in += n

    def _dispatch(self, f: fr.Frame) -> None:
        kind, sid = f.kind, f.sock_map
        if kind == Kind.DATA:
            vc = self.streams.get(sid)
            if vc is not None:
                vc._on_data(f.body)
            elif sid:  # like TCP's RST for data to a closed socket: the sender stops waiting
                self.send_frame(Kind.CLOSE, 0, sid, fr.encode_close("stream closed"), quiet=True)
        elif kind == Kind.WINDOW:
            vc = self.streams.get(sid)
            if vc is not None:
                vc._on_window(fr.decode_window(f.body))
        elif kind == Kind.CLOSE:
            if sid == 0:
                raise LinkClosed(fr.decode_close(f.body) or "no reason given")
            vc = self.streams.get(sid)
            if vc is not None:
                vc._on_close(bool(f.flag & Flag.FIN), fr.decode_close(f.body))
        elif kind == Kind.CREATE:
            if f.flag & Flag.ACK:
                return  # the far end reached the target; data may already be flowing
            mode, target = fr.decode_create(f.body)
            if sid == 0:  # CLOSE(0) would close the link (PROTOCOL.md): this is a protocol error
                raise ProtocolError("CREATE with stream id 0")
            if sid in self.streams or (sid % 2 == 1) == self.is_client:
                self.send_frame(Kind.CLOSE, 0, sid, fr.encode_close("bad stream id"), quiet=True)
                return
            if self.draining:
                self.send_frame(Kind.CLOSE, 0, sid, fr.encode_close("server stopping"), quiet=True)
                return
            vc = self.streams[sid] = VirtualConn(self, sid)
            self.handlers.spawn(self._serve_stream, vc, mode, target)
        elif kind == Kind.PING:
            body = fr.decode_ping(f.body)
            if not f.flag & Flag.ACK:
                self.send_frame(Kind.PING, Flag.ACK, 0, body, quiet=True)
            elif self._ping is not None and body == self._ping[0]:
                self.rtt = time.monotonic() - self._ping[1]
                self._ping = None
        elif kind == Kind.MAPPING:  # after the handshake: a client's changed mappings (reload)
            if f.flag & Flag.ACK:
                if self.on_mapping_answer is not None:
                    self.on_mapping_answer(fr.decode_mapping_answers(f.body))
                return
            specs = fr.decode_mappings(f.body)
            if self.on_mapping is not None:
                answers = self.on_mapping(specs)
            else:
                answers = [fr.MappingAnswer(m.name, False, "this end publishes no mappings") for m in specs]
            self.send_frame(Kind.MAPPING, Flag.ACK, 0, fr.encode_mapping_answers(answers), quiet=True)
        else:
            raise ProtocolError(f"{kind.name} frame after the handshake")

    def _serve_stream(self, vc: VirtualConn, mode: fr.CreateMode, target: str) -> None:
        try:
            self.on_create(vc, mode, target)
        except ConnectionError as e:  # the stream or the link ended under its handler: no bug
            log.debug("center link %s: stream %d ended while being served: %s", self.name, vc.sid, e)
            vc.close()
        except Exception:
            log.exception("center link %s: internal error serving stream %d", self.name, vc.sid)
            vc.close()
        finally:
            if vc.sink is None:  # else a relay run by callbacks owns it now
                vc.close()

    def close(self, reason: str) -> None:
        """End the link: every stream is reset at once, the socket closed. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.room.set()  # senders waiting for room wake up and find their streams reset
        self._waiting_room.clear()
        for vc in list(self.streams.values()):
            vc._on_close(False, f"center link closed: {reason}")
        self.streams.clear()
        try:
            self.sock.close()
        except OSError:
            pass

    @property
    def stream_count(self) -> int:
        return len(self.streams)
