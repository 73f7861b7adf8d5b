"""VirtualConn: one stream of a center link (link.py), used like a connected socket.

It takes what the far end sends in one of two ways: a greenlet waits in :meth:`VirtualConn.recv`
on the stream's queue, or (push mode, :meth:`VirtualConn.attach`) the link's reader hands every
event to a sink at once (net.bridge). What it sends goes through the link's writer, within the
credit the far end granted (flow control: link.py's docstring).
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

from gevent.event import Event
from gevent.queue import Empty, Queue

from ..errors import ProtocolError
from ..net.conn import Address, Data, StreamSink
from ..prot import frame as fr
from ..prot.frame import Flag, Kind

if TYPE_CHECKING:
    from .link import CenterLink

DATA_CHUNK = 65536
_RESET = object()  # in a stream's inbox: the stream was aborted


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
                 "buffered", "sent_fin", "got_fin", "reset", "closed", "timeout", "sink", "visitor")

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
        self.sink: StreamSink | None = None  # push mode: gets data(body), fin(), reset(reason), credit()
        #: the (client, reached) addresses of the connection it carries, when the far end said (CREATE+PEER)
        self.visitor: tuple[tuple[str, int], tuple[str, int]] | None = None

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

    def setsockopt(self, *args: object) -> None:
        pass

    def getsockname(self) -> Address:
        return self.link.local_address

    def getpeername(self) -> Address:
        return self.link.peer_address

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; b'' once the far side half-closed. Raises socket.timeout,
        ConnectionResetError when the stream or the link was aborted."""
        if self.pending:
            chunk, self.pending = self.pending[:n], self.pending[n:]
            self.consume(len(chunk))
            return chunk
        try:  # (without a timeout: no gevent Timeout made and stopped for each read)
            chunk = self.inbox.get() if self.timeout is None else self.inbox.get(timeout=self.timeout)
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

    def arrived(self) -> bool:
        """Whether anything the far end sent (bytes, its FIN or a reset) waits untaken."""
        return bool(self.pending) or (self._inbox is not None and self._inbox.qsize() > 0)

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

    def sendall(self, data: Data) -> None:
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

    def send(self, data: Data) -> int:
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

    def attach(self, sink: StreamSink) -> None:
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
