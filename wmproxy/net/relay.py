"""relay(a, b): the one byte relay every mode uses (CONNECT, SOCKS, tunnels, mappings, streams).

When one side ends its sending (EOF), the other side's write half is shut down (half-close
passed through) and the opposite direction goes on. An error on either side ends both. An
idle watch ends the relay when no byte moved either way for ``idle_timeout`` seconds. Both
sockets are closed when the relay is done.

How the bytes move depends on the pair:

- two plain kernel sockets: :class:`~.splice.SpliceRelay`, ``splice(2)`` through a pipe per
  direction (zero copy), driven by libev callbacks;
- a center link stream and a plain socket: :class:`~.bridge.StreamSocketRelay`, callbacks as well;
- anything else (TLS, websocket wrappers): two pumps, one per direction (the calling greenlet
  runs one, a spawned greenlet the other), each a copy loop reusing one buffer.

:func:`relay` blocks its caller until the relay is done. :func:`relay_then` is for callers that
may let go of the connection: where the relay runs on callbacks it returns at once, so the
caller's greenlet ends and an idle tunnel costs a few objects instead of parked greenlets.
"""

from __future__ import annotations

import _socket
import socket
from typing import Any, Callable, Optional, Sequence

import gevent
from gevent import get_hub
from gevent.event import Event
from gevent import socket as gsocket
from gevent import ssl as gssl

from .bridge import CallbackRelay, StreamSocketRelay
from .conn import Conn
from .splice import HAVE_SPLICE, SpliceRelay
from .idle import watch_idle
from .live import current
from .throttle import Bucket
from .writer import close_quietly, send_all

CHUNK = 65536


class RelayStats:
    """Bytes moved each way, readable while the relay runs (for status and logs)."""

    __slots__ = ("moved", "reason")

    def __init__(self) -> None:
        self.moved = [0, 0]  # [a to b, b to a]; each pump adds to its own slot
        self.reason = "eof"  # why it ended: eof, idle, error: ..., stopped

    @property
    def a_to_b(self) -> int:
        return self.moved[0]

    @property
    def b_to_a(self) -> int:
        return self.moved[1]

    @property
    def total(self) -> int:
        return self.moved[0] + self.moved[1]


def _spliceable(s: object) -> bool:
    return HAVE_SPLICE and isinstance(s, gsocket.socket) and not isinstance(s, gssl.SSLSocket)


def _copy_pump(src: Conn, dst: Conn, moved: list[int], way: int, buckets: Sequence[Bucket] = ()) -> None:
    # The reusable buffer is allocated once data flows: an idle tunnel (thousands of them on a
    # center link) costs no 64 KiB per direction.
    if buckets:  # (rate limits: at most a burst per read, paid for after its send, to every bucket)
        size = min(b.burst for b in buckets)
        while data := src.recv(size):
            moved[way] += len(data)
            send_all(dst, data)
            wait = max(b.spend(len(data)) for b in buckets)
            if wait > 0:
                gevent.sleep(wait)
        return
    data = src.recv(CHUNK)
    if not data:
        return
    moved[way] += len(data)
    send_all(dst, data)
    recv_into = getattr(src, "recv_into", None)
    if recv_into is None:
        while data := src.recv(CHUNK):
            moved[way] += len(data)
            send_all(dst, data)
        return
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := recv_into(buf):
        moved[way] += n
        send_all(dst, view[:n])


def _shutdown_write(s: Conn) -> None:
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _pump(src: Conn, dst: Conn, pending: bytes, moved: list[int], way: int,
          on_error: Callable[[BaseException], None], buckets: Sequence[Bucket] = ()) -> None:
    try:
        if pending:
            dst.sendall(pending)
            moved[way] += len(pending)
            wait = max((b.spend(len(pending)) for b in buckets), default=0.0)
            if wait > 0:
                gevent.sleep(wait)
        _copy_pump(src, dst, moved, way, buckets)
    except (OSError, EOFError) as e:
        on_error(e)
        return
    _shutdown_write(dst)


class _Stop(Exception):
    """Thrown into the greenlet running a relay's inline pump to end it."""


Shared = Sequence[tuple[Bucket, Bucket]]  # buckets several relays pay into: (a to b, b to a) each


