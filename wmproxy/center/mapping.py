"""Intranet penetration on the center server: the public ports of the clients' tcp mappings.

Each tcp mapping a client declares gets its own public listener on its ``remote_bind``,
checked at registration: a port outside ``allow_ports``, or one another client already holds,
is refused with a reason (MAPPING+ACK). A public connection becomes a TCP stream on the link of
the client that owns the mapping; the client dials the private service. The listeners belong
to their link: they close when it ends, and open again when the client comes back.
"""

from __future__ import annotations

import logging

from gevent.server import StreamServer

from ..config import Addr, to_addr
from ..net.dial import fmt_addr
from ..net.listen import BindError, open_listener
from ..net.relay import RelayStats, relay
from ..prot import frame as fr
from ..prot.frame import CreateMode

log = logging.getLogger("wmproxy.center")


class HttpRoute:
    """One http mapping: requests whose Host matches ``domain`` go to ``link`` (None while
    its client is offline: then they get 502)."""

    def __init__(self, name: str, owner: str, domain: str, rules: tuple = (), mode: str = "http") -> None:
        self.mode = mode  # http (map_http_bind) or https (map_https_bind)
        self.name = name
        self.owner = owner
        self.domain = domain
        self.request_rules = tuple(r for r in rules if r.is_proxy)  # on the request to the service
        self.response_rules = tuple(r for r in rules if not r.is_proxy)
        self.rules = tuple(rules)
        self.link = None
        self.requests = 0

    @property
    def label(self) -> str:
        return f"{self.mode} Host {self.domain}"

    def attach(self, link) -> None:
        self.link = link

    @property
    def online(self) -> bool:
        return self.link is not None and not self.link.closed


class PublicPort(StreamServer):
    """The public listener of one tcp mapping; ``link`` is set once the handshake is done."""

    def __init__(self, sock, name: str, owner: str, idle_timeout: float, mode: CreateMode = CreateMode.TCP) -> None:
        super().__init__(sock)
        self.mode = mode  # TCP: the client dials the service; PROXY: it runs a forward proxy
        self.name = name
        self.owner = owner
        self.idle_timeout = idle_timeout
        self.link = None
        self.bind = ""
        self.connections = 0

    @property
    def label(self) -> str:
        return self.bind

    def attach(self, link) -> None:
        self.link = link
        self.start()

    def handle(self, conn, address) -> None:
        link = self.link
        peer = fmt_addr(address[0], address[1])
        if link is None or link.closed:
            log.info("%s mapping %s: client %s is not connected, connection closed", peer, self.name, self.owner)
            return
        try:
            stream = link.open_stream(self.mode, self.name)
        except ConnectionError as e:
            log.info("%s mapping %s: %s", peer, self.name, e)
            return
        self.connections += 1
        stats = RelayStats()
        relay(conn, stream, self.idle_timeout, stats=stats)
        log.info("%s mapping %s (%s) done (%s) in=%d out=%d", peer, self.name, self.owner, stats.reason,
                 stats.a_to_b, stats.b_to_a)


class MappingRegistry:
    """The tcp mappings of every link of one center server, by public address."""

    def __init__(self) -> None:
        self.ports: dict[str, PublicPort] = {}
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

    def register(self, owner: str, mappings: list[fr.MappingSpec], allow_ports: tuple,
                 idle_timeout: float, host_modes: frozenset = frozenset()) -> tuple[list[fr.MappingAnswer], list]:
        """Check and bind what ``owner``'s mappings need (a public port per tcp mapping, a
        route per http one). Returns the answers and the published items, not yet attached:
        the caller attaches the link (a port then starts serving)."""
        answers, published = [], []
        for m in mappings:
            reason = ""
            if m.mode in ("http", "https"):
                reason = self._route(owner, m, host_modes, published)
            elif m.mode not in ("tcp", "proxy"):
                reason = f"mode {m.mode!r} is not served by this server (tcp, http and proxy only)"
            else:
                try:
                    addr = to_addr(m.remote_bind)
                except ValueError as e:
                    addr, reason = None, f"remote_bind: {e}"
                if addr is not None:
                    reason = self._refusal(owner, addr, allow_ports)
                if not reason:
                    try:
                        sock = open_listener(addr, f"mapping {m.name}")
                    except BindError as e:
                        reason = str(e)
                    else:
                        mode = CreateMode.PROXY if m.mode == "proxy" else CreateMode.TCP
                        port = PublicPort(sock, m.name, owner, idle_timeout, mode)
                        port.bind = str(addr)
                        self.ports[str(addr)] = port
                        published.append(port)
            if reason:
                log.warning("center: mapping %r of client %s refused: %s", m.name, owner, reason)
            answers.append(fr.MappingAnswer(m.name, not reason, reason))
        return answers, published

    def _route(self, owner: str, m: fr.MappingSpec, host_modes: frozenset, published: list) -> str:
        """Register an http(s) mapping's domain, or say why not."""
        if m.mode not in host_modes:
            return f"this server has no map_{m.mode}_bind for {m.mode} mappings"
        domain = m.domain.strip().lower()
        if not domain:
            return f"an {m.mode} mapping needs a domain"
        held = self.routes.get((m.mode, domain))
        if held is not None and held.owner != owner and held.online:
            return f"domain {domain} is already held by client {held.owner} (mapping {held.name})"
        route = HttpRoute(m.name, owner, domain, m.headers, m.mode)
        self.routes[(m.mode, domain)] = route  # an offline holder's or this owner's old route is replaced
        published.append(route)
        return ""

    def _refusal(self, owner: str, addr: Addr, allow_ports: tuple) -> str:
        if allow_ports and not any(lo <= addr.port <= hi for lo, hi in allow_ports):
            ranges = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in allow_ports)
            return f"port {addr.port} is outside allow_ports ({ranges})"
        held = self.ports.get(str(addr))
        if held is not None:
            return f"{addr} is already held by client {held.owner} (mapping {held.name})"
        return ""

    def update(self, owner: str, link, ports: list, specs: list[fr.MappingSpec], allow_ports: tuple,
               idle_timeout: float, host_modes: frozenset = frozenset()) -> list[fr.MappingAnswer]:
        """A live link's new mappings: withdraw the removed and moved ones, publish the new
        ones, leave the unchanged ones (and their connections) alone. Updates ``ports``."""
        wanted = {m.name: m for m in specs}

        def same(item) -> bool:
            m = wanted.get(item.name)
            if isinstance(item, HttpRoute):
                return m is not None and m.mode == item.mode and m.domain.lower() == item.domain and \
                    tuple(m.headers) == item.rules
            return m is not None and m.mode in ("tcp", "proxy") and m.remote_bind == item.bind and \
                (m.mode == "proxy") == (item.mode == CreateMode.PROXY)

        gone = [p for p in ports if not same(p)]
        self.withdraw(gone, forget=True)
        ports[:] = [p for p in ports if p not in gone]
        kept = {p.name for p in ports}
        answers, bound = self.register(owner, [m for m in specs if m.name not in kept], allow_ports, idle_timeout,
                                       host_modes)
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
                item.close()
            log.info("center: mapping %r of client %s withdrawn", item.name, item.owner)

    def status(self) -> list[dict]:
        return [*({"name": p.name, "mode": p.mode.name.lower(), "client": p.owner, "remote_bind": bind,
                   "connected": p.link is not None and not p.link.closed, "connections": p.connections}
                  for bind, p in self.ports.items()),
                *({"name": r.name, "mode": r.mode, "client": r.owner, "domain": r.domain, "connected": r.online,
                   "requests": r.requests} for r in self.routes.values())]
