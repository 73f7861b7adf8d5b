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

import gevent
from gevent import socket as gsocket

from ..config import Addr, Config
from ..errors import UpstreamError
from ..listener import ListenerSpec, ShownInStatus
from ..net.balance import hash_index
from ..net.conn import Address
from ..net.dial import fmt_addr
from ..net.udp import MAX_DATAGRAM, UdpSession, UdpSessions
from ..services import Services
from .tcp import StreamContext, StreamSettings

log = logging.getLogger("wmproxy.stream")


class Session(UdpSession):
    """A client's connected socket to its upstream server."""

    __slots__ = ("sock", "server", "forwarder")

    def __init__(self, peer: Address, sock: socket.socket, server: Addr, forwarder: "UdpForwarder") -> None:
        super().__init__(peer)
        self.sock = sock
        self.server = server
        self.forwarder = forwarder

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as e:
            log.info("%s %s: send to %s failed: %s", fmt_addr(*self.peer[:2]), self.forwarder.label, self.server, e)

    def close(self) -> None:
        super().close()
        self.sock.close()

    def answers(self) -> None:
        """The upstream's datagrams go back to this session's client only."""
        while True:
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except ConnectionRefusedError:
                continue  # ICMP port unreachable from the upstream: the session stays
            except OSError:
                return
            self.forwarder.answer(self, data)


class UdpForwarder(ShownInStatus, UdpSessions):
    """One ``[[stream.server]]`` with ``bind_mode = "udp"``; plugs into the app like a Listener."""

    kind = "stream-udp"

    def __init__(self, sock: socket.socket, spec: ListenerSpec, services: Services) -> None:
        super().__init__(sock)
        self.draining = False
        self.update(spec, services)

    # -- the app's listener interface ---------------------------------------------------------
    def update(self, spec: ListenerSpec, services: Services) -> None:
        """New sessions use the new settings; live ones keep their server."""
        self.ctx = StreamContext(spec.settings.server, spec.settings.upstream, services.resolver, self.stats)
        self.spec = spec
        self.label = f"udp {spec.bind}"
        self.timeout = self.ctx.cfg.client_timeout
        self.max_sessions = self.ctx.cfg.max_sessions

    def drain(self, grace: float) -> int:
        self.draining = True
        return self.close_sessions()

    # -- sessions -----------------------------------------------------------------------------
    def open_session(self, peer: Address) -> Session | None:
        ctx = self.ctx
        servers = ctx.upstream.server
        if ctx.upstream.method == "ip_hash":
            server = servers[hash_index(peer[0], len(servers))]
        else:
            server = servers[ctx.balancer.pick()]
        try:
            family, ip = ctx.resolver.resolve(server.addr.host)[0]
            sock = gsocket.socket(family, socket.SOCK_DGRAM)
            sock.connect((ip, server.addr.port))
        except (UpstreamError, OSError) as e:
            log.warning("%s %s -> %s: %s", fmt_addr(*peer[:2]), self.label, server.addr, e)
            return None
        session = Session(peer, sock, server.addr, self)
        session.greenlet = gevent.spawn(session.answers)
        log.info("%s %s -> %s: new session", fmt_addr(*peer[:2]), self.label, server.addr)
        return session


def listener_specs(cfg: Config) -> list[ListenerSpec]:
    """One forwarder per ``[[stream.server]]`` with ``bind_mode = "udp"``."""
    if cfg.stream is None:
        return []
    return [ListenerSpec("stream-udp", srv.bind, StreamSettings(srv, cfg.stream.upstream_named(srv.up_name)),
                         f"stream.server[{i}].bind", UdpForwarder, transport="udp")
            for i, srv in enumerate(cfg.stream.server) if srv.bind_mode == "udp"]
