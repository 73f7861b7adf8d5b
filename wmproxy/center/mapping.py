"""Intranet penetration on the center server: the clients' mappings.

Each tcp, udp or proxy mapping a client declares gets its own public port on its
``remote_bind``, checked at registration: a port outside ``allow_ports``, or one another client
already holds, is refused with a reason (MAPPING+ACK). A public TCP connection becomes a stream
on the link of the client that owns the mapping; the client dials the private service. A udp
mapping's public peer address becomes a stream too (CREATE TCP with the mapping's name: the
client dials the mapping's local address, over UDP), each datagram one DATA frame, so
boundaries are kept; a peer quiet for ``udp_timeout`` loses its stream. http and https mappings
are routes by Host on the shared listeners (maphttp.py). Everything belongs to its link: ports
close when it ends, and open again when the client comes back.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Optional, Union

import gevent
from gevent.server import StreamServer

from ..config import Addr, to_addr
from ..listener import AcceptGuard
from ..net.conn import Address
from ..net.dial import fmt_addr
from ..net.limits import PerIpLimit
from ..net.listen import BindError, open_listener, open_udp
from ..net.proxyproto import ProxyProtocolIn, accept as accept_proxy_header
from ..net.relay import RelayStats, link_owned, relay_then
from ..net.udp import UdpSession, UdpSessions
from ..prot import frame as fr
from ..prot.frame import CreateMode

if TYPE_CHECKING:
    from .server import CenterServerContext
    from .link import CenterLink
    from .vconn import VirtualConn

#: what a link published: its port listeners and its http/https routes
Published = Union["PublicPort", "PublicUdpPort", "HttpRoute"]

log = logging.getLogger("wmproxy.center")


class HttpRoute:
    """One http(s) mapping: requests whose Host matches ``domain`` go to ``link`` (None while
    its client is offline: then they get 502). A ``passthrough`` route (wire mode tls) takes
    whole TLS connections by SNI on map_https_bind instead."""

    def __init__(self, name: str, owner: str, domain: str, rules: tuple = (), mode: str = "http") -> None:
        self.wire_mode = mode  # as in MAPPING: http, https or tls
        self.passthrough = mode == "tls"
        self.mode = "https" if self.passthrough else mode  # the listener: http (map_http_bind), https (map_https_bind)
        self.name = name
        self.owner = owner
        self.holder = owner  # who holds it (account and client id): another holder's claim is a conflict
        self.domain = domain
        self.request_rules = tuple(r for r in rules if r.is_proxy)  # on the request to the service
        self.response_rules = tuple(r for r in rules if not r.is_proxy)
        self.rules = tuple(rules)
        self.link: Optional[CenterLink] = None
        self.requests = 0

    @property
    def label(self) -> str:
        return f"https SNI {self.domain} (passed through)" if self.passthrough else f"{self.mode} Host {self.domain}"

    def attach(self, link: "CenterLink") -> None:
        self.link = link

    @property
    def online(self) -> bool:
        return self.link is not None and not self.link.closed


class PublicPort(AcceptGuard, StreamServer):
    """The public listener of one tcp or proxy mapping; ``link`` is set once the handshake is done."""

    def __init__(self, sock: socket.socket, name: str, owner: str, idle_timeout: float, mode: str = "tcp",
                 max_per_ip: int = 0, proxy_in: ProxyProtocolIn | None = None) -> None:
        super().__init__(sock)
        self.proxy_in = proxy_in  # [center] map_proxy_protocol
        self.per_ip = PerIpLimit(f"mapping {name}")
        self.max_per_ip = max_per_ip
        self.mode = mode  # tcp: the client dials the service; proxy: it runs a forward proxy
        self.create_mode = CreateMode.PROXY if mode == "proxy" else CreateMode.TCP
        self.name = name
        self.owner = owner
        self.holder = owner
        self.idle_timeout = idle_timeout
        self.link: Optional[CenterLink] = None
        self.bind = ""
        self.connections = 0

    @property
    def label(self) -> str:
        return self.bind

    def attach(self, link: "CenterLink") -> None:
        self.link = link
        if not self.started:  # (a port handed over to its client's new link is serving already)
            self.start()

    def withdraw(self) -> None:
        self.close()

    def handle(self, conn: socket.socket, address: Address) -> None:
        link = self.link
        if self.proxy_in is not None:
            real = accept_proxy_header(conn, address, self.proxy_in, f"mapping {self.name}")
            if real is None:
                return
            address = real
        peer = fmt_addr(address[0], address[1])
        if link is None or link.closed:
            log.info("%s mapping %s: client %s is not connected, connection closed", peer, self.name, self.owner)
            return
        ip = address[0]
        if not self.per_ip.enter(ip, self.max_per_ip):
            return
        try:
            stream = link.open_stream(self.create_mode, self.name, (address, conn.getsockname()))
        except ConnectionError as e:
            self.per_ip.leave(ip)
            log.info("%s mapping %s: %s", peer, self.name, e)
            return
        self.connections += 1

        def done(stats: RelayStats) -> None:
            self.per_ip.leave(ip)
            log.info("%s mapping %s (%s) done (%s) in=%d out=%d", peer, self.name, self.owner, stats.reason,
                     stats.a_to_b, stats.b_to_a)
        relay_then(conn, stream, done, link_owned, self.idle_timeout)


class LinkSession(UdpSession):
    """One public peer of a udp mapping: a stream on the owner's link."""

    __slots__ = ("vc", "port")

    def __init__(self, peer: Address, vc: "VirtualConn", port: "PublicUdpPort") -> None:
        super().__init__(peer)
        self.vc = vc
        self.port = port

    def send(self, data: bytes) -> None:
        if not self.vc.send_datagram(data):
            self.port.dropped += 1

    def close(self) -> None:
        super().close()
        self.vc.close()

    def answers(self) -> None:
        """The client's datagrams (one DATA frame each) go back to this peer only."""
        why = "the client closed the stream"
        try:
            while data := self.vc.recv_datagram():
                self.port.answer(self, data)
        except OSError as e:
            why = str(e)
        self.greenlet = None  # ending here: nothing to kill
        self.port.end(self, why)


