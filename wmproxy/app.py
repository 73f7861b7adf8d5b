"""The running process: builds the listeners a config asks for, and stops them gracefully.

Stopping (SIGTERM, SIGINT): every listener stops accepting at once, live connections get
``grace`` seconds to finish, then the rest are closed; the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import socket
import time

import gevent
from gevent.event import Event

from .config import Addr, Config
from .errors import ProxyError
from .net.dns import Resolver
from .proxy.server import ProxyContext, ProxyServer

log = logging.getLogger("wmproxy")


class BindError(ProxyError):
    """A listening address could not be opened."""


def open_listener(addr: Addr, what: str, backlog: int = 1024) -> socket.socket:
    """A bound, listening TCP socket for ``addr`` (SO_REUSEADDR; IPv6 sockets v6-only).

    Raises BindError naming the address and the reason.
    """
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BindError(f"{what}: cannot resolve bind address {addr}: {e.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise BindError(f"{what}: cannot listen on {addr}: {e.strerror or e}") from None
    return sock


class App:
    """Owns the listeners of one process."""

    def __init__(self, cfg: Config, config_file: str | None = None) -> None:
        self.cfg = cfg
        self.config_file = config_file
        self.resolver = Resolver(cfg.dns_or_default)
        self.servers: list = []
        self._stopped = Event()
        self.started_at = time.time()

    def start(self) -> None:
        """Open every listener; raises BindError (and closes what it opened) on failure."""
        try:
            if self.cfg.proxy is not None:
                self._start_proxy()
        except BaseException:
            for server in self.servers:
                server.close()
            raise
        if not self.servers:
            log.warning("the configuration starts no listener")

    def _start_proxy(self) -> None:
        pc = self.cfg.proxy
        listener = open_listener(pc.bind, "proxy.bind")
        server = ProxyServer(listener, ProxyContext(pc, self.resolver))
        server.start()
        self.servers.append(server)
        host, port = listener.getsockname()[:2]
        log.info("forward proxy (%s) listening on %s, auth %s", " ".join(sorted(pc.flag)),
                 Addr(host, port), "on" if pc.auth else "off")
        if not pc.bind.is_loopback and not pc.auth and not pc.allow:
            log.warning("proxy.bind %s is reachable from other hosts with no username/password and no "
                        "allow list: this is an open proxy", pc.bind)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let connections finish up to ``grace`` seconds, close the rest."""
        grace = self.cfg.grace if grace is None else grace
        for server in self.servers:
            server.close()  # stops accepting; live handlers go on
        deadline = time.monotonic() + grace
        for server in self.servers:
            server.pool.join(timeout=max(0.0, deadline - time.monotonic()))
        left = sum(len(server.pool) for server in self.servers)
        if left:
            log.info("closing %d connection(s) still open after the %.1fs grace period", left, grace)
        for server in self.servers:
            server.pool.kill(timeout=2)
        self._stopped.set()

    def serve_forever(self) -> None:
        """Block until SIGTERM/SIGINT (then stop gracefully) or ``stop()`` from elsewhere."""

        def on_signal(signame: str) -> None:
            if not self._stopping:
                self._stopping = True
                log.info("%s received: stopping (grace %.1fs)", signame, self.cfg.grace)
                gevent.spawn(self.stop)

        self._stopping = False
        handlers = [gevent.signal_handler(sig, on_signal, sig.name) for sig in (signal.SIGTERM, signal.SIGINT)]
        try:
            self._stopped.wait()
        finally:
            for h in handlers:
                h.cancel()
        log.info("stopped")
