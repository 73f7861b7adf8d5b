"""``[stream]`` UDP forwarding with one session per client address.

Each client address gets its own connected upstream socket and a greenlet that sends the
answers back to that client, so clients never get each other's datagrams. A session sticks to
one upstream server (round robin, or a hash of the client address with ``method = "ip_hash"``),
ends after ``client_timeout`` without a datagram from its client, and ``max_sessions`` caps
them (beyond it the least recently active session is dropped, and that is logged).
Datagrams keep their boundaries, up to 65,507 bytes; IPv4 and IPv6.
"""

from __future__ import annotations

import logging
import socket
import time
import zlib
from collections import OrderedDict

import gevent
from gevent import socket as gsocket
from gevent.server import DatagramServer

from ..errors import UpstreamError
from ..listener import ConnStats, ListenerSpec
from ..net.dial import fmt_addr
from .tcp import StreamContext

log = logging.getLogger("wmproxy.stream")

MAX_DATAGRAM = 65535


class Session:
    __slots__ = ("client", "sock", "last", "greenlet", "server")

    def __init__(self, client, sock, server) -> None:
        self.client = client
        self.sock = sock
        self.server = server
        self.last = time.monotonic()
        self.greenlet: gevent.Greenlet | None = None

    def close(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
        self.sock.close()


class UdpForwarder(DatagramServer):
    """One ``[[stream.server]]`` with ``bind_mode = "udp"``; plugs into the app like a Listener."""

    kind = "stream-udp"

    def __init__(self, sock, spec: ListenerSpec, app) -> None:
        super().__init__(sock)
        self.spec = spec
        self.stats = ConnStats()
        self.draining = False
        self.ctx = StreamContext(spec.settings[0], spec.settings[1], app.resolver, self.stats)
        self.sessions: OrderedDict = OrderedDict()  # client address -> Session, least recently active first
        self._reaper = gevent.spawn(self._expire)

    # -- the app's listener interface ---------------------------------------------------------
    def update(self, spec: ListenerSpec, app) -> None:
        """New sessions use the new settings; live ones keep their server."""
        self.ctx = StreamContext(spec.settings[0], spec.settings[1], app.resolver, self.stats)
        self.spec = spec

    def drain(self, grace: float) -> int:
        self.draining = True
        if not self.closed:
            self.close()
        left = len(self.sessions)
        for session in list(self.sessions.values()):
            session.close()
        self.sessions.clear()
        self._reaper.kill(block=False)
        return left

    # -- datagrams ----------------------------------------------------------------------------
    def do_read(self):
        """gevent reads 8,192 bytes at most: take whole datagrams (up to 65,535)."""
        try:
            return self._socket.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            return None

    def handle(self, data: bytes, address) -> None:
        session = self.sessions.get(address)
        if session is None:
            session = self._open(address)
            if session is None:
                return
        else:
            self.sessions.move_to_end(address)
        session.last = time.monotonic()
        self.stats.bytes_in += len(data)
        try:
            session.sock.send(data)
        except OSError as e:
            log.info("%s udp %s: send to %s failed: %s", fmt_addr(*address[:2]), self.spec.bind, session.server, e)

    def _open(self, address):
        ctx = self.ctx
        if len(self.sessions) >= ctx.cfg.max_sessions:
            oldest_addr, oldest = self.sessions.popitem(last=False)
            oldest.close()
            log.warning("udp %s: max_sessions %d reached, dropped the session of %s (idle %.1fs)", self.spec.bind,
                        ctx.cfg.max_sessions, fmt_addr(*oldest_addr[:2]), time.monotonic() - oldest.last)
        servers = ctx.upstream.server
        if ctx.upstream.method == "ip_hash":
            server = servers[zlib.crc32(address[0].encode()) % len(servers)]
        else:
            server = servers[ctx.balancer.pick()]
        try:
            family, ip = ctx.resolver.resolve(server.addr.host)[0]
            sock = gsocket.socket(family, socket.SOCK_DGRAM)
            sock.connect((ip, server.addr.port))
        except (UpstreamError, OSError) as e:
            log.warning("%s udp %s -> %s: %s", fmt_addr(*address[:2]), self.spec.bind, server.addr, e)
            return None
        session = Session(address, sock, server.addr)
        session.greenlet = gevent.spawn(self._answers, session)
        self.sessions[address] = session
        self.stats.active = len(self.sessions)
        self.stats.total += 1
        log.info("%s udp %s -> %s: new session", fmt_addr(*address[:2]), self.spec.bind, server.addr)
        return session

    def _answers(self, session: Session) -> None:
        """The upstream's datagrams go back to this session's client only."""
        while True:
            try:
                data = session.sock.recv(MAX_DATAGRAM)
                self.socket.sendto(data, session.client)
            except ConnectionRefusedError:
                continue  # ICMP port unreachable from the upstream: the session stays
            except OSError:
                return
            session.last = time.monotonic()
            self.stats.bytes_out += len(data)

    def _expire(self) -> None:
        while True:
            timeout = self.ctx.cfg.client_timeout
            gevent.sleep(max(0.05, min(1.0, timeout / 4)))
            now = time.monotonic()
            for address, session in list(self.sessions.items()):
                if now - session.last >= self.ctx.cfg.client_timeout:
                    del self.sessions[address]
                    session.close()
                    log.info("%s udp %s: session expired", fmt_addr(*address[:2]), self.spec.bind)
            self.stats.active = len(self.sessions)


def listener_specs(cfg) -> list[ListenerSpec]:
    """One forwarder per ``[[stream.server]]`` with ``bind_mode = "udp"``."""
    if cfg.stream is None:
        return []
    return [ListenerSpec("stream-udp", srv.bind, (srv, cfg.stream.upstream_named(srv.up_name)),
                         f"stream.server[{i}].bind", UdpForwarder, transport="udp")
            for i, srv in enumerate(cfg.stream.server) if srv.bind_mode == "udp"]
