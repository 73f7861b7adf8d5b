"""What every listener kind shares, so the app starts, diffs, updates and drains them alike.

A kind (forward proxy, ``[stream]`` TCP and UDP, ``[http]``, the center server, mapping
ports and shared mapping listeners, the control API) declares itself with
:class:`ListenerSpec` values built from a config:

- ``key`` (kind and bind address) says which listener it is: same key on reload, same socket;
- ``settings`` (frozen config values) say whether it changed: equal settings, nothing to do;
- ``factory`` builds the running :class:`Listener` on an already bound socket.

A running Listener serves each connection with the context it had when the connection
arrived: :meth:`Listener.update` swaps the context for new connections only, so live ones
finish on the old settings. :meth:`Listener.drain` stops accepting and lets them finish.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer

from .config import Addr
from .metrics import Histogram
from .net.conn import Address
from .net.live import LiveConn, LiveTable
from .net.limits import PerIpLimit
from .net.proxyproto import ProxyProtocolIn, accept as accept_proxy_header
from .services import Services


class StatusSource(Protocol):
    """What /status and /metrics read from a part of the process beside its ConnStats: every
    Listener (none of each by default) and the center client."""

    def upstream_status(self) -> list[dict[str, Any]]:
        """Its upstream servers' figures (metrics.ServerMetrics.row)."""

    def link_status(self) -> list[dict[str, Any]]:
        """The center links it holds, one row each."""

    def mapping_status(self) -> list[dict[str, Any]]:
        """The mappings published through it, one row each."""


@dataclass(frozen=True)
class ListenerSpec:
    """One listener a config asks for."""

    kind: str  # "proxy", "stream", "control", ...
    bind: Addr
    settings: Any  # the kind's frozen *Settings dataclass (ProxySettings, WebSettings...); compared on reload
    label: str  # the config key path of the bind address, for errors
    factory: Callable[..., "Listener"] = field(compare=False)
    check: Callable[[], object] | None = field(default=None, compare=False)  # raises ConfigError (files...)
    transport: str = "tcp"  # or "udp": what socket the app binds for it

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, f"{self.transport}:{self.bind}" if self.transport != "tcp" else str(self.bind))



class ConnStats:
    """Counters of one listener, kept across updates (for /status and /metrics)."""

    __slots__ = ("active", "total", "bytes_in", "bytes_out", "statuses", "request_seconds")

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.bytes_in = 0  # from clients
        self.bytes_out = 0  # to clients
        self.statuses: defaultdict[int, int] = defaultdict(int)  # status -> requests (not a Counter: half the time)
        self.request_seconds = Histogram()  # HTTP requests: from the head read to the answer's end


_OUT_OF_FDS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
ACCEPT_RETRY = 0.1  # seconds between accept attempts while descriptors are out


class AcceptGuard(StreamServer):  # type: ignore[misc]  # (gevent publishes no types)
    """For a gevent StreamServer: running out of file descriptors (or kernel memory) while
    accepting is one wmproxy log line a second with the count of failed accepts, not a
    gevent traceback per attempt; accepting pauses ACCEPT_RETRY seconds and goes on once
    descriptors are free (the waiting connections stay in the backlog meanwhile)."""

    _fd_failures = 0
    _fd_logged_at = 0.0

    def do_read(self) -> Any:
        try:
            return super().do_read()
        except OSError as e:
            if e.errno not in _OUT_OF_FDS:
                raise
            self._fd_failures += 1
            now = time.monotonic()
            if now - self._fd_logged_at >= 1.0:
                logging.getLogger("wmproxy").error(
                    "%s: cannot accept: %s (%d failed accept(s) in the last second); connections wait in the "
                    "backlog, the others are served; raise the descriptor limit (LimitNOFILE, ulimit -n)",
                    self._guard_label(), e.strerror or e, self._fd_failures)
                self._fd_logged_at, self._fd_failures = now, 0
            self.stop_accepting()
            self._timer = self.loop.timer(ACCEPT_RETRY)
            self._timer.start(self._start_accepting_if_started)
            return None

    def _guard_label(self) -> str:
        return str(getattr(self, "address", "listener"))


class ShownInStatus:
    """What App.status reads of every listener beside its ConnStats, with nothing to show by
    default: a StatusSource, not answering HTTP (TCP listeners and UDP forwarders alike)."""

    #: it answers HTTP requests: /status and /metrics show its request duration histogram
    answers_http = False

    def upstream_status(self) -> list[dict[str, Any]]:
        return []

    def link_status(self) -> list[dict[str, Any]]:
        return []

    def mapping_status(self) -> list[dict[str, Any]]:
        return []


