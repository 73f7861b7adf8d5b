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

import hmac
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
from ..net.throttle import Quota, enter_all
from ..net.udp import UdpSession, UdpSessions
from ..prot import frame as fr
from ..prot.frame import CreateMode
from ..web.h2up import H2Pool

if TYPE_CHECKING:
    from .server import CenterServerContext
    from .link import CenterLink
    from .vconn import VirtualConn

#: what a link published: its memberships of tcp/proxy ports, its udp ports, its http/https routes
Published = Union["PortMember", "PublicUdpPort", "HttpRoute"]

log = logging.getLogger("wmproxy.center")

LOG_EACH = 20  # mappings published, refused or withdrawn at once past this many: one more line with the count


def log_each(level: int, fmt: str, rows: list[tuple], more: str) -> None:
    """A line per row (``fmt``), but past LOG_EACH rows one line (``more``, with their count)
    for the rest: a client that publishes thousands of mappings writes tens of lines, not
    thousands (a flood of the log, and of the time its lines take)."""
    for row in rows[:LOG_EACH]:
        log.log(level, fmt, *row)
    if len(rows) > LOG_EACH:
        log.log(level, more, len(rows) - LOG_EACH)


class Figures:
    """One mapping's connections (or, for http, the public connections holding a stream to
    it) and bytes: counted as they end, read live while they run. ``bytes_in`` came from the
    public side, ``bytes_out`` went to it."""

    __slots__ = ("active", "total", "done_in", "done_out", "running")

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.done_in = 0
        self.done_out = 0
        self.running: set[RelayStats] = set()  # relays under way: their counts are read live

    def opened(self, stats: RelayStats | None = None) -> None:
        self.active += 1
        self.total += 1
        if stats is not None:
            self.running.add(stats)

    def closed(self, stats: RelayStats | None = None) -> None:
        self.active -= 1
        if stats is not None:
            self.running.discard(stats)
            self.add(stats.a_to_b, stats.b_to_a)

    def add(self, b_in: int, b_out: int) -> None:
        self.done_in += b_in
        self.done_out += b_out

    def row(self) -> dict:
        return {"connections": self.active, "connections_total": self.total,
                "bytes_in": self.done_in + sum(s.a_to_b for s in self.running),
                "bytes_out": self.done_out + sum(s.b_to_a for s in self.running)}


class HttpRoute:
    """One http(s) mapping: requests whose Host matches ``domain`` go to ``link`` (None while
    its client is offline: then they get 502). A ``passthrough`` route (wire mode tls) takes
    whole TLS connections by SNI on map_https_bind instead."""

    def __init__(self, name: str, owner: str, domain: str, rules: tuple = (), mode: str = "http",
                 group: str = "", group_key: str = "") -> None:
        self.group = group  # several clients' routes of one group share the domain
        self.group_key = group_key
        self.wire_mode = mode  # as in MAPPING: http, https or tls; http+h2, https+h2: the service speaks h2c
        base, _, local = mode.partition("+")
        self.local_h2 = local == "h2"
        self.h2 = H2Pool()  # (local_h2: the HTTP/2 connection to the service, over a stream of the link)
        self.passthrough = base == "tls"
        self.mode = "https" if self.passthrough else base  # the listener: http (map_http_bind), https (map_https_bind)
        self.name = name
        self.owner = owner
        self.holder = owner  # who holds it (account and client id): another holder's claim is a conflict
        self.domain = domain
        self.request_rules = tuple(r for r in rules if r.is_proxy)  # on the request to the service
        self.response_rules = tuple(r for r in rules if not r.is_proxy)
        self.rules = tuple(rules)
        self.link: Optional[CenterLink] = None
        self.requests = 0
        self.figures = Figures()

    @property
    def label(self) -> str:
        return f"https SNI {self.domain} (passed through)" if self.passthrough else f"{self.mode} Host {self.domain}"

    def attach(self, link: "CenterLink") -> None:
        if link is not self.link:
            self.h2.close()  # (streams of another link)
        self.link = link

    @property
    def online(self) -> bool:
        return self.link is not None and not self.link.closed


