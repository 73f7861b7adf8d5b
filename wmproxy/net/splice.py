"""SpliceRelay: two kernel sockets relayed with ``splice(2)`` on libev callbacks, no greenlet.

Each direction moves through a pipe of its own (zero copy: the bytes never reach Python),
made when its first byte comes, with a buffer instead where the kernel refuses splice. The
source is read only once what was read before is out, so a slow destination holds at most one
pipe; while the destination is full its write watcher waits and the source's read watcher is
stopped. The rest (half-close, errors, idle timeout, counters, the end) as in net/bridge.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import _socket
import socket
from typing import TYPE_CHECKING, Any, Callable

from gevent import get_hub

from .writer import close_quietly
from .bridge import CHUNK, READS_PER_CALL, CallbackRelay

if TYPE_CHECKING:
    from .relay import RelayStats

PIPE_SIZE = 1 << 20
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
HAVE_SPLICE = hasattr(os, "splice")
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_NO_SPLICE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)  # this pair of files cannot splice


def make_pipe() -> tuple[int, int]:
    """A non-blocking pipe for splicing, as large as the kernel allows up to PIPE_SIZE."""
    rpipe, wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(wpipe, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
    return rpipe, wpipe


class _Way:
    """One direction of a SpliceRelay, ``src`` -> ``dst``: spliced through a pipe made on the
    first byte, or copied through a buffer where the kernel refuses splice. The source is read
    only when what was read before is out, so a slow destination holds at most one pipe."""

    __slots__ = ("owner", "src", "dst", "slot", "rd", "wr", "pipe", "in_pipe", "pending", "copy")

    def __init__(self, owner: "SpliceRelay", src: _socket.socket, dst: _socket.socket, slot: int, loop: Any,
                 pending: bytes) -> None:
        self.owner = owner
        self.src = src
        self.dst = dst
        self.slot = slot  # its counter in stats.moved
        self.rd = loop.io(src.fileno(), 1)
        self.wr = loop.io(dst.fileno(), 2)
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0  # bytes spliced in and not out yet
        self.pending = memoryview(pending) if pending else None  # copied bytes not sent yet
        self.copy = not HAVE_SPLICE

    def start(self) -> None:
        if self.pending is not None:
            self.owner.stats.moved[self.slot] += len(self.pending)
            self._send_pending()
        else:
            self.rd.start(self._readable)

    def _readable(self) -> None:
        for _ in range(READS_PER_CALL):  # on while the source has bytes: a loop turn per burst, not per pipe
            if not (self._copy_in() if self.copy else self._splice_in()):
                return

    def _splice_in(self) -> bool:
        """One pipe in and out; True when it all went on and the source may have more."""
        if self.pipe is None:
            self.pipe = make_pipe()
        try:
            n = os.splice(self.src.fileno(), self.pipe[1], PIPE_SIZE, flags=SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno in _NO_SPLICE and not self.owner.stats.moved[self.slot]:
                self.copy = True
                return self._copy_in()
            self.owner._fail(e)
            return False
        if not n:
            self._eof()
            return False
        self.owner.stats.moved[self.slot] += n
        self.in_pipe = n
        return self._drain()

    def _drain(self) -> bool:
        assert self.pipe is not None  # (bytes are in it: it was made)
        while self.in_pipe:
            try:
                self.in_pipe -= os.splice(self.pipe[0], self.dst.fileno(), self.in_pipe, flags=SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                self._wait_writable(self._drain)
                return False
            except OSError as e:
                self.owner._fail(e)
                return False
        self._read_again()
        return True

    def _copy_in(self) -> bool:
        try:
            data = self.src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            self.owner._fail(e)
            return False
        if not data:
            self._eof()
            return False
        self.owner.stats.moved[self.slot] += len(data)
        self.pending = memoryview(data)
        return self._send_pending()

    def _send_pending(self) -> bool:
        while self.pending:
            try:
                self.pending = self.pending[self.dst.send(self.pending):]
            except (BlockingIOError, InterruptedError):
                self._wait_writable(self._send_pending)
                return False
            except OSError as e:
                self.owner._fail(e)
                return False
        self.pending = None
        self._read_again()
        return True

    def _wait_writable(self, then: Callable[[], Any]) -> None:
        self.rd.stop()
        if not self.wr.active:
            self.wr.start(then)

    def _read_again(self) -> None:
        self.wr.stop()
        if not self.rd.active:
            self.rd.start(self._readable)

    def _eof(self) -> None:
        self.rd.stop()
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.owner._way_done()

    def close(self) -> None:
        for watcher in (self.rd, self.wr):
            watcher.stop()
            watcher.close()
        if self.pipe is not None:
            os.close(self.pipe[0])
            os.close(self.pipe[1])
            self.pipe = None
        self.pending = None


class SpliceRelay(CallbackRelay):
    """Relays kernel sockets ``a`` <-> ``b`` (both owned, non-blocking) until both
    directions end, then closes both and calls ``on_done(stats)``. :meth:`start` it;
    :meth:`stop` ends it early."""

    __slots__ = ("a", "b", "ways", "open_ways")

    def __init__(self, a: _socket.socket, b: _socket.socket, stats: RelayStats, on_done: Callable[[RelayStats], None],
                 a_pending: bytes = b"", b_pending: bytes = b"") -> None:
        super().__init__(stats, on_done)
        self.a, self.b = a, b
        loop = get_hub().loop
        self.ways = (_Way(self, a, b, 0, loop, a_pending), _Way(self, b, a, 1, loop, b_pending))
        self.open_ways = 2

    def start(self, idle_timeout: float | None) -> None:
        """Start relaying (``*_pending``: bytes read early from a side, sent on first). Never blocks."""
        self._watch_idle(idle_timeout)
        for way in self.ways:
            if not self.done:
                way.start()

    def _way_done(self) -> None:
        self.open_ways -= 1
        if not self.open_ways:
            self._finish("eof")

    def _release(self) -> None:
        for way in self.ways:
            way.close()
        for s in (self.a, self.b):
            close_quietly(s, self.cut)  # one side was reset: so is the other (a cut looks like a cut)