class PublicUdpPort(UdpSessions):
    """The public UDP port of one udp mapping: a session (a stream) per public peer."""

    mode = "udp"

    def __init__(self, sock: socket.socket, name: str, owner: str, timeout: float) -> None:
        super().__init__(sock)
        self.name = name
        self.owner = owner
        self.holder = owner
        self.timeout = timeout
        self.link: Optional[CenterLink] = None
        self.bind = ""
        self.dropped = 0

    @property
    def label(self) -> str:  # type: ignore[override]  # (a class attribute in UdpSessions)
        return f"udp {self.bind}"

    @property
    def connections(self) -> int:
        return self.stats.total

    def attach(self, link: "CenterLink") -> None:
        self.link = link
        if not self.started:
            self.start()

    def withdraw(self) -> None:
        self.close_sessions()

    def open_session(self, peer: Address) -> LinkSession | None:
        link = self.link
        if link is None or link.closed:
            log.debug("%s mapping %s: client %s is not connected, datagram dropped", fmt_addr(*peer[:2]),
                      self.name, self.owner)
            return None
        try:
            vc = link.open_stream(CreateMode.TCP, self.name, (peer, self.socket.getsockname()))
        except ConnectionError as e:
            log.info("%s mapping %s: %s", fmt_addr(*peer[:2]), self.name, e)
            return None
        session = LinkSession(peer, vc, self)
        session.greenlet = gevent.spawn(session.answers)
        log.info("%s mapping %s (%s, udp): new session", fmt_addr(*peer[:2]), self.name, self.owner)
        return session


