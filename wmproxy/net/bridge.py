"""Relays with no greenlet, driven by libev watcher callbacks (see also net/splice.py).

relay() parks a greenlet per direction on each end of a tunnel; a parked greenlet keeps its
saved C stack and a CPython data-stack page, about 8 KiB, and a tunnel's objects come on top.
A proxy with thousands of idle tunnels spends most of its memory there. These relays keep a
few small objects per tunnel instead. Here: what they share (:class:`CallbackRelay`) and
:class:`StreamSocketRelay`, a push-mode stream (a center link's VirtualConn) and a kernel socket::

    kernel socket --(read watcher: recv up to the stream's credit)--> stream.push()
    kernel socket <--(send now; the rest waits for a write watcher)-- sink.data() from the link

Flow control keeps memory bounded without a queue: the socket is read only as far as the
stream's window credit goes (the read watcher stops at zero and starts again on WINDOW), and
the stream's window is given back (``stream.consume``) only for bytes the socket took, so the
far end never has more than one window in flight towards a slow socket.

Semantics match relay(): half-close passed through (EOF one way shuts down the other side's
write half), an error on either side ends both, an idle timeout, byte counters, both ends
closed when done. Callbacks run in the event loop or the link's reader greenlet; none blocks
and none raises for a peer's error.
"""

from __future__ import annotations

import logging
import _socket
import socket
from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Optional

from gevent import get_hub

from .idle import Watch
from .writer import close_quietly

if TYPE_CHECKING:
    from .relay import RelayStats

log = logging.getLogger("wmproxy")

CHUNK = 65536
GATHER = 64  # buffers per sendmsg (IOV_MAX is 1024)
READS_PER_CALL = 8  # reads (or pipes) from one socket per callback before the loop serves the others


class CallbackRelay(Watch):
    """What both relays share: counters, the idle watch (the relay is its own: net.idle.Watch),
    the end (once) and ``on_done``."""

    __slots__ = ("stats", "on_done", "done", "cut", "release")

    def __init__(self, stats: RelayStats, on_done: Callable[[RelayStats], None]) -> None:
        self.stats = stats
        self.on_done = on_done
        self.done = False
        self.cut = False  # a side was reset: the other is reset too when the relay ends (RST, not FIN)
        # called as it ends, before on_done: frees the slot of whoever adopted it (relay_then)
        self.release: Optional[Callable[[], None]] = None

    def __call__(self) -> None:
        """Calling a relay stops it (what a listener that adopted it calls past a drain's grace:
        the relay itself, not a bound method kept per idle tunnel)."""
        self.stop()

    def _watch_idle(self, idle_timeout: float | None) -> None:
        if idle_timeout:
            self.arm(idle_timeout)

    def progress(self) -> int:
        moved = self.stats.moved
        return moved[0] + moved[1]

    def on_idle(self) -> None:
        self._finish("idle")

    def start(self, idle_timeout: float | None) -> None:
        """Begin relaying (from the event loop from now on)."""
        raise NotImplementedError

    def stop(self, reason: str = "stopped") -> None:
        """End now (a drain past its grace period, say): both ends closed."""
        self._finish(reason)

    def _fail(self, e: OSError) -> None:
        if isinstance(e, ConnectionResetError):
            self.cut = True
        self._finish(f"error: {e}")

    def _release(self) -> None:
        raise NotImplementedError

    def _finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        if self.stats.reason == "eof":
            self.stats.reason = reason
        self.kill()  # (its idle watch)
        self._release()
        try:
            if self.release is not None:
                self.release()
            self.on_done(self.stats)
        except Exception:  # our bug: logged; the loop goes on
            log.exception("relay end callback failed")