class PortMember:
    """One client's publication of a tcp or proxy mapping's public port: the port's only
    member, or one of its group's (``group``, ``group_key``)."""

    def __init__(self, port: "PublicPort", name: str, owner: str, holder: str, group: str = "",
                 group_key: str = "", asked: str = "") -> None:
        self.port = port
        self.asked = asked  # the remote_bind the mapping named ('': the server's map_tcp_bind / map_proxy_bind)
        self.name = name
        self.owner = owner
        self.holder = holder  # who holds it (account and client id): another holder's claim is a conflict
        self.group = group
        self.group_key = group_key
        self.link: Optional[CenterLink] = None
        self.figures = Figures()

    @property
    def mode(self) -> str:
        return self.port.mode

    @property
    def bind(self) -> str:
        return self.port.bind

    @property
    def label(self) -> str:
        return self.port.bind

    @property
    def online(self) -> bool:
        return self.link is not None and not self.link.closed

    def attach(self, link: "CenterLink") -> None:
        self.link = link
        if not self.port.started:  # (a port already serving: another member's, or handed over to a new link)
            self.port.start()


class PublicPort(AcceptGuard, StreamServer):
    """The public listener of a tcp or proxy mapping: each connection goes to one of its
    members (round robin over those whose link is up; one member unless a group shares it)."""

    def __init__(self, sock: socket.socket, name: str, idle_timeout: float, mode: str = "tcp",
                 max_per_ip: int = 0, proxy_in: ProxyProtocolIn | None = None) -> None:
        super().__init__(sock)
        self.proxy_in = proxy_in  # [center] map_proxy_protocol
        self.name = name  # (the first member's: for log lines about the port itself)
        self.per_ip = PerIpLimit(f"mapping {name}")
        self.max_per_ip = max_per_ip
        self.mode = mode  # tcp: the client dials the service; proxy: it runs a forward proxy
        self.create_mode = CreateMode.PROXY if mode == "proxy" else CreateMode.TCP
        self.idle_timeout = idle_timeout
        self.members: list[PortMember] = []
        self._turn = 0
        self.bind = ""
        self.where = ""  # its key in the registry's ports
        self.registry: Optional["MappingRegistry"] = None  # (its quotas: set by the registry that opened it)

    def withdraw(self) -> None:
        self.close()

    def pick(self) -> Optional[PortMember]:
        """The next member whose link is up (round robin), or None."""
        count = len(self.members)
        for i in range(count):
            member = self.members[(self._turn + i) % count]
            if member.online:
                self._turn = (self._turn + i + 1) % count
                return member
        return None

    def handle(self, conn: socket.socket, address: Address) -> None:
        if self.proxy_in is not None:
            real = accept_proxy_header(conn, address, self.proxy_in, f"mapping {self.name}")
            if real is None:
                return
            address = real
        peer = fmt_addr(address[0], address[1])
        member = self.pick()
        if member is None or member.link is None:
            log.info("%s mapping %s: no client of it is connected, connection closed", peer, self.name)
            return
        ip = address[0]
        if not self.per_ip.enter(ip, self.max_per_ip):
            return
        quotas = self.registry.quotas(member.owner, member.holder, member.name) if self.registry is not None else []
        full = enter_all(quotas)
        if full is not None:
            self.per_ip.leave(ip)
            log.info("%s mapping %s: refused: %s", peer, member.name, full.full_text)
            return
        try:
            stream = member.link.open_stream(self.create_mode, member.name, (address, conn.getsockname()))
        except ConnectionError as e:
            self.per_ip.leave(ip)
            for q in quotas:
                q.leave()
            log.info("%s mapping %s: %s", peer, member.name, e)
            return
        stats = RelayStats()
        member.figures.opened(stats)

        def done(stats: RelayStats) -> None:
            self.per_ip.leave(ip)
            for q in quotas:
                q.leave()
            member.figures.closed(stats)
            log.info("%s mapping %s (%s) done (%s) in=%d out=%d", peer, member.name, member.owner, stats.reason,
                     stats.a_to_b, stats.b_to_a)
        relay_then(conn, stream, done, link_owned, self.idle_timeout, stats=stats,
                   shared=[q.buckets for q in quotas if q.buckets is not None])


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
        self.group = ""  # (udp mappings are in no group)
        self.timeout = timeout
        self.link: Optional[CenterLink] = None
        self.bind = ""
        self.where = ""  # its key in the registry's ports
        self.dropped = 0

    @property
    def label(self) -> str:  # type: ignore[override]  # (a class attribute in UdpSessions)
        return f"udp {self.bind}"

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
    """``item`` is published as mapping ``m`` asks (same name, mode, public side and group)."""
    if item.name != m.name:
        return False
    if isinstance(item, HttpRoute):
        return m.mode == item.wire_mode and m.domain.lower() == item.domain and tuple(m.headers) == item.rules \
            and (m.group, m.group_key) == (item.group, item.group_key)
    if isinstance(item, PortMember):
        return m.mode == item.mode and m.remote_bind == item.asked and (m.group, m.group_key) == (item.group,
                                                                                                item.group_key)
    return m.mode == item.mode and m.remote_bind == item.bind