def _same(item: Published, m: fr.MappingSpec) -> bool:
    """``item`` is published as mapping ``m`` asks (same name, mode and public side)."""
    if item.name != m.name:
        return False
    if isinstance(item, HttpRoute):
        return m.mode == item.wire_mode and m.domain.lower() == item.domain and tuple(m.headers) == item.rules
    return m.mode == item.mode and m.remote_bind == item.bind


def _port_key(mode: str, addr: Addr) -> str:
    """TCP and UDP ports are separate: a udp mapping may take the number a tcp one has."""
    return f"{addr}/udp" if mode == "udp" else str(addr)


class MappingRegistry:
    """The tcp mappings of every link of one center server, by public address."""

    def __init__(self) -> None:
        self.ports: dict[str, PublicPort | PublicUdpPort] = {}  # "host:port" (tcp, proxy), "host:port/udp"
        self.routes: dict[tuple[str, str], HttpRoute] = {}  # (mode, domain or '*.domain') -> route

    def find_route(self, host: str, mode: str = "http") -> HttpRoute | None:
        """The http(s) mapping for a Host: exact name first, then the longest matching wildcard."""
        host = host.lower().rstrip(".")
        route = self.routes.get((mode, host))
        if route is not None:
            return route
        best = None
        for (route_mode, domain), candidate in self.routes.items():
            longer = best is None or len(domain) > len(best.domain)
            if route_mode == mode and domain.startswith("*.") and host.endswith(domain[1:]) and longer:
                best = candidate
        return best

    def register(self, owner: str, holder: str, mappings: list[fr.MappingSpec], policy: CenterServerContext,
                 reuse: list[Published] | tuple = ()) -> tuple[list[fr.MappingAnswer], list[Published]]:
        """Check and bind what ``owner``'s mappings need (a public port per tcp, udp or proxy
        mapping, a route per http(s) one) under ``policy`` (the server's: ``allow_ports``,
        ``idle_timeout``, ``udp_timeout``, ``host_modes``). ``holder`` (account and client id)
        tells clients apart: a domain or port another holder has is refused. ``reuse``: the
        published items of the holder's replaced link: those it asks for again are kept as
        they are (a port keeps its socket), the others withdrawn. Returns the answers and the
        published items, not yet attached: the caller attaches the link (a port then starts
        serving)."""
        answers: list[fr.MappingAnswer] = []
        published: list[Published] = []
        kept: dict[str, Published] = {}
        for m in mappings:
            match = next((item for item in reuse if _same(item, m) and item not in kept.values()), None)
            if match is not None:
                kept[m.name] = match
        self.withdraw([item for item in reuse if item not in kept.values()], forget=True)
        for m in mappings:
            reason = ""
            if m.name in kept:
                published.append(kept[m.name])
            elif m.mode in ("http", "https", "tls"):
                reason = self._route(owner, holder, m, policy.host_modes, published)
            elif m.mode not in ("tcp", "udp", "proxy"):
                reason = f"mode {m.mode!r} is not served by this server (tcp, udp, http, https, tls and proxy)"
            else:
                reason = self._port(owner, holder, m, policy, published)
            if reason:
                log.warning("center: mapping %r of client %s refused: %s", m.name, owner, reason)
            answers.append(fr.MappingAnswer(m.name, not reason, reason))
        return answers, published

    def _route(self, owner: str, holder: str, m: fr.MappingSpec, host_modes: frozenset,
               published: list[Published]) -> str:
        """Register an http(s) mapping's domain, or say why not."""
        if m.mode not in host_modes:
            if m.mode == "https" and "tls" in host_modes:
                return "this server has no map_cert to end TLS with (tls_passthrough mappings only)"
            listener = "map_https_bind" if m.mode == "tls" else f"map_{m.mode}_bind"
            return f"this server has no {listener} for {'https' if m.mode == 'tls' else m.mode} mappings"
        domain = m.domain.strip().lower()
        if not domain:
            return f"an {m.mode} mapping needs a domain"
        route = HttpRoute(m.name, owner, domain, m.headers, m.mode)
        route.holder = holder
        held = self.routes.get((route.mode, domain))
        if held is not None and held.holder != holder and held.online:
            return f"domain {domain} is already held by client {held.owner} (mapping {held.name})"
        self.routes[(route.mode, domain)] = route  # an offline holder's or this holder's old route is replaced
        published.append(route)
        return ""

    def _port(self, owner: str, holder: str, m: fr.MappingSpec, policy: CenterServerContext,
              published: list[Published]) -> str:
        """Open a tcp, udp or proxy mapping's public port, or say why not."""
        try:
            addr = to_addr(m.remote_bind)
        except ValueError as e:
            return f"remote_bind: {e}"
        allow_ports = policy.allow_ports
        if allow_ports and not any(lo <= addr.port <= hi for lo, hi in allow_ports):
            ranges = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in allow_ports)
            return f"port {addr.port} is outside allow_ports ({ranges})"
        where = _port_key(m.mode, addr)
        held = self.ports.get(where)
        if held is not None:
            return f"{where} is already held by client {held.owner} (mapping {held.name})"
        try:
            if m.mode == "udp":
                port = PublicUdpPort(open_udp(addr, f"mapping {m.name}"), m.name, owner, policy.udp_timeout)
            else:
                port = PublicPort(open_listener(addr, f"mapping {m.name}"), m.name, owner, policy.idle_timeout,
                                  m.mode, policy.max_per_ip, policy.map_proxy_in)
        except BindError as e:
            return str(e)
        port.holder = holder
        port.bind = str(addr)
        self.ports[where] = port
        published.append(port)
        return ""

    def update(self, owner: str, holder: str, link: "CenterLink", ports: list[Published], specs: list[fr.MappingSpec],
               policy: CenterServerContext) -> list[fr.MappingAnswer]:
        """A live link's new mappings: withdraw the removed and moved ones, publish the new
        ones, leave the unchanged ones (and their connections) alone. Updates ``ports``."""
        wanted = {m.name: m for m in specs}
        gone = [p for p in ports if p.name not in wanted or not _same(p, wanted[p.name])]
        self.withdraw(gone, forget=True)
        ports[:] = [p for p in ports if p not in gone]
        kept = {p.name for p in ports}
        answers, bound = self.register(owner, holder, [m for m in specs if m.name not in kept], policy)
        for item in bound:
            item.attach(link)
            ports.append(item)
            log.info("center: mapping %r of client %s published on %s", item.name, owner, item.label)
        by_name = {a.name: a for a in answers}
        return [by_name.get(m.name, fr.MappingAnswer(m.name, True)) for m in specs]

    def withdraw(self, items: list, forget: bool = False) -> None:
        """A link ended (or its client dropped these mappings, ``forget``): public ports
        close; http routes stay known but offline (their Host gets 502), unless forgotten."""
        for item in items:
            if isinstance(item, HttpRoute):
                item.link = None
                if forget and self.routes.get((item.mode, item.domain)) is item:
                    del self.routes[(item.mode, item.domain)]
            else:
                for key, value in list(self.ports.items()):
                    if value is item:
                        del self.ports[key]
                item.withdraw()
            log.info("center: mapping %r of client %s withdrawn", item.name, item.owner)

    def status(self) -> list[dict]:
        return [*({"name": p.name, "mode": p.mode, "client": p.owner, "remote_bind": p.bind,
                   "connected": p.link is not None and not p.link.closed, "connections": p.connections}
                  for p in self.ports.values()),
                *({"name": r.name, "mode": "https passthrough" if r.passthrough else r.mode, "client": r.owner,
                   "domain": r.domain, "connected": r.online,
                   "requests": r.requests} for r in self.routes.values())]