class StreamSocketRelay(CallbackRelay):
    """Relays ``stream`` <-> ``sock`` until both directions end, then closes both and calls
    ``on_done(stats)``. ``sock`` is a non-blocking kernel socket the bridge owns. Build it,
    then :meth:`start`; :meth:`stop` ends it early."""

    __slots__ = ("stream", "sock", "up", "down", "rd", "wr", "to_stream", "to_sock", "preconsumed", "fin_pending",
                 "up_open", "down_open")

    def __init__(self, stream: Any, sock: _socket.socket, stats: RelayStats, sock_is_a: bool,
                 on_done: Callable[[RelayStats], None], to_stream: bytes = b"", to_sock: bytes = b"") -> None:
        super().__init__(stats, on_done)
        self.stream = stream
        self.sock = sock
        self.up, self.down = (0, 1) if sock_is_a else (1, 0)  # stats.moved slots: socket->stream, back
        self.rd = get_hub().loop.io(sock.fileno(), 1)
        self.wr: Any = None  # made the first time the socket's buffer is full (most tunnels never)
        self.to_stream = to_stream  # read from the socket, waiting for window credit
        # waiting for the socket
        self.to_sock: deque[bytes | memoryview] | None = deque((memoryview(to_sock),)) if to_sock else None
        self.preconsumed = len(to_sock)  # its first bytes the stream counted as taken already (recv)
        self.fin_pending = False  # the stream ended: shut the socket's write side once to_sock is out
        self.up_open = self.down_open = True

    def start(self, idle_timeout: float | None) -> None:
        """Start relaying (``to_stream``/``to_sock``: bytes read early from one side for the
        other, sent first). Never blocks."""
        self._watch_idle(idle_timeout)
        if self.to_sock is not None:
            self._wait_writable()
        self.stream.attach(self)  # what the stream got before now comes through data()/fin()
        if not self.done:
            self.credit()

    # -- socket -> stream ---------------------------------------------------------------------------
    def credit(self) -> None:
        """The stream may send more (called by the stream on WINDOW): read the socket again."""
        if self.done or not self.up_open:
            return
        if self.to_stream and not self._push_pending():
            return
        if not self.rd.active:
            self.rd.start(self._readable)

    def _push_pending(self) -> bool:
        """Push what waits for credit, as far as the credit goes; True once all of it went."""
        while self.to_stream and (n := min(len(self.to_stream), self.stream.credit, CHUNK)) > 0:
            try:
                self.stream.push(self.to_stream[:n])
            except OSError as e:
                self._finish(f"error: {e}")
                return False
            self.to_stream = self.to_stream[n:]
            self.stats.moved[self.up] += n
        return not self.to_stream

    def _readable(self) -> None:
        # read on while there are bytes and credit (up to a window a call): the link's writer
        # then sends them in one batch, as a pump greenlet's loop would have queued them
        stream, moved = self.stream, self.stats.moved
        link = stream.link
        for _ in range(READS_PER_CALL):
            credit = stream.credit
            if credit <= 0:
                self.rd.stop()  # credit() starts it again
                return
            if link.queued >= link.max_outbox:  # the link's writer is behind: read no more for now
                self.rd.stop()
                link.when_room(self)
                return
            try:
                data = self.sock.recv(min(CHUNK, credit))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._finish(f"error: {e}")
                return
            if not data:
                self.rd.stop()
                self.up_open = False
                try:
                    stream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._maybe_done()
                return
            try:
                stream.push(data)
            except OSError as e:
                self._finish(f"error: {e}")
                return
            moved[self.up] += len(data)
            if len(data) < CHUNK:
                return  # the socket is drained for now

    # -- stream -> socket (the stream's sink) -------------------------------------------------------
    def data(self, body: bytes) -> None:
        if self.done:
            return
        if self.to_sock is not None:
            self.to_sock.append(body)
            return
        try:
            sent = self.sock.send(body)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self._finish(f"error: {e}")
            return
        if sent:
            self._sent(sent)
        if sent < len(body):
            self.to_sock = deque((memoryview(body)[sent:],))  # kept, not copied, till the socket takes it
            self._wait_writable()

    def _wait_writable(self) -> None:
        if self.wr is None:
            self.wr = get_hub().loop.io(self.sock.fileno(), 2)
        self.wr.start(self._writable)

    def _writable(self) -> None:
        queue = self.to_sock
        if queue is None:
            return
        try:  # everything waiting in one gathering syscall, as much as the socket takes
            sent = self.sock.sendmsg(queue if len(queue) <= GATHER else list(islice(queue, GATHER)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._finish(f"error: {e}")
            return
        self._sent(sent)
        while sent:
            head = queue[0]
            if len(head) > sent:
                queue[0] = memoryview(head)[sent:]
                break
            sent -= len(head)
            queue.popleft()
        if not queue:
            self.to_sock = None
            self.wr.stop()
            if self.fin_pending:
                self._sock_eof()

    def _sent(self, n: int) -> None:
        self.stats.moved[self.down] += n
        if self.preconsumed:  # window credit only for bytes the stream handed us
            skip = min(n, self.preconsumed)
            self.preconsumed -= skip
            n -= skip
            if not n:
                return
        try:
            self.stream.consume(n)
        except OSError:  # the link is gone: its reset ends us
            pass

    def fin(self) -> None:
        if self.done:
            return
        if self.to_sock is not None:
            self.fin_pending = True
        else:
            self._sock_eof()

    def _sock_eof(self) -> None:
        self.down_open = False
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._maybe_done()

    def reset(self, reason: str) -> None:
        self.cut = True
        self._finish(f"error: {reason}")

    # -- the end ------------------------------------------------------------------------------------
    def _maybe_done(self) -> None:
        if not self.up_open and not self.down_open:
            self._finish("eof")

    def _release(self) -> None:
        for watcher in (self.rd, self.wr):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self.to_sock = None
        close_quietly(self.sock, self.cut)  # a cut looks like a cut: RST, not FIN
        close_quietly(self.stream)