def _joins(members: list, holder: str, m: fr.MappingSpec) -> bool:
    """Mapping ``m`` of ``holder`` may join ``members`` (another holder's routes or port
    members): all of one group, ``m``'s, with its key."""
    return bool(m.group) and all(
        x.holder != holder and x.group == m.group and hmac.compare_digest(x.group_key.encode(), m.group_key.encode())
        for x in members)


def _port_key(mode: str, addr: Addr) -> str:
    """TCP and UDP ports are separate: a udp mapping may take the number a tcp one has."""
    return f"{addr}/udp" if mode == "udp" else str(addr)


DISABLED = "disabled by the operator (control API) until enabled again or the next reload"


class MappingRegistry:
    """The tcp mappings of every link of one center server, by public address."""

    def __init__(self) -> None:
        self.ports: dict[str, PublicPort | PublicUdpPort] = {}  # "host:port" (tcp, proxy), "host:port/udp"
        # (mode, domain or '*.domain') -> its routes: one, or the members of its group
        self.routes: dict[tuple[str, str], list[HttpRoute]] = {}
        self._turns: dict[tuple[str, str], int] = {}  # round robin over a group's members
        # what each holder asked for last (its MAPPING), by name: to publish a mapping again on enable
        self.asked: dict[str, dict[str, fr.MappingSpec]] = {}
        self.users: dict = {}  # the accounts' limits ([[center.users]] by name), the server's config in force
        self._account_quotas: dict[str, Quota] = {}
        self._mapping_quotas: dict[tuple[str, str], Quota] = {}
        # (holder, name) -> (its owner, its spec) of the mappings an operator disabled (control API): refused
        # to their client, even across its new links, until enabled again or the next reload or restart
        self.disabled: dict[tuple[str, str], tuple[str, Optional[fr.MappingSpec]]] = {}

    def find_route(self, host: str, mode: str = "http") -> HttpRoute | None:
        """The http(s) mapping for a Host: exact name first, then the longest matching wildcard;
        of a group, the next member whose link is up (round robin), else an offline one (502)."""
        host = host.lower().rstrip(".")
        where = (mode, host)
        if where not in self.routes:
            best = ""
            for route_mode, domain in self.routes:
                if route_mode == mode and domain.startswith("*.") and host.endswith(domain[1:]) and \
                        len(domain) > len(best):
                    best = domain
            if not best:
                return None
            where = (mode, best)
        members = self.routes[where]
        if len(members) == 1:
            return members[0]
        turn = self._turns.get(where, 0)
        for i in range(len(members)):
            route = members[(turn + i) % len(members)]
            if route.online:
                self._turns[where] = (turn + i + 1) % len(members)
                return route
        return members[0]

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
        self.asked.setdefault(holder, {}).update((m.name, m) for m in mappings)
        # (every step here takes time in proportion to the mappings: a client may send tens of
        # thousands in one MAPPING, and the server's loop waits for this)
        reusable: dict[str, list[Published]] = {}
        for item in reuse:
            reusable.setdefault(item.name, []).append(item)
        taken: set[int] = set()
        for m in mappings:
            match = next((item for item in reusable.get(m.name, ()) if id(item) not in taken and _same(item, m)), None)
            if match is not None:
                kept[m.name] = match
                taken.add(id(match))
        self.withdraw([item for item in reuse if id(item) not in taken], forget=True)
        self.users = policy.users
        user = policy.users.get(owner)
        limit = user.max_mappings if user is not None else 0
        held = self._held(owner) if limit else 0  # (the account's, on every link of it)
        reused = 0  # of ``published``, the kept ones (the others count against max_mappings)
        refused: list[tuple] = []
        for m in mappings:
            reason = ""
            if (holder, m.name) in self.disabled:
                self.disabled[(holder, m.name)] = (owner, m)
                reason = DISABLED
            elif m.name in kept:
                published.append(kept[m.name])
                reused += 1
            elif limit and held + len(published) - reused >= limit:
                reason = f"account {owner!r} may publish {limit} mappings (max_mappings), all its clients together"
            elif m.mode in ("http", "https", "tls", "http+h2", "https+h2"):
                reason = self._route(owner, holder, m, policy.host_modes, published)
            elif m.mode not in ("tcp", "udp", "proxy"):
                reason = (f"mode {m.mode!r} is not served by this server (tcp, udp, http, https, tls, proxy, and "
                          f"http+h2 or https+h2 for an HTTP/2 service)")
            else:
                reason = self._port(owner, holder, m, policy, published)
            if reason:
                refused.append((m.name, owner, reason))
            answers.append(fr.MappingAnswer(m.name, not reason, reason))
        log_each(logging.WARNING, "center: mapping %r of client %s refused: %s", refused,
                 f"center: %d more mappings of client {owner} refused")
        return answers, published

    def _route(self, owner: str, holder: str, m: fr.MappingSpec, host_modes: frozenset,
               published: list[Published]) -> str:
        """Register an http(s) mapping's domain, or say why not."""
        mode = m.mode.partition("+")[0]
        if mode not in host_modes:
            if mode == "https" and "tls" in host_modes:
                return "this server has no map_cert (nor map_acme) to end TLS with (tls_passthrough mappings only)"
            listener = "map_https_bind" if mode == "tls" else f"map_{mode}_bind"
            return f"this server has no {listener} for {'https' if mode == 'tls' else mode} mappings"
        domain = m.domain.strip().lower()
        if not domain:
            return f"an {mode} mapping needs a domain"
        route = HttpRoute(m.name, owner, domain, m.headers, m.mode, m.group, m.group_key)
        route.holder = holder
        others = [r for r in self.routes.get((route.mode, domain), []) if r.online and r.holder != holder]
        if others and not _joins(others, holder, m):
            return f"domain {domain} is already held by client {others[0].owner} (mapping {others[0].name})"
        # (offline holders' and this holder's old routes are replaced)
        self.routes[(route.mode, domain)] = [*others, route]
        published.append(route)
        return ""

    def _port(self, owner: str, holder: str, m: fr.MappingSpec, policy: CenterServerContext,
              published: list[Published]) -> str:
        """Open a tcp, udp or proxy mapping's public port, or say why not."""
        shared = policy.shared_ports.get(m.mode) if not m.remote_bind else None
        if shared is not None:
            addr = shared  # (the operator's own port: allow_ports does not apply)
        elif not m.remote_bind:
            return f"no remote_bind, and this server has no map_{m.mode}_bind for {m.mode} mappings without one"
        else:
            try:
                addr = to_addr(m.remote_bind)
            except ValueError as e:
                return f"remote_bind: {e}"
        user = policy.users.get(owner)
        allow_ports = user.allow_ports if user is not None and user.allow_ports else policy.allow_ports
        if shared is None and allow_ports and not any(lo <= addr.port <= hi for lo, hi in allow_ports):
            ranges = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in allow_ports)
            return f"port {addr.port} is outside allow_ports ({ranges})"
        where = _port_key(m.mode, addr)
        held = self.ports.get(where)
        if isinstance(held, PublicPort) and held.mode == m.mode and _joins(held.members, holder, m):
            member = PortMember(held, m.name, owner, holder, m.group, m.group_key, m.remote_bind)
            held.members.append(member)  # (serving once attached to its link)
            published.append(member)
            return ""
        if held is not None:
            first = held.members[0] if isinstance(held, PublicPort) and held.members else held
            return f"{where} is already held by client {first.owner} (mapping {first.name})"
        try:
            if m.mode == "udp":
                udp = PublicUdpPort(open_udp(addr, f"mapping {m.name}"), m.name, owner, policy.udp_timeout)
                udp.holder = holder
                udp.bind = str(addr)
                udp.where = where
                self.ports[where] = udp
                published.append(udp)
                return ""
            port = PublicPort(open_listener(addr, f"mapping {m.name}"), m.name, policy.idle_timeout, m.mode,
                              policy.max_per_ip, policy.map_proxy_in)
        except BindError as e:
            return str(e)
        port.bind = str(addr)
        port.where = where
        port.registry = self
        member = PortMember(port, m.name, owner, holder, m.group, m.group_key, m.remote_bind)
        port.members.append(member)
        self.ports[where] = port
        published.append(member)
        return ""

    def update(self, owner: str, holder: str, link: "CenterLink", ports: list[Published], specs: list[fr.MappingSpec],
               policy: CenterServerContext) -> list[fr.MappingAnswer]:
        """A live link's new mappings: withdraw the removed and moved ones, publish the new
        ones, leave the unchanged ones (and their connections) alone. Updates ``ports``."""
        wanted = {m.name: m for m in specs}
        self.asked[holder] = dict(wanted)
        gone = [p for p in ports if p.name not in wanted or not _same(p, wanted[p.name])]
        self.withdraw(gone, forget=True)
        gone_ids = {id(p) for p in gone}
        ports[:] = [p for p in ports if id(p) not in gone_ids]
        kept = {p.name for p in ports}
        answers, bound = self.register(owner, holder, [m for m in specs if m.name not in kept], policy)
        for item in bound:
            item.attach(link)
            ports.append(item)
        self.log_published(bound, owner)
        by_name = {a.name: a for a in answers}
        return [by_name.get(m.name, fr.MappingAnswer(m.name, True)) for m in specs]

    def quotas(self, owner: str, holder: str, name: str) -> list[Quota]:
        """The shared limits a public connection to mapping ``name`` of ``holder`` (account
        ``owner``) counts in: its account's and its own, as [[center.users]] set them now."""
        user = self.users.get(owner)
        if user is None:
            return []
        out = []
        if user.max_connections or user.bandwidth:
            q = self._account_quotas.get(owner) or self._account_quotas.setdefault(owner, Quota(f"account {owner}"))
            q.set(user.max_connections, user.bandwidth)
            out.append(q)
        if user.mapping_max_connections or user.mapping_bandwidth:
            q = self._mapping_quotas.get((holder, name)) or self._mapping_quotas.setdefault(
                (holder, name), Quota(f"mapping {name} of {holder}"))
            q.set(user.mapping_max_connections, user.mapping_bandwidth)
            out.append(q)
        return out

    def _held(self, owner: str) -> int:
        """The mappings account ``owner`` has published now (on all its links)."""
        members = [m for p in self.ports.values() for m in (p.members if isinstance(p, PublicPort) else [p])]
        routes = [r for rs in self.routes.values() for r in rs if r.online]
        return sum(1 for item in [*members, *routes] if item.owner == owner)

    def disable(self, owner: str, holder: str, name: str, ports: list[Published]) -> bool:
        """An operator withdraws mapping ``name`` of ``holder`` (its published items in
        ``ports``, updated) until :meth:`enable` or the next reload; False if it has none."""
        items = [p for p in ports if p.name == name]
        spec = self.asked.get(holder, {}).get(name)
        if not items and spec is None:
            return False
        self.withdraw(items, forget=True)
        ports[:] = [p for p in ports if p not in items]
        self.disabled[(holder, name)] = (owner, spec)
        log.warning("center: mapping %r of client %s disabled by the operator (control API) until enabled again or "
                    "the next reload", name, holder)
        return True

    def enable(self, holder: str, name: str, link: Optional["CenterLink"], ports: list[Published],
               policy: CenterServerContext) -> Optional[fr.MappingAnswer]:
        """Publish a disabled mapping again (on ``link``, its client's live link, if any).
        None when it was not disabled; else the answer (a port another client took meanwhile
        is refused as at a MAPPING)."""
        if (holder, name) not in self.disabled:
            return None
        owner, spec = self.disabled.pop((holder, name))
        log.info("center: mapping %r of client %s enabled again by the operator (control API)", name, holder)
        if link is None or link.closed or spec is None:
            return fr.MappingAnswer(name, True, "published when its client links again")
        answers, bound = self.register(owner, holder, [spec], policy)
        for item in bound:
            item.attach(link)
            ports.append(item)
            log.info("center: mapping %r of client %s published on %s", item.name, owner, item.label)
        return answers[0]

    @staticmethod
    def log_published(items: list[Published], owner: str) -> None:
        log_each(logging.INFO, "center: mapping %r of client %s published on %s",
                 [(item.name, owner, item.label) for item in items],
                 f"center: %d more mappings of client {owner} published (GET /api/mappings lists them all)")

    def withdraw(self, items: list, forget: bool = False) -> None:
        """A link ended (or its client dropped these mappings, ``forget``): public ports
        close; http routes stay known but offline (their Host gets 502), unless forgotten."""
        log_each(logging.INFO, "center: mapping %r of client %s withdrawn", [(item.name, item.owner) for item in items],
                 "center: %d more mappings withdrawn")
        for item in items:
            if isinstance(item, HttpRoute):
                item.link = None
                item.h2.close()
                where = (item.mode, item.domain)
                members = self.routes.get(where, [])
                if forget and item in members:
                    members.remove(item)
                    if not members:
                        del self.routes[where]
                        self._turns.pop(where, None)
            elif isinstance(item, PortMember):
                item.link = None
                port = item.port
                if item in port.members:
                    port.members.remove(item)
                if not port.members:  # the last member: the port closes
                    self._forget_port(port)
                    port.withdraw()
            else:
                self._forget_port(item)
                item.withdraw()

    def _forget_port(self, port: PublicPort | PublicUdpPort) -> None:
        if self.ports.get(port.where) is port:
            del self.ports[port.where]

    def status(self) -> list[dict]:
        return [*self._published(), *({"name": name, "mode": spec.mode if spec else "?", "client": owner,
                                        "holder": holder,
                                        "connected": False, "disabled": True,
                                        **({"remote_bind": spec.remote_bind} if spec and spec.remote_bind else
                                           {"domain": spec.domain} if spec and spec.domain else {})}
                                       for (holder, name), (owner, spec) in self.disabled.items())]

    def _published(self) -> list[dict]:
        ports: list[PortMember | PublicUdpPort] = [
            member for p in self.ports.values() for member in (p.members if isinstance(p, PublicPort) else [p])]
        return [*({"name": p.name, "mode": p.mode, "client": p.owner, "holder": p.holder, "remote_bind": p.bind,
                   "connected": p.link is not None and not p.link.closed, **_figures(p),
                   **({"group": p.group} if p.group else {})} for p in ports),
                *({"name": r.name, "mode": "https passthrough" if r.passthrough else r.mode, "client": r.owner,
                   "holder": r.holder,
                   "domain": r.domain, "connected": r.online, "requests": r.requests, **r.figures.row(),
                   **({"group": r.group} if r.group else {})}
                  for members in self.routes.values() for r in members)]


def _figures(item: "PortMember | PublicUdpPort") -> dict:
    if isinstance(item, PortMember):
        return item.figures.row()
    st = item.stats  # (a udp port's sessions)
    return {"connections": st.active, "connections_total": st.total, "bytes_in": st.bytes_in,
            "bytes_out": st.bytes_out}
