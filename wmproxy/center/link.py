"""CenterLink: many virtual TCP connections over one socket (docs/PROTOCOL.md); the streams
themselves are :class:`~.vconn.VirtualConn` (vconn.py).

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
import mmap
import os
import socket
import time
from collections import deque
from typing import Callable, Optional

import gevent
from gevent.event import Event
from gevent.pool import Group

from ..errors import ProtocolError
from ..net.conn import Address, Data, StreamSink
from ..net.gevent_io import kernel_socket, nonblocking_sender, read_waiter, send_all
from ..net.limits import LOG_EVERY
from ..net.reader import PeerClosed, Reader
from ..prot import frame as fr
from ..prot.frame import Flag, Kind
from .vconn import VirtualConn

log = logging.getLogger("wmproxy.center")

WRITE_BATCH = 262144
MAX_OUTBOX = 8 << 20  # bytes queued for the link's writer: DATA sources pause beyond it
MAPPING_EVERY = 1.0  # seconds: a far end's MAPPING updates are applied this often at most (the latest wins)
MAX_STREAMS = 10000  # streams the far end may have open at once ([center] max_streams; 0: no bound)
READ_BUFFER = 262144  # the link reader's kept buffer: several DATA frames per recv


def read_buffer(size: int = READ_BUFFER) -> mmap.mmap:
    """The link reader's buffer: an anonymous private mapping, whose pages take memory only
    once bytes were read into them (a bytearray's are all written at once: 256 KiB for every
    link, a busy one or not)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


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


class LinkClosed(Exception):
    pass


class StreamBudget:
    """How many streams the far end of one or more links may have open at once here
    (``max_streams``, 0: no bound): a link's own, or, on a center server, one shared by every link of an
    account (of an address, without accounts), so that more links do not bring more streams.
    A stream holds its slot until it is done here, its handler included: a far end that resets
    its streams at once (HTTP/2's rapid reset) still has at most ``limit`` being served."""

    __slots__ = ("limit", "used", "links", "refused", "_logged_at", "_flush")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.links = 0  # links sharing it (a center server forgets it with the last)
        self.refused = 0  # CREATEs past the limit not yet in a log line
        self._logged_at = 0.0
        self._flush: Optional[gevent.Greenlet] = None

    def refuse(self, label: str) -> None:
        """Count a refused stream: one log line a second at most, each refusal in one."""
        self.refused += 1
        if time.monotonic() - self._logged_at >= LOG_EVERY:
            self._log(label)
        elif self._flush is None:
            self._flush = gevent.spawn_later(LOG_EVERY, self._log, label)

    def _log(self, label: str) -> None:
        self._flush = None
        if self.refused:
            log.warning("center link %s: refused %d stream(s): the far end has max_streams (%d) open", label,
                        self.refused, self.limit)
            self.refused, self._logged_at = 0, time.monotonic()


