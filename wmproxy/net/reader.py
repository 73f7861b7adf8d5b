"""A buffered reader over any socket-like object, for parsers that want whole messages.

Works over a real (gevent) socket or a virtual connection alike: all it needs is
``recv(n)``. Parsers stay pure; this reader feeds them until they have a whole message.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Optional, TypeVar

import gevent

from ..errors import NeedMore, ProtocolError
from .conn import Conn
from .gevent_io import kernel_socket, read_waiter

T = TypeVar("T")

RECV_SIZE = 65536


class PeerClosed(EOFError):
    """The peer closed its side before a message was complete."""


class Reader:
    """Buffered reads from ``sock``. Blocks (cooperatively) in ``recv``; never closes ``sock``.

    Timeouts are the socket's own (``sock.settimeout``) or an idle watchdog's that reads
    ``reads``, the count of receives so far; ``socket.timeout`` propagates.
    """

    __slots__ = ("sock", "buf", "reads", "_recv", "_nowait", "_wait", "_watch")

    def __init__(self, sock: Conn, keep_watching: bool = False) -> None:
        """``keep_watching``: the owner of a plain gevent socket promises to call
        :meth:`release` when done; then the readiness watcher stays started between waits
        (no epoll_ctl and no waiter object per message)."""
        self.sock = sock
        self.buf = bytearray()
        self.reads = 0
        kernel = kernel_socket(sock)
        # a plain gevent socket is read with the kernel socket's recv first (one Python layer
        # less per message); gevent's recv, which waits, only when nothing is there yet
        self._recv: Callable[[int], bytes] = kernel.recv if kernel is not None else sock.recv
        # how try_fill tells "nothing there yet": a plain socket's kernel recv returns at once; a
        # link's stream (center.vconn) says whether anything arrived
        self._nowait = kernel is not None
        self._wait = read_waiter(sock)
        self._watch = _Watch(kernel.fileno()) if kernel is not None and keep_watching else None

    def release(self) -> None:
        """Stop and drop the kept watcher, if any (call before or after closing the socket)."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def quiet(self) -> bool:
        """Known that nothing (no bytes, no EOF) arrived since the last wait for the peer ended:
        the kept watcher stops itself at readiness while nobody waits. False without a kept
        watcher (nothing is known)."""
        return self._watch is not None and self._watch.io.active

    def stirred(self) -> bool:
        """Known that something (bytes or EOF) arrived since the last wait ended. False without
        a kept watcher (nothing is known)."""
        return self._watch is not None and not self._watch.io.active

    def fill(self) -> bool:
        """One recv into the buffer. False at EOF."""
        try:
            data = self._recv(RECV_SIZE)
        except BlockingIOError:
            data = self.sock.recv(RECV_SIZE)
        self.reads += 1
        if not data:
            return False
        self.buf += data
        return True

    def try_fill(self) -> Optional[bool]:
        """One recv into the buffer where it need not wait (a plain socket, a link's stream):
        True when bytes came, False at EOF, None when nothing is there yet or the socket can
        only wait to tell (TLS)."""
        if self._nowait:
            try:
                data = self._recv(RECV_SIZE)
            except BlockingIOError:
                return None
        else:
            arrived = getattr(self.sock, "arrived", None)
            if arrived is None or not arrived():
                return None
            data = self._recv(RECV_SIZE)  # (there: it does not wait)
        self.reads += 1
        if not data:
            return False
        self.buf += data
        return True

    def receive(self) -> bytes:
        """For an empty buffer: block until the socket has data or EOF, then one recv (b'' at EOF).

        For the points where the peer's bytes cannot be there yet (the next request after a
        response, the response after a request): gevent's recv would first try and fail with
        EAGAIN, a syscall per message. Waits on gevent's socket watcher where there is one (any
        other socket-like object simply waits in its recv).
        """
        if self._watch is not None:
            self._watch.wait()
        elif self._wait is not None:
            self._wait()
        self.reads += 1
        try:
            return self._recv(RECV_SIZE)
        except BlockingIOError:
            return self.sock.recv(RECV_SIZE)

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes. Raises PeerClosed if the peer closes first."""
        while len(self.buf) < n:
            if not self.fill():
                raise PeerClosed(f"peer closed after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, delim: bytes, limit: int) -> bytes:
        """Bytes up to and including ``delim``.

        Raises ProtocolError (431) when ``limit`` bytes pass without ``delim``; PeerClosed at
        EOF (``len(pending())`` tells whether anything had arrived).
        """
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                end = i + len(delim)
                if end > limit:
                    break
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                break
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self.fill():
                raise PeerClosed(f"peer closed after {len(self.buf)} bytes without {delim!r}")
        raise ProtocolError(f"no {delim!r} within {limit} bytes", 431)

    def read_message(self, parse: Callable[[Any], tuple[T, int]]) -> T:
        """Feed a pure parser (returns (value, consumed) or raises NeedMore) until it answers."""
        while True:
            try:
                value, used = parse(self.buf)
            except NeedMore:
                if not self.fill():
                    raise PeerClosed(f"peer closed after {len(self.buf)} bytes of a message") from None
                continue
            del self.buf[:used]
            return value

    def read_some(self, n: int = RECV_SIZE) -> bytes:
        """Buffered bytes if any, else one recv (b'' at EOF)."""
        if self.buf:
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out
        self.reads += 1
        try:
            return self._recv(n)
        except BlockingIOError:
            return self.sock.recv(n)

    def peek(self, n: int) -> bytes:
        """At least one and at most ``n`` bytes without consuming them (b'' at EOF)."""
        if not self.buf:
            self.fill()
        return bytes(self.buf[:n])

    def take_pending(self) -> bytes:
        """Whatever is buffered, removed from the buffer (hand it on before relaying)."""
        out = bytes(self.buf)
        self.buf.clear()
        return out


class _Watch:
    """A read watcher left started between waits. While a greenlet waits, the watcher's
    callback is that greenlet's switch; otherwise it is the watcher's own stop, so readiness
    while nobody waits stops it (no busy loop) and the next wait starts it again."""

    __slots__ = ("io", "hub", "stop")

    def __init__(self, fd: int) -> None:
        self.hub = gevent.get_hub()
        self.io = self.hub.loop.io(fd, 1)
        self.stop = self.io.stop

    def wait(self) -> None:
        io = self.io
        if io.active:
            io.callback = gevent.getcurrent().switch
        else:
            io.start(gevent.getcurrent().switch)
        try:
            self.hub.switch()
        finally:
            io.callback = self.stop

    def close(self) -> None:
        self.io.stop()
        self.io.close()


PEEK_LIMIT = 65536 + 1024


def peek_message(sock: Any, parse: Callable[[bytes], T], timeout: float) -> T:
    """Parse the first bytes of ``sock`` without consuming them (MSG_PEEK): ``parse(data)``
    answers or raises NeedMore. For routing on a message that must still reach whoever
    handles the connection (a TLS ClientHello). Raises PeerClosed at EOF, socket.timeout
    after ``timeout``, ProtocolError when PEEK_LIMIT bytes do not make a message."""
    deadline = time.monotonic() + timeout
    seen = -1
    while True:
        data = sock.recv(PEEK_LIMIT, socket.MSG_PEEK)
        if not data:
            raise PeerClosed(f"peer closed after {max(seen, 0)} bytes of a message")
        try:
            return parse(data)
        except NeedMore:
            pass
        if len(data) >= PEEK_LIMIT:
            raise ProtocolError(f"no complete message in the first {PEEK_LIMIT} bytes")
        if time.monotonic() > deadline:
            raise socket.timeout("timed out waiting for the rest of the message")
        # a peek returns at once while bytes are there: wait a little for more instead of spinning
        gevent.sleep(0.002 if len(data) != seen else 0.02)
        seen = len(data)
