"""Idle watchdogs: one sleeping greenlet for all connections, not a timer per socket call.

gevent arms and cancels a timer around every ``recv`` of a socket that has a timeout; on a
busy keep-alive connection that costs more than the parsing. Here a connection only bumps a
counter (the Reader's ``reads``, a relay's byte count) and registers with :func:`watch_idle`;
a single reaper greenlet looks at every registered counter a few times per period and calls
``on_idle`` for those that have not moved for the whole period. Thousands of idle tunnels cost
a list entry each instead of a greenlet each.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Callable, Optional

import gevent

from ..errors import ClientGone, PhaseTimeout
from .gevent_io import kernel_socket
from .reader import Reader

MIN_TICK, MAX_TICK = 0.05, 1.0


INF = float("inf")


class Watch:
    """One registration; :meth:`kill` ends it (safe to call twice). ``deadline`` (monotonic
    seconds; none: inf) ends it too, whatever progress is made: a phase a stranger controls
    (a request head) must be over by then, not merely keep trickling. ``expired`` says which
    ended it: "idle" or "deadline".

    What it watches comes from its methods :meth:`progress`, :meth:`timeout` and
    :meth:`on_idle`: a class that keeps a connection (a callback relay) may be a Watch itself
    and :meth:`arm` it, so an idle tunnel carries no extra object or bound methods for its
    watch; :func:`watch_idle` wraps three functions instead."""

    __slots__ = ("limit", "seen", "since", "active", "deadline", "expired")

    def arm(self, limit: float) -> None:
        """Start watching: idle after ``limit`` seconds without progress."""
        self.limit = limit
        self.seen = self.progress()
        self.since = time.monotonic()
        self.active = True
        self.deadline = INF
        self.expired = ""
        _REAPER.add(self)

    def progress(self) -> int:
        raise NotImplementedError

    def timeout(self) -> float:
        return self.limit

    def on_idle(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        if getattr(self, "active", False):
            self.active = False
            _REAPER.watches.discard(self)


class FuncWatch(Watch):
    """A Watch of three functions (:func:`watch_idle`)."""

    __slots__ = ("_progress", "_timeout", "_on_idle")

    def __init__(self, progress: Callable[[], int], timeout: Callable[[], float], on_idle: Callable[[], None]):
        self._progress = progress
        self._timeout = timeout
        self._on_idle = on_idle
        self.arm(0.0)

    def progress(self) -> int:
        return self._progress()

    def timeout(self) -> float:
        return self._timeout()

    def on_idle(self) -> None:
        self._on_idle()


class _Reaper:
    def __init__(self) -> None:
        self.watches: set[Watch] = set()
        self.greenlet: gevent.Greenlet | None = None

    def add(self, watch: Watch) -> None:
        self.watches.add(watch)
        if self.greenlet is None or self.greenlet.dead:
            self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while self.watches:
            tick = MAX_TICK
            now = time.monotonic()
            for watch in list(self.watches):
                if not watch.active:
                    continue
                limit = watch.timeout()
                tick = min(tick, limit / 4)
                current = watch.progress()
                if now >= watch.deadline:
                    watch.expired = "deadline"
                elif current != watch.seen:
                    watch.seen, watch.since = current, now
                elif now - watch.since >= limit:
                    watch.expired = "idle"
                if watch.expired:
                    watch.kill()
                    try:
                        watch.on_idle()
                    except Exception:  # our bug: log it, keep watching the others
                        logging.getLogger("wmproxy").exception("idle watchdog callback failed")
            gevent.sleep(max(MIN_TICK, tick))


_REAPER = _Reaper()


def watch_idle(progress: Callable[[], int], timeout: Callable[[], float], on_idle: Callable[[], None]) -> FuncWatch:
    """Call ``on_idle()`` once ``progress()`` has stayed the same for ``timeout()`` seconds
    (read again each round, so a connection may change phase). Precision: a quarter of the
    shortest timeout, at most a second. Returns the registration; the caller kills it when
    the connection ends. Never blocks.
    """
    return FuncWatch(progress, timeout, on_idle)


def _closed_by_peer(reader: Reader) -> bool:
    """Whether the peer of ``reader``'s plain socket closed or reset it, known without
    taking a byte (MSG_PEEK): bytes waiting say no; False for other sockets."""
    sock = kernel_socket(reader.sock)
    if sock is None or reader.buf:
        return False
    try:
        return not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:  # (ECONNRESET)
        return True


class ConnWatch(Watch):
    """The watchdog of one client connection that proxies HTTP (the forward proxy's,
    ``[http]``'s and the http mappings'): its sockets have no timeout (a timer per recv costs more than the
    parsing). When neither the client's reads nor the current upstream's move for
    ``limit`` seconds, socket.timeout is thrown into the connection's greenlet; a phase the
    client controls also has a deadline (:meth:`until`), and PhaseTimeout, naming the phase,
    is thrown then whatever moves. ``head_started`` (bound once) is read_head's hook: a head
    that has begun has ``head_timeout`` to be whole. It is its own registration with the
    reaper (a Watch): one object per connection."""

    __slots__ = ("reader", "upstream", "answer", "phase", "head_timeout", "head_phase", "head_started", "_greenlet")

    def __init__(self, reader: Reader, timeout: float, head_timeout: float, head_phase: str) -> None:
        self._greenlet = gevent.getcurrent()
        self.reader = reader
        self.upstream: Optional[Reader] = None  # the current upstream's Reader: its reads count as progress too
        self.answer = False  # a request is all sent: its answer is awaited or on its way (see awaiting_answer)
        self.phase = ""
        self.head_timeout = head_timeout
        self.head_phase = head_phase
        self.head_started = self._head_started
        self.arm(timeout)

    def progress(self) -> int:
        upstream = self.upstream
        if self.answer and self.reader.stirred() and _closed_by_peer(self.reader):
            self.expired = "client"  # (the reaper ends the watch and calls on_idle)
        return self.reader.reads + (upstream.reads if upstream is not None else 0)

    def on_idle(self) -> None:
        if self.expired == "client":
            error: Exception = ClientGone("the client closed its connection before the answer was all sent")
        elif self.expired == "deadline":
            error = PhaseTimeout(self.phase)
        else:
            error = socket.timeout("idle timeout")
        self._greenlet.kill(error, block=False)

    def waiting(self, upstream: Optional[Reader], timeout: float) -> None:
        """From now: ``upstream`` (a Reader or None) is the other side, silence ends after ``timeout``."""
        self.upstream, self.limit, self.answer = upstream, timeout, False

    def awaiting_answer(self, on: bool = True) -> None:
        """The request is all sent (``on``), until the next :meth:`waiting` or ``on`` False:
        a client that closes or resets its connection meanwhile ends the exchange with
        ClientGone thrown into the connection's greenlet, as nginx ends it (499), so that a
        client that gave up (a timeout, a retry) does not keep a server working for nobody.
        Known from the client reader's kept watcher, a peek then (bytes a client sent ahead,
        a pipelined request, are no close): plain sockets only, a TLS client is not watched.
        A client that only half-closes after its request ends it too, as with nginx and squid."""
        self.answer = on

    def until(self, deadline: float, phase: str) -> None:
        """``phase`` must be over by ``deadline`` (monotonic seconds); an earlier deadline set
        for it stays (a first head's, from the connection's start, is not moved on)."""
        if deadline < self.deadline:
            self.deadline, self.phase = deadline, phase

    def _head_started(self) -> None:
        self.until(time.monotonic() + self.head_timeout, self.head_phase)

    def done(self) -> None:
        """The phase with a deadline is over."""
        self.deadline = INF

    def stop(self) -> None:
        self.kill()