class CenterLink:
    """One established link (after the handshake). :meth:`run` serves it until it ends."""

    def __init__(self, sock: socket.socket, reader: Reader, *, is_client: bool, window: int, max_frame: int,
                 heartbeat: float,
                 on_create: Callable[[VirtualConn, fr.CreateMode, str], None], name: str, max_window: int = 0,
                 on_mapping: Callable[[list], list] | None = None,
                 on_mapping_answer: Callable[[list], None] | None = None, max_outbox: int = MAX_OUTBOX,
                 max_streams: int = MAX_STREAMS, budget: StreamBudget | None = None) -> None:
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
        self.user = ""  # the account the far side proved (the center server sets it)
        self.client_id = ""  # the id the far side gave (a center server's link; '' from a client before ids)
        self.holder = ""  # a center server's link: whose it is, 'account#id' (or 'account@address')
        self.owner = ""  # its account, or its address for an account-less server (the logs' name)
        self.streams: dict[int, VirtualConn] = {}
        self.outbox: deque[Data] = deque()  # bounded in bytes (queued, max_outbox), not in items
        self.queued = 0  # bytes in the outbox, not yet written
        self._rest: Data = b""  # what a flush in the hub could not write: the writer's first
        self._busy = False  # the writer greenlet is sending: new frames wait in the outbox for it
        self._armed = False  # a flush is scheduled in the hub
        self._wake = Event()  # the writer greenlet has work
        self._send_now = nonblocking_sender(sock)  # None: every write by the writer greenlet
        self._loop = gevent.get_hub().loop
        self.max_outbox = max_outbox
        self.room = Event()  # set while the outbox has room for DATA
        self.room.set()
        self._waiting_room: set = set()  # push-mode sinks paused for room: credit() once there is
        self._overflowed = False  # the outbox passed twice its bound: the link is being closed
        self.handlers = Group()
        self.budget = budget if budget is not None else StreamBudget(max_streams)
        self.closed = False
        self.draining = False
        self.close_reason = ""
        self.started_at = time.time()
        self.peer_aware = False  # the far end reads a visitor's address on CREATE (its handshake said PEER)
        self.last_rx = time.monotonic()
        self.bytes_in = 0
        self.bytes_out = 0
        self._quiet = False  # little came in over a heartbeat: the reader's buffer may give its pages back
        self._mapping: fr.Frame | None = None  # the far end's latest MAPPING, not applied yet
        self._mapping_next = 0.0  # when the next MAPPING may be applied (monotonic)
        self._mapping_timer: gevent.Greenlet | None = None
        self._rate_mark = (time.monotonic(), 0)  # (when, bytes both ways then): see read_rate
        self._rate = -1.0  # (none given yet)
        self._next_id = 1 if is_client else 2
        try:
            self.local_address = sock.getsockname()
            self.peer_address = sock.getpeername()
        except OSError:
            self.local_address = self.peer_address = ("0.0.0.0", 0)

    # -- streams ---------------------------------------------------------------------------------
    def open_stream(self, mode: fr.CreateMode, target: str = "", visitor: Optional[tuple[Address, Address]] = None
                    ) -> VirtualConn:
        """A new stream asking the far end for ``mode``/``target``; ``visitor``: the (client,
        reached) addresses of the connection it carries, told to a far end that reads them
        (``peer_aware``). Data may follow at once. Raises ConnectionResetError when the link
        is closed."""
        if self.closed:
            raise ConnectionResetError(f"center link {self.name} is closed")
        sid = self._allocate()
        vc = self.streams[sid] = VirtualConn(self, sid)
        if visitor is not None and self.peer_aware:
            told = (fr.format_endpoint(*visitor[0][:2]), fr.format_endpoint(*visitor[1][:2]))
            self.send_frame(Kind.CREATE, Flag.PEER, sid, fr.encode_create(mode, target, told))
        else:
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
        if self.streams.pop(sid, None) is not None and (sid & 1) != self.is_client:
            self.budget.used -= 1  # (one the far end opened: its slot of max_streams is free again)
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
        outbox = self.outbox
        outbox.append(fr.encode_header(len(body), kind, flag, sid))
        if body:
            outbox.append(body)  # joined with its header when written: one copy, not two
        self.queued += fr.HEADER_SIZE + len(body)
        if not (self._busy or self._armed):
            self._armed = True
            if self._send_now is not None:  # written once this turn of the loop is done, by the hub
                self._loop.run_callback(self._flush)
            else:
                self._wake.set()
        if self.queued >= self.max_outbox:
            self.room.clear()
            if self.queued > 2 * self.max_outbox and not self._overflowed:  # control frames alone: it reads nothing
                self._overflowed = True
                gevent.spawn(self.close, f"the far end does not read: over {2 * self.max_outbox} bytes queued")

    def _batch(self) -> Data:
        """The next write: the outbox's frames up to WRITE_BATCH bytes, joined."""
        outbox = self.outbox
        first = outbox.popleft()
        if not outbox:
            return first
        batch, size = [first], len(first)
        while outbox and size < WRITE_BATCH:
            item = outbox.popleft()
            batch.append(item)
            size += len(item)
        return b"".join(batch)

    def _flush(self) -> None:
        """Write what the frames of this turn of the loop queued, in the hub, without waiting:
        no switch to the writer greenlet and back for a small request's frames. What does not
        go at once (a full socket buffer, TLS wanting to write again) is the writer's. Never
        raises (it runs in the hub)."""
        self._armed = False
        if self._busy or self.closed or not self.outbox:
            return
        if not self.room.is_set():  # the outbox was full: the writer also wakes the paused sources
            self._busy = True
            self._wake.set()
            return
        data = self._batch()
        try:
            sent = self._send_now(data)  # type: ignore[misc]
        except OSError as e:
            gevent.spawn(self.close, f"write failed: {e}")
            return
        self.bytes_out += sent
        self.queued -= sent
        if sent < len(data) or self.outbox:
            self._rest = memoryview(data)[sent:] if sent else data  # (TLS: 0, the same bytes again)
            self._busy = True
            self._wake.set()

    def _writer(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                self._busy = True
                while True:
                    if self._rest:
                        data, self._rest = self._rest, b""
                    elif self.outbox:
                        data = self._batch()
                    else:
                        break
                    # one send, and gevent's sendall (a timer and an SO_SNDBUF query a call) only for a rest
                    send_all(self.sock, data)
                    self.bytes_out += len(data)
                    self.queued -= len(data)
                    if not self.room.is_set() and self.queued < self.max_outbox >> 1:
                        self.room.set()
                        waiting, self._waiting_room = self._waiting_room, set()
                        for sink in waiting:
                            sink.credit()
                self._busy = self._armed = False
        except OSError as e:
            self.close(f"write failed: {e}")

    def when_room(self, sink: StreamSink) -> None:
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
        seen = self.bytes_in
        while True:
            gevent.sleep(self.heartbeat)
            if time.monotonic() - self.last_rx > 3 * self.heartbeat:
                self.close(f"no frame for {3 * self.heartbeat:.0f}s (dead link)")
                return
            self._quiet = self.bytes_in - seen < READ_BUFFER  # (the reader then starts a fresh buffer)
            seen = self.bytes_in
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
            self._protocol_error(e)
        except LinkClosed as e:
            self.close(f"closed by the far end: {e}")
        except OSError as e:
            self.close(f"read failed: {e.strerror or e}")
        finally:
            self.close(self.close_reason or "stopped")
            gevent.killall(helpers)
            if self._mapping_timer is not None:
                self._mapping_timer.kill(block=False)
            self.handlers.kill(block=False)
        return self.close_reason

    def _read_frames(self) -> None:
        """Read and dispatch frames until the link ends. Each frame is exactly 8 header bytes,
        then exactly ``length`` body bytes (read_frame's rules: a header is checked before its
        body is waited for, EOF inside a frame is a ProtocolError, EOF between frames
        PeerClosed), but the bytes come by ``recv_into`` a kept buffer and every whole frame in
        it is handled before the next recv: one syscall and one copy (the body's) for several
        DATA frames. The frames are found by prot.frame.scan_frames (the decoder the tests fuzz);
        DATA and WINDOW, the frames of a transfer, go to their stream inline."""
        sock, streams, max_body, scan = self.sock, self.streams, self.max_frame, fr.scan_frames
        kernel = kernel_socket(sock)
        recv_into = kernel.recv_into if kernel is not None else sock.recv_into
        wait_readable = read_waiter(sock)
        buf = read_buffer()
        mv = memoryview(buf)
        pending = self.reader.take_pending()  # what came after the handshake
        start, end = 0, len(pending)
        buf[:end] = pending
        need = fr.HEADER_SIZE  # bytes from ``start`` the next step waits for
        while not self.closed:
            if end - start >= need:
                frames, start, need = scan(buf, start, end, max_body)  # (raises for a bad header)
                for kind, flag, sid, body, stop in frames:
                    if kind == Kind.DATA:
                        vc = streams.get(sid)
                        if vc is not None:
                            vc._on_data(bytes(mv[body:stop]))
                        elif sid:  # like TCP's RST for data to a closed socket: the sender stops waiting
                            self.send_frame(Kind.CLOSE, 0, sid, fr.encode_close("stream closed"), quiet=True)
                    elif kind == Kind.WINDOW and stop - body == 4:
                        vc = streams.get(sid)
                        if vc is not None:
                            vc._on_window(int.from_bytes(mv[body:stop], "big"))
                    else:
                        self._dispatch(fr.Frame(Kind(kind), flag, sid, bytes(mv[body:stop])))
                        if self.closed:
                            return
            if start == end:
                start = end = 0
                if self._quiet:  # (the heartbeat saw little come in): give back the pages a burst took
                    self._quiet = False
                    mv.release()
                    buf = read_buffer()
                    mv = memoryview(buf)
            elif start + need > len(buf):  # make room: the partial frame to the front, or a bigger buffer
                rest = bytes(mv[start:end])
                if need > len(buf):
                    mv.release()
                    buf = read_buffer(max(need, READ_BUFFER))
                    mv = memoryview(buf)
                buf[:len(rest)] = rest
                start, end = 0, len(rest)
            try:
                n = recv_into(mv[end:])
            except BlockingIOError:  # a plain socket with nothing yet: wait for it
                if wait_readable is None:
                    raise
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
            mode, target, visitor = fr.decode_create(f.body, bool(f.flag & Flag.PEER))
            if sid == 0:  # CLOSE(0) would close the link (PROTOCOL.md): this is a protocol error
                raise ProtocolError("CREATE with stream id 0")
            if sid in self.streams or (sid % 2 == 1) == self.is_client:
                self.send_frame(Kind.CLOSE, 0, sid, fr.encode_close("bad stream id"), quiet=True)
                return
            if self.draining:
                self.send_frame(Kind.CLOSE, 0, sid, fr.encode_close("server stopping"), quiet=True)
                return
            budget = self.budget
            if budget.used >= budget.limit and budget.limit:  # (HTTP/2's REFUSED_STREAM: the link goes on)
                self.send_frame(Kind.CLOSE, 0, sid, fr.encode_close(f"too many streams (max_streams {budget.limit})"),
                                quiet=True)
                budget.refuse(self.name)
                return
            budget.used += 1
            vc = self.streams[sid] = VirtualConn(self, sid)
            vc.visitor = visitor
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
            self._mapping = f  # (one that came before and waits is replaced unread: only the latest counts)
            if self._mapping_timer is None:
                wait = self._mapping_next - time.monotonic()
                if wait <= 0:
                    self._apply_mapping()
                else:
                    self._mapping_timer = gevent.spawn_later(wait, self._apply_mapping_later)
        else:
            raise ProtocolError(f"{kind.name} frame after the handshake")

    def _apply_mapping(self) -> None:
        """The far end's latest MAPPING: its mappings published, the answers sent. What the
        next one may cost is bounded: it waits MAPPING_EVERY, or ten times what this one took
        (a client sending a MAPPING of 30,000 mappings again and again takes a tenth of the
        loop at most, not all of it). Raises ProtocolError for a malformed one."""
        f, self._mapping = self._mapping, None
        assert f is not None  # (set before every call: by the reader, or before its timer was armed)
        started = time.monotonic()
        specs = fr.decode_mappings(f.body, bool(f.flag & Flag.ID))
        if self.on_mapping is not None:
            answers = self.on_mapping(specs)
        else:
            answers = [fr.MappingAnswer(m.name, False, "this end publishes no mappings") for m in specs]
        self.send_frame(Kind.MAPPING, Flag.ACK, 0, fr.encode_mapping_answers(answers), quiet=True)
        now = time.monotonic()
        self._mapping_next = now + max(MAPPING_EVERY, 10 * (now - started))

    def _apply_mapping_later(self) -> None:
        self._mapping_timer = None
        if self.closed:
            return
        try:
            self._apply_mapping()
        except ProtocolError as e:
            self._protocol_error(e)
        except Exception:  # our bug: as one in the reader's greenlet, the link ends and the process goes on
            log.exception("center link %s: internal error applying its MAPPING", self.name)
            self.close("internal error")

    def _protocol_error(self, e: ProtocolError) -> None:
        log.warning("center link %s: protocol error: %s", self.name, e)
        self.send_frame(Kind.CLOSE, 0, 0, fr.encode_close(str(e)), quiet=True)
        self.close_reason = f"protocol error: {e}"  # (what the link ends with, even if the far end closes first)
        gevent.sleep(0.05)  # let the writer try to tell the far end why
        self.close(self.close_reason)

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
        self.close_reason = self.close_reason or reason
        self.room.set()  # senders waiting for room wake up and find their streams reset
        self._waiting_room.clear()
        for vc in list(self.streams.values()):
            vc._on_close(False, f"center link closed: {reason}")
        # (the far end's streams give their slots back at once: their handlers are being killed)
        self.budget.used -= sum(1 for sid in self.streams if (sid & 1) != self.is_client)
        self.streams.clear()
        try:
            self.sock.close()
        except OSError:
            pass

    def read_rate(self) -> float:
        """Bytes a second both ways since the reading before, if that was a second ago or more
        (else the figure it gave), or since the link began: readers polling every few seconds
        (the dashboard) see the rate of the last few seconds."""
        now, total = time.monotonic(), self.bytes_in + self.bytes_out
        then, before = self._rate_mark
        if now - then >= 1.0 or self._rate < 0:
            self._rate = (total - before) / max(0.001, now - then)
            self._rate_mark = (now, total)
        return self._rate

    @property
    def stream_count(self) -> int:
        return len(self.streams)