class Listener(ShownInStatus, AcceptGuard, StreamServer):
    """Base of every TCP listener kind.

    Subclasses implement :meth:`make_context` (settings -> what a connection needs) and
    :meth:`serve` (one connection; returns when it is done, the socket is closed after).
    """

    kind = "?"

    def __init__(self, sock: socket.socket, spec: ListenerSpec, services: Services) -> None:
        self.spec = spec
        self.stats = ConnStats()
        self.started_at = time.time()
        self.draining = False
        self._retired: list[Pool] = []  # pools of connections from before a limit change
        self._adopted: set[LiveConn] = set()  # connections living on without their handler
        self.ctx = self.make_context(spec.settings, services)
        self.per_ip = PerIpLimit(f"{spec.kind} {spec.bind}")
        self.live = LiveTable()  # its connections now (GET /api/connections)
        self.per_ip_limit = self.max_per_ip(spec.settings)
        self.proxy_in = self.proxy_protocol(spec.settings)
        super().__init__(sock, spawn=Pool(self.max_connections(spec.settings)))

    # -- for subclasses ---------------------------------------------------------------------
    def make_context(self, settings: Any, services: Services) -> Any:
        raise NotImplementedError

    def serve(self, client: socket.socket, address: Address, ctx: Any) -> None:
        raise NotImplementedError

    def max_connections(self, settings: Any) -> int:
        return getattr(settings, "max_connections", 10000)

    def max_per_ip(self, settings: Any) -> int:
        """Connections one client address may hold open at once (0: no limit)."""
        return 0

    def proxy_protocol(self, settings: Any) -> ProxyProtocolIn | None:
        """Its PROXY protocol policy (None: connections start with the client's own bytes)."""
        return None

    # -- lifecycle ----------------------------------------------------------------------------
    def set_spawn(self, spawn: Any) -> None:
        super().set_spawn(spawn)
        self.full = self._full  # the pool's own test knows nothing of adopted connections

    def _full(self) -> bool:
        return len(self.pool) + len(self._adopted) >= self.pool.size

    def adopt(self, stop: Callable[[], None]) -> Callable[[], None]:
        """Keep a connection whose handler returned while it lives on (a relay run by
        callbacks) as one of ours: it counts as active and against the connection limit, a
        drain waits for it and calls ``stop`` past the grace period. Returns the function to
        call once it ended (its LiveConn record: one object per idle tunnel)."""
        conn = self.live.adopted(stop, self)  # its address's count goes with it
        self._adopted.add(conn)
        self.stats.active += 1
        return conn

    def release_conn(self, conn: LiveConn) -> None:
        """An adopted connection ended."""
        if conn in self._adopted:
            self._adopted.discard(conn)
            self.stats.active -= 1
            if conn.ip:
                self.per_ip.leave(conn.ip)
            self.live.close(conn)
            self._start_accepting_if_started()  # a full server accepts again

    def handle(self, client: socket.socket, address: Address) -> None:
        ctx = self.ctx  # this connection keeps these settings whatever reloads happen
        if self.proxy_in is not None:  # a balancer's connection: the header says whose it is
            real = accept_proxy_header(client, address, self.proxy_in, self._guard_label())
            if real is None:
                return  # (refused and logged; the server closes it)
            address = real
        ip = address[0] if isinstance(address, tuple) else ""
        if not self.per_ip.enter(ip, self.per_ip_limit):
            return  # (the server closes it)
        conn = self.live.open(address)
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # proxies forward, not batch
        except OSError:
            pass
        self.stats.active += 1
        self.stats.total += 1
        try:
            self.serve(client, address, ctx)
        finally:
            self.stats.active -= 1
            if conn.stop is None:  # (not adopted: its release leaves)
                self.per_ip.leave(ip)
            self.live.handler_done(conn)

    def live_bytes(self) -> tuple[int, int]:
        """Bytes in and out of its connections still open, not yet in ``stats`` (which counts a
        connection's when it ends): none known by default."""
        return 0, 0

    def update(self, spec: ListenerSpec, services: Services) -> None:
        """New settings for new connections; live ones keep theirs. The socket stays."""
        limit = self.max_connections(spec.settings)
        if limit != self.max_connections(self.spec.settings):
            self._retired.append(self.pool)
            self.set_spawn(Pool(limit))
        self.ctx = self.make_context(spec.settings, services)
        self.per_ip_limit = self.max_per_ip(spec.settings)
        self.proxy_in = self.proxy_protocol(spec.settings)
        self.spec = spec

    def _guard_label(self) -> str:
        return f"{self.spec.kind} {self.spec.bind}"

    @property
    def pools(self) -> list[Pool]:
        return [*self._retired, self.pool]

    def drain(self, grace: float) -> int:
        """Stop accepting (the socket closes), wait up to ``grace`` seconds for live
        connections, then kill the rest. Returns how many had to be killed. Blocks."""
        self.draining = True
        if not self.closed:
            self.close()
        deadline = time.monotonic() + grace
        for pool in self.pools:
            pool.join(timeout=max(0.0, deadline - time.monotonic()))
        while self._adopted and time.monotonic() < deadline:
            gevent.sleep(0.05)
        left = sum(len(pool) for pool in self.pools) + len(self._adopted)
        for pool in self.pools:
            pool.kill(timeout=2)
        for conn in list(self._adopted):
            if conn.stop is not None:
                conn.stop()
        return left


def drain_all(listeners: list[Listener], grace: float) -> int:
    """Drain several listeners at once (one shared grace period). Returns the number killed."""
    for listener in listeners:
        if not listener.closed:
            listener.close()  # all stop accepting before any waits
    jobs = [gevent.spawn(listener.drain, grace) for listener in listeners]
    gevent.joinall(jobs)
    return sum(job.value or 0 for job in jobs)