def relay(a: Conn, b: Conn, idle_timeout: float | None = None, a_pending: bytes = b"", b_pending: bytes = b"",
          stats: RelayStats | None = None, rate: float = 0, shared: Shared = ()) -> RelayStats:
    """Copy bytes both ways between ``a`` and ``b`` until both directions end; with ``rate``,
    each direction at most that many bytes a second, and within what the ``shared`` buckets
    (an account's, a mapping's) allow (net.throttle: pumps, never callbacks).

    ``a_pending`` are bytes already read from ``a`` (to go to ``b`` first), ``b_pending``
    likewise from ``b``. Blocks the calling greenlet: it waits for the callback relay, or
    pumps a -> b itself while one spawned pump does b -> a (one greenlet fewer per relay);
    with ``idle_timeout`` an idle watch is registered. All ended before it returns, also
    when the caller is killed. Closes ``a`` and ``b``. Never raises for a peer's error:
    ``stats.reason`` tells.
    """
    stats = stats or RelayStats()
    _count_live(stats)
    ended = Event()
    limited = bool(rate or shared)
    bridge = None if limited else _callback_relay(a, b, a_pending, b_pending, stats, lambda _stats: ended.set())
    if bridge is not None:  # the pair relays on callbacks: only this greenlet waits
        bridge.start(idle_timeout)
        try:
            ended.wait()
        except BaseException:
            stats.reason = "stopped"
            bridge.stop()
            raise
        return stats
    for s in (a, b):
        s.settimeout(None)
    me = gevent.getcurrent()
    hub = get_hub()
    inline: dict[str, Any] = {"running": True, "stop": None}  # the a -> b pump run here; a pending throw into it
    cut: list[BaseException] = []  # a side was reset: the other is reset too (RST, not FIN)
    other: gevent.Greenlet  # the b -> a pump, spawned below

    def stop_inline() -> None:
        # from another greenlet: end the pump this greenlet runs (a throw at its next wait)
        if inline["running"] and inline["stop"] is None:
            inline["stop"] = hub.loop.run_callback(me.throw, _Stop())

    def on_error(e: BaseException) -> None:
        if stats.reason == "eof":
            stats.reason = f"error: {e}"
        if isinstance(e, ConnectionResetError):
            cut.append(e)
        if gevent.getcurrent() is me:
            other.kill(block=False)
        else:
            stop_inline()

    ways: tuple[list[Bucket], list[Bucket]] = ([Bucket(rate)] if rate else [], [Bucket(rate)] if rate else [])
    for to_b, to_a in shared:
        ways[0].append(to_b)
        ways[1].append(to_a)
    other = gevent.spawn(_pump, b, a, b_pending, stats.moved, 1, on_error, ways[1])

    def on_idle() -> None:
        stats.reason = "idle"
        other.kill(block=False)
        stop_inline()

    watchdog = watch_idle(lambda: stats.total, lambda: idle_timeout, on_idle) if idle_timeout else None
    try:
        try:
            _pump(a, b, a_pending, stats.moved, 0, on_error, ways[0])
        except _Stop:
            pass
        finally:
            inline["running"] = False
            if inline["stop"] is not None:
                inline["stop"].stop()  # not delivered yet: it never will be
        other.join()
    except BaseException:
        stats.reason = "stopped"
        raise
    finally:
        other.kill()
        if watchdog is not None:
            watchdog.kill()
        close_quietly(a, bool(cut))  # a cut looks like a cut on the other side too
        close_quietly(b, bool(cut))
    return stats


def _count_live(stats: RelayStats) -> None:
    """The connection the caller serves (net.live) shows these counts while they run."""
    conn = current()
    if conn is not None:
        conn.relay = stats


Adopt = Callable[[Callable[[], None]], Callable[[], None]]


def _nothing() -> None:
    pass


def link_owned(stop: Callable[[], None]) -> Callable[[], None]:
    """The ``adopt`` for connections that need no slot kept: a center link's streams (the
    link resets every stream, so ends every bridge, when it ends) and the like."""
    return _nothing


def relay_then(a: Conn, b: Conn, on_done: Callable[[RelayStats], None], adopt: Adopt | None,
               idle_timeout: float | None = None,
               a_pending: bytes = b"", b_pending: bytes = b"", stats: RelayStats | None = None,
               rate: float = 0, shared: Shared = ()) -> bool:
    """Relay ``a`` and ``b`` like :func:`relay`, then ``on_done(stats)``; returns whether the
    relay goes on without the caller.

    With ``adopt`` given, where the relay runs on callbacks (two plain kernel sockets, or a
    push-mode stream and one), it is left running: ``adopt(stop)`` is called first (the owner
    of the connection's slot gets ``stop`` to end it early and returns the function that
    frees the slot, called once the relay ended), the function returns True at once and
    ``on_done`` runs later from the event loop. Otherwise it blocks in :func:`relay`, calls
    ``on_done`` and returns False. Either way both sides end up closed.
    """
    stats = stats or RelayStats()
    _count_live(stats)
    if adopt is not None and not rate and not shared:
        bridge = _callback_relay(a, b, a_pending, b_pending, stats, on_done)
        if bridge is not None:
            bridge.release = adopt(bridge)  # (calling the relay stops it; its end releases the slot first)
            bridge.start(idle_timeout)
            return True
    on_done(relay(a, b, idle_timeout, a_pending, b_pending, stats, rate, shared))
    return False


def _callback_relay(a: Conn, b: Conn, a_pending: bytes, b_pending: bytes, stats: RelayStats,
                    on_done: Callable[[RelayStats], None]) -> Optional[CallbackRelay]:
    """A StreamSocketRelay or SpliceRelay for this pair (not started; the kernel sockets taken out of
    their gevent wrappers), or None when the pair needs pumps (TLS, websocket...)."""
    if _spliceable(a) and _spliceable(b):
        return SpliceRelay(_take(a), _take(b), stats, on_done, a_pending, b_pending)
    for stream, sock, sock_is_a in ((b, a, True), (a, b, False)):
        if hasattr(stream, "attach") and _spliceable(sock):
            to_stream, to_sock = (a_pending, b_pending) if sock_is_a else (b_pending, a_pending)
            return StreamSocketRelay(stream, _take(sock), stats, sock_is_a, on_done, to_stream, to_sock)
    return None


def _take(sock: Any) -> _socket.socket:
    """The kernel socket out of its gevent wrapper, non-blocking (the wrapper's owner may
    still close the wrapper: nothing happens)."""
    family, kind, proto = sock.family, sock.type, sock.proto
    raw = _socket.socket(family, kind, proto, sock.detach())
    raw.setblocking(False)
    return raw
