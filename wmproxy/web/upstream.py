"""The servers a ``proxy_url`` reaches: balancing, passive health and keep-alive pools.

A group is a ``[[http.upstream]]`` (or one ``host:port`` written in ``proxy_url``). Each
request asks :meth:`UpstreamGroup.order` for the servers to try: the balancing method's pick
first (``round_robin``: smooth weighted, ``least_conn``: fewest active requests per weight,
``ip_hash``: a hash of the client address), then the other live servers. A server that fails
``max_fails`` times within ``fail_timeout`` is out for ``fail_timeout`` (passive health, as
nginx). Connections that ended a response cleanly go back to the server's pool (at most
``keepalive`` idle ones) and serve later requests.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from functools import partial
from typing import Optional

import gevent

from ..config import Addr, HttpUpstreamConfig, HttpUpstreamServerConfig
from ..errors import UpstreamError
from ..metrics import ServerMetrics
from ..net.balance import WeightedRoundRobin, hash_index
from ..net.dial import dial
from ..net.dns import Resolver
from ..net.health import NEVER_CHECKED, Streak, get_request, probe
from ..net.proxyproto import header_for
from ..net.reader import Reader
from ..net.tls import client_context
from ..net.writer import send_all
from .h2up import H2Pool, H2Upstream

log = logging.getLogger("wmproxy.http")

RECHECK_AFTER = 1.0  # seconds in a pool after which a connection is probed before reuse


class Conn:
    """One connection to a server, with its reader (bytes read ahead stay with it)."""

    __slots__ = ("sock", "reader", "pooled_at", "send")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = Reader(sock, keep_watching=True)
        self.pooled_at = 0.0
        self.send = partial(send_all, sock)  # (made once for its every request)

    def close(self) -> None:
        self.reader.release()
        try:
            self.sock.close()
        except OSError:
            pass

    def still_open(self) -> bool:
        """A pooled connection the server has not closed (nor sent anything unasked on)."""
        if self.reader.buf or (hasattr(self.sock, "pending") and self.sock.pending()):
            return False
        raw = getattr(self.sock, "_sock", self.sock)  # the kernel socket: gevent's recv would wait
        try:
            raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # b'' (closed) or unexpected bytes


class ServerState:
    """One server of a group: health, active requests, idle connections."""

    def __init__(self, cfg: HttpUpstreamServerConfig, label: str, checks: Optional[Streak] = None) -> None:
        self.cfg = cfg
        self.label = label
        self.addr = str(cfg.addr)
        self.fails: list[float] = []
        self.down_until = 0.0
        self.active = 0
        self.idle: list[Conn] = []
        self.h2 = H2Pool()  # its HTTP/2 connections (an h2 upstream)
        self.checks = checks  # the active health check's verdict (health_check), or None
        self.metrics = ServerMetrics()

    def live(self, now: Optional[float] = None) -> bool:
        """Not taken out by failures (until ``down_until``) nor by its health checks. ``now``
        (monotonic) is read here when not given, and only for a server ever taken out."""
        if self.down_until and (now if now is not None else time.monotonic()) < self.down_until:
            return False
        return self.checks is None or self.checks.up

    def failed(self, why: str) -> None:
        self.metrics.failures += 1
        if self.cfg.max_fails == 0:
            return
        now = time.monotonic()
        self.fails = [t for t in self.fails if now - t < self.cfg.fail_timeout] + [now]
        if len(self.fails) >= self.cfg.max_fails and self.live(now):
            self.down_until = now + self.cfg.fail_timeout
            self.fails = []
            for conn in self.idle:
                conn.close()
            self.idle.clear()
            log.warning("upstream %s: server %s is out for %gs after %d failure(s): %s", self.label, self.cfg.addr,
                        self.cfg.fail_timeout, self.cfg.max_fails, why)

    def succeeded(self) -> None:
        self.fails.clear()


class UpstreamGroup:
    """The servers of one upstream and their state; shared by the requests of every listener."""

    def __init__(self, cfg: HttpUpstreamConfig, resolver: Resolver, tls: tuple[str, str] | None = None,
                 h2: bool = False) -> None:
        self.cfg = cfg
        self.resolver = resolver
        self.h2 = h2  # HTTP/2 to the servers (h2up.py): streams over each server's few connections
        # TLS to the servers: (name their certificates carry, CA file or '' for the system store)
        self.tls = None
        if tls is not None:
            self.tls = (tls[0], client_context(tls[1], ca_key="http.server.location.proxy_ssl_ca"))
            if h2:
                self.tls[1].set_alpn_protocols(["h2"])
        hc = cfg.health_check
        self.servers = [ServerState(s, cfg.name, Streak(hc.fall, hc.rise) if hc is not None else None)
                        for s in cfg.server]
        self.balancer = WeightedRoundRobin(cfg.server)
        self.checker = gevent.spawn(self._check_forever) if cfg.health_check is not None else None

    @classmethod
    def single(cls, addr: Addr, resolver: Resolver, tls: tuple[str, str] | None = None,
               h2: bool = False) -> "UpstreamGroup":
        """A group of the one ``host:port`` a proxy_url names."""
        return cls(HttpUpstreamConfig(name=str(addr), server=(HttpUpstreamServerConfig(addr=addr),)), resolver, tls,
                   h2)

    def order(self, client_ip: str) -> list[ServerState]:
        """The live servers to try, the method's pick first. Empty when every one is out."""
        servers = self.servers
        if len(servers) == 1:  # (the usual proxy_url: no clock read for a server never taken out)
            return servers if servers[0].live() else []
        now = time.monotonic()
        live = [i for i, s in enumerate(servers) if s.live(now)]
        if not live:
            return []
        method = self.cfg.method
        if method == "ip_hash":
            start = hash_index(client_ip, len(self.servers))
            first = next(i for i in (*range(start, len(self.servers)), *range(start)) if i in live)
        elif method == "least_conn":
            turn = self.balancer.pick(live)  # the round robin's turn breaks ties
            first = min(live, key=lambda i: (self.servers[i].active / self.servers[i].cfg.weight, i != turn))
        else:
            first = self.balancer.pick(live)
        return [self.servers[first], *(self.servers[i] for i in live if i != first)]

    # -- connections -------------------------------------------------------------------------
    def connect(self, server: ServerState, timeout: float, fresh: bool = False,
                retry_safe: bool = False, header: bytes = b"") -> tuple[Conn, bool]:
        """A pooled connection to ``server`` if one is still open, else (or when ``fresh``: the
        pooled ones are dropped) a new one. Returns it and whether it was pooled. Raises
        UpstreamError. With ``header`` (a PROXY protocol header: send_proxy_protocol), always a
        new one that starts with it, before TLS; it is the caller's, not the pool's, from then.

        ``retry_safe``: the caller sends the request again on a fresh connection if a pooled
        one turns out closed; then one pooled within RECHECK_AFTER is taken unprobed (a peek
        per request costs more than the rare retry) while nothing arrived on it since its last
        answer (its reader is quiet: bytes a server sends late, past its answer, would read as
        this request's answer; as nginx, whose idle connections are watched too)."""
        if header:
            return self._dial(server, timeout, header), False
        if fresh:
            for conn in server.idle:
                conn.close()
            server.idle.clear()
        now = time.monotonic()
        while server.idle:
            conn = server.idle.pop()
            if (retry_safe and now - conn.pooled_at < RECHECK_AFTER and conn.reader.quiet()) or conn.still_open():
                return conn, True
            conn.close()
        return self._dial(server, timeout), False

    def h2_connection(self, server: ServerState, timeout: float) -> H2Upstream:
        """An HTTP/2 connection to ``server`` with room for one more stream (an open one, or a
        new one). Raises UpstreamError."""
        return server.h2.get(lambda: self._dial_sock(server, timeout), server.addr)

    def _dial(self, server: ServerState, timeout: float, header: bytes = b"") -> Conn:
        return Conn(self._dial_sock(server, timeout, header))

    def _dial_sock(self, server: ServerState, timeout: float, header: bytes = b"") -> socket.socket:
        started = time.monotonic()
        sock = dial(self.resolver, server.cfg.addr.host, server.cfg.addr.port, timeout)
        if header:
            try:
                sock.sendall(header)
            except OSError as e:
                sock.close()
                raise UpstreamError(f"{server.cfg.addr}: {e.strerror or e}") from None
        if self.tls is not None:
            name, context = self.tls
            sock.settimeout(timeout)
            try:
                sock = context.wrap_socket(sock, server_hostname=name)
            except (ssl.SSLError, OSError) as e:
                sock.close()
                raise UpstreamError(f"TLS with {server.cfg.addr} ({name}): {e}") from None
            sock.settimeout(None)
            if self.h2 and sock.selected_alpn_protocol() != "h2":  # type: ignore[attr-defined]
                sock.close()
                raise UpstreamError(f"{server.cfg.addr} ({name}) does not offer HTTP/2 (ALPN h2)")
        server.metrics.connect_seconds.observe(time.monotonic() - started)
        return sock

    def release(self, server: ServerState, conn: Conn, reusable: bool) -> None:
        """Done with a request on ``conn``: pooled when ``reusable`` and there is room."""
        now = time.monotonic()
        if reusable and len(server.idle) < self.cfg.keepalive and server.live(now):
            conn.pooled_at = now
            server.idle.append(conn)
        else:
            conn.close()

    def status(self) -> list[dict]:
        """Each server's health and figures, for /status and /metrics."""
        now = time.monotonic()
        return [{**s.metrics.row("http", self.cfg.name, s.addr, s.live(now), s.active),
                 **(s.checks.last_check() if s.checks is not None else NEVER_CHECKED)} for s in self.servers]

    # -- active health checks ------------------------------------------------------------------
    def _check_forever(self) -> None:
        hc = self.cfg.health_check
        assert hc is not None  # (started only for an upstream with health checks)
        while True:
            for server in self.servers:
                gevent.spawn(self._check, server)
            gevent.sleep(hc.interval)

    def _check(self, server: ServerState) -> None:
        hc, checks = self.cfg.health_check, server.checks
        assert hc is not None and checks is not None  # (started only for an upstream with health checks)
        addr = server.cfg.addr
        # (our own connection: a PROXY protocol header says LOCAL (v2) or UNKNOWN (v1))
        preface = header_for(self.cfg.send_proxy_protocol, None, None) if self.cfg.send_proxy_protocol else b""
        try:
            status, why = probe(self.resolver, addr.host, addr.port, hc.timeout,
                                preface + get_request(hc.path, str(addr)))
        except Exception as e:  # a check never takes the process down
            status, why = None, f"internal error: {e}"
        ok = status is not None and 200 <= status < 400
        if not checks.saw(ok):
            return
        if ok:
            server.fails.clear()
            server.down_until = 0.0
            log.warning("upstream %s: server %s is back: %d health checks passed", self.cfg.name, addr, hc.rise)
        else:
            for conn in server.idle:
                conn.close()
            server.idle.clear()
            log.warning("upstream %s: server %s is out: %d health checks failed (%s)", self.cfg.name, addr,
                        hc.fall, why or f"answered {status}")

    def close(self) -> None:
        if self.checker is not None:
            self.checker.kill(block=False)
        for server in self.servers:
            for conn in server.idle:
                conn.close()
            server.idle.clear()
            server.h2.close()
