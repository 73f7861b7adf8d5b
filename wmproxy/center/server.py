"""The center server: accepts center clients' links (TLS by default), checks their HMAC
proof, then serves the streams they open: PROXY streams through the forward proxy (with the
server's ``[proxy]`` settings, its defaults when there is no ``[proxy]``), CONNECT streams by
dialling the target.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass

import gevent

from ..config import CenterConfig, Config, ProxyConfig
from ..errors import PhaseTimeout, ProtocolError, UpstreamError
from ..listener import ConnStats, Listener, ListenerSpec
from ..net.conn import Address
from ..net.proxyproto import ProxyProtocolIn, policy
from ..net.dial import dial, fmt_addr
from ..net.limits import AuthThrottle
from ..net.reader import PeerClosed, Reader
from ..net.relay import link_owned, relay_then
from ..net.targets import target_policy
from ..net.tls import server_context
from .trust import ServerTrust
from ..net.writer import close_quietly
from ..prot.frame import CreateMode, Flag, Kind
from ..prot.target import parse_authority
from ..services import Services
from . import handshake
from .link import CenterLink, StreamBudget
from .vconn import VirtualConn
from .mapping import MappingRegistry, Published

log = logging.getLogger("wmproxy.center")

HANDSHAKE_TIMEOUT = 10.0


class CenterServerContext:
    def __init__(self, cfg: CenterConfig, proxy_cfg: ProxyConfig, services: Services, stats: ConnStats) -> None:
        self.cfg = cfg
        self.proxy_cfg = proxy_cfg
        self.resolver = services.resolver
        self.accounts = cfg.accounts()
        self.trust = ServerTrust(cfg) if cfg.tls else None
        self.ssl = self.trust.ssl if self.trust is not None else None
        # client_ca = "pin": the certificate a client presents or offers is checked against its pin
        self.check_cert = self.trust.check if self.trust is not None and self.trust.pins is not None else None
        exposed = cfg.bind is None or not cfg.bind.is_loopback  # center clients may come from anywhere
        self.serve_proxy = services.proxy_handler(proxy_cfg, stats, exposed)
        self.targets = target_policy(proxy_cfg, exposed)  # CONNECT streams too
        # the mapping policy (MappingRegistry.register)
        self.allow_ports = cfg.allow_ports
        self.users = {u.username: u for u in cfg.users}  # an account's own limits
        self.disabled_users = frozenset(u.username for u in cfg.users if u.disabled)
        self.shared_ports = {"tcp": cfg.map_tcp_bind, "proxy": cfg.map_proxy_bind}  # for mappings without remote_bind
        self.idle_timeout = proxy_cfg.idle_timeout
        self.max_per_ip = cfg.max_connections_per_ip  # of each mapping port
        self.map_proxy_in = policy(cfg.map_proxy_protocol, cfg.map_proxy_protocol_from, proxy_cfg.handshake_timeout)
        self.udp_timeout = cfg.udp_timeout
        self.host_modes = _host_modes(cfg)


def _stream_limit(ctx: CenterServerContext, user: str) -> int:
    """``max_streams`` of account ``user`` ('' for an address without an account)."""
    account = ctx.users.get(user) if user else None
    return account.max_streams if account is not None and account.max_streams else ctx.cfg.max_streams


class CenterServer(Listener):
    """``[center] bind``: where center clients connect."""

    kind = "center"

    def __init__(self, sock: socket.socket, spec: ListenerSpec, services: Services) -> None:
        self.links: set[CenterLink] = set()
        self.clients: dict[str, tuple[CenterLink, list[Published]]] = {}  # holder -> its live link, its mappings
        self.mappings = MappingRegistry()
        self.budgets: dict[str, StreamBudget] = {}  # account (address, without accounts) -> its links' streams
        super().__init__(sock, spec, services)
        if not spec.settings.center.tls:
            log.warning("center.bind %s: tls = false, the link is plain TCP: anyone on the path can read "
                        "and alter the traffic", spec.bind)
        center = spec.settings.center
        if not center.accounts() and not center.client_ca and not spec.bind.is_loopback:
            log.warning("center.bind %s: no username/password or users and no client_ca: any center client "
                        "that reaches this port may use it", spec.bind)

    def make_context(self, settings: "CenterSettings", services: Services) -> CenterServerContext:
        center_cfg, proxy_cfg = settings.center, settings.proxy
        throttle = getattr(self, "throttle", None)  # kept across reloads
        if throttle is None:
            throttle = self.throttle = AuthThrottle(center_cfg.auth_fail_limit, center_cfg.auth_fail_window,
                                                    f"center {center_cfg.bind}")
        throttle.configure(center_cfg.auth_fail_limit, center_cfg.auth_fail_window)
        return CenterServerContext(center_cfg, proxy_cfg, services, self.stats)

    def max_connections(self, settings: "CenterSettings") -> int:
        return 10000

    def max_per_ip(self, settings: "CenterSettings") -> int:
        return settings.center.max_connections_per_ip

    def proxy_protocol(self, settings: "CenterSettings") -> ProxyProtocolIn | None:
        c = settings.center
        return policy(c.proxy_protocol, c.proxy_protocol_from, HANDSHAKE_TIMEOUT)

    def serve(self, sock: socket.socket, address: Address, ctx: CenterServerContext) -> None:
        peer = fmt_addr(address[0], address[1])
        if self.throttle.blocked(address[0]):
            log.info("center: %s refused unheard: too many failed logins (auth_fail_limit)", peer)
            return
        sock.settimeout(HANDSHAKE_TIMEOUT)
        ports: list = []

        def decide(login: handshake.Login, mappings: list) -> list:
            moved = self._take_over(login, peer)
            answers, bound = self.mappings.register(login.user or peer, _holder(login, peer), mappings, ctx, moved)
            ports.extend(bound)
            return answers

        # a deadline for the whole handshake (TLS, HELLO to accepted TOKEN, MAPPING), not only per read
        deadline = gevent.Timeout.start_new(HANDSHAKE_TIMEOUT, PhaseTimeout(
            f"center link handshake not complete within {HANDSHAKE_TIMEOUT:g}s"))
        try:
            presented = None
            if ctx.ssl is not None:
                if ctx.check_cert is not None and ctx.trust is not None:
                    ctx.trust.refresh()  # (pins another worker wrote)
                sock = ctx.ssl.wrap_socket(sock, server_side=True)
                if ctx.check_cert is not None:
                    presented = sock.getpeercert(binary_form=True) or None
            reader = Reader(sock)
            login = handshake.server_side(sock, reader, ctx.accounts, decide, ctx.check_cert, presented,
                                          ctx.disabled_users)
            self.throttle.succeeded(address[0])
        except handshake.Enrolled as e:
            log.info("center: %s (from %s)", e, peer)
            close_quietly(sock)
            return
        except handshake.AuthFailed as e:
            self.throttle.failed(address[0])
            log.warning("center: %s from %s", e, peer)
            close_quietly(sock)  # (a TLS socket holds the descriptor: the server's close would not)
            return
        except (ssl.SSLError, OSError, ProtocolError, PeerClosed) as e:
            self.mappings.withdraw(ports)
            log.warning("center: handshake with %s failed: %s", peer, e)
            close_quietly(sock)
            return
        except BaseException:  # our bug (logged by the server) or a kill: no mapping stays behind
            self.mappings.withdraw(ports)
            close_quietly(sock)
            raise
        finally:
            deadline.close()
        try:
            self._serve_link(ctx, sock, reader, login, address, ports)
        finally:
            self.mappings.withdraw(ports)

    def _take_over(self, login: handshake.Login, peer: str) -> list[Published]:
        """A client that links again with its id while its old link still looks alive (the
        heartbeat has not noticed it died yet): the old link is closed at once and its mappings
        handed over (frp's run_id). Returns them, for the new link to keep what it still asks for."""
        if login.client_id is None:
            return []
        old = self.clients.pop(_holder(login, peer), None)
        if old is None:
            return []
        link, ports = old
        moved = ports[:]
        ports.clear()  # (the old link's end withdraws nothing of them now)
        log.info("center: client %r (id %s) linked again from %s: its link %s is replaced", login.user or "anonymous",
                 login.client_id, peer, link.name)
        link.close(f"replaced by a new link of the same client from {peer}")
        return moved

    def _serve_link(self, ctx: CenterServerContext, sock: socket.socket, reader: Reader, login: handshake.Login,
                    address: Address, ports: list[Published]) -> None:
        cfg = ctx.cfg
        peer = fmt_addr(address[0], address[1])
        user, holder = login.user, _holder(login, peer)
        # max_streams holds for an account's links together (an address's): more links bring no more streams
        budget = self.budgets.get(user or address[0])
        if budget is None:
            budget = self.budgets[user or address[0]] = StreamBudget(cfg.max_streams)
        budget.limit = _stream_limit(ctx, user)
        link = CenterLink(sock, reader, is_client=False, window=cfg.window, max_window=cfg.max_window,
                          budget=budget, max_frame=cfg.max_frame, heartbeat=cfg.heartbeat,
                          name=f"{user or 'anonymous'}@{peer}",
                          on_create=lambda vc, mode, target: self._serve_stream(ctx, link, vc, mode, target),
                          on_mapping=lambda specs: self.mappings.update(user or peer, holder, link, ports, specs, ctx))
        link.user = user
        link.client_id = login.client_id or ""
        link.holder = holder
        link.owner = user or peer
        link.peer_address = address  # (behind a balancer, the PROXY protocol header's)
        link.peer_aware = login.peer_aware
        self.links.add(link)
        self.clients[holder] = (link, ports)
        log.info("center: client %r connected from %s%s", user or "anonymous", peer,
                 f" (id {login.client_id})" if login.client_id else "")
        for item in ports:
            item.attach(link)
        self.mappings.log_published(ports, user or peer)
        budget.links += 1
        try:
            reason = link.run()
        finally:
            self.links.discard(link)
            if self.clients.get(holder, (None,))[0] is link:
                del self.clients[holder]
            budget.links -= 1
            if not budget.links:
                del self.budgets[user or address[0]]
            self.stats.bytes_in += link.bytes_in
            self.stats.bytes_out += link.bytes_out
        log.info("center: link %s ended: %s (in %d bytes, out %d bytes, %.0fs)", link.name, reason,
                 link.bytes_in, link.bytes_out, time.time() - link.started_at)

    def _serve_stream(self, ctx: CenterServerContext, link: CenterLink, vc: VirtualConn,
                      mode: CreateMode, target: str) -> None:
        visitor, vc.visitor = vc.visitor, None  # (read once: a long-lived stream does not keep it)
        if mode == CreateMode.PROXY:
            link.send_frame(Kind.CREATE, Flag.ACK, vc.sid, quiet=True)
            ctx.serve_proxy(vc, link.peer_address, visitor[0] if visitor else None)
        elif mode == CreateMode.CONNECT:
            try:
                t = parse_authority(target)
                upstream = dial(ctx.resolver, t.host, t.port, ctx.proxy_cfg.connect_timeout, ctx.targets)
            except (ProtocolError, UpstreamError) as e:
                vc.close(str(e))
                log.info("center %s: CONNECT %s failed: %s", link.name, target, e)
                return
            if link.closed or vc.reset is not None:  # gone while we dialled: nothing to relay
                upstream.close()
                return
            link.send_frame(Kind.CREATE, Flag.ACK, vc.sid)
            relay_then(vc, upstream, lambda stats: log.info(
                "center %s: CONNECT %s done (%s) up=%d down=%d", link.name, target, stats.reason, stats.a_to_b,
                stats.b_to_a), link_owned, ctx.proxy_cfg.idle_timeout)
        else:
            vc.close(f"{mode.name} streams are not served by a center server")

    def drain(self, grace: float) -> int:
        """Links take no new streams and end when their open ones are done; past the
        grace period they are closed with the rest."""
        for link in list(self.links):
            link.drain()
        return super().drain(grace)

    def mapping_status(self) -> list[dict]:
        return self.mappings.status()

    def live_bytes(self) -> tuple[int, int]:
        """What the live links carried so far (a link's bytes go into ``stats`` when it ends)."""
        return sum(link.bytes_in for link in self.links), sum(link.bytes_out for link in self.links)

    def link_status(self) -> list[dict]:
        return [{"role": "server", "client": link.user or "anonymous", "client_id": link.client_id,
                 "id": link.holder, "peer": fmt_addr(*link.peer_address[:2]), "since": link.started_at,
                 "streams": link.stream_count, "rtt": link.rtt, "bytes_in": link.bytes_in,
                 "bytes_out": link.bytes_out, "rate": round(link.read_rate(), 1), **_tls(link)} for link in self.links]

    def set_mapping(self, name: str, holder: str, enabled: bool) -> dict:
        """The control API's disable / enable of mapping ``name`` (of client ``holder``; '' when
        only one client has a mapping of that name). ``{"ok": ...}``, with ``status`` if refused."""
        if enabled:
            holders = [h for (h, n) in self.mappings.disabled if n == name]
        else:
            holders = [h for h, (link, ports) in self.clients.items()
                       if any(p.name == name for p in ports) or name in self.mappings.asked.get(h, {})]
        if holder:
            holders = [h for h in holders if h == holder]
        if not holders:
            which = f" of client {holder}" if holder else ""
            return {"ok": False, "status": 404, "error": f"no mapping {name!r}{which} is "
                                                        f"{'disabled' if enabled else 'published'} here"}
        if len(holders) > 1:
            return {"ok": False, "status": 409, "error": f"mapping {name!r} is of several clients: say which with "
                                                        f"?client= one of {', '.join(sorted(holders))}"}
        who = holders[0]
        link, ports = self.clients.get(who, (None, []))
        if not enabled:
            owner = link.owner if link is not None else who
            self.mappings.disable(owner, who, name, ports)
            return {"ok": True, "mapping": name, "client": who, "state": "disabled",
                    "until": "enabled again, or the next reload or restart"}
        answer = self.mappings.enable(who, name, link, ports, self.ctx)
        assert answer is not None
        if not answer.accepted:
            return {"ok": False, "status": 409, "mapping": name, "client": who,
                    "error": f"enabled, but the server refused it: {answer.reason}"}
        return {"ok": True, "mapping": name, "client": who, "state": "enabled",
                **({"note": answer.reason} if answer.reason else {})}

    def config_reloaded(self) -> None:
        """A reload ends what the control API disabled: those mappings are published again;
        the links of accounts it disabled are cut; the accounts' max_streams count from now on."""
        self.mappings.users = self.ctx.users  # (the accounts' limits: connections from now on count by them)
        for key, budget in self.budgets.items():  # (and streams: those open stay, new ones count by the new)
            budget.limit = _stream_limit(self.ctx, key if key in self.ctx.users else "")
        for holder, name in list(self.mappings.disabled):
            self.set_mapping(name, holder, True)
        for holder, (link, _) in list(self.clients.items()):
            if link.user in self.ctx.disabled_users:
                log.warning("center: client %s cut: its account %r is disabled now", holder, link.user)
                link.close("account disabled")

    def kick(self, holder: str, why: str) -> bool:
        """Close the link of client ``holder`` (its id as GET /api/clients shows it): its
        mappings are withdrawn; it may link again. False when no such client is linked."""
        held = self.clients.get(holder)
        if held is None:
            return False
        link = held[0]
        log.warning("center: client %s (%s) kicked: %s", holder, fmt_addr(*link.peer_address[:2]), why)
        link.close(f"kicked: {why}")
        return True


def _tls(link: CenterLink) -> dict:
    """A link's TLS version and cipher (none for a plain link)."""
    version = getattr(link.sock, "version", None)
    cipher = getattr(link.sock, "cipher", None)
    if version is None or cipher is None:
        return {"tls": None}
    got = cipher()
    return {"tls": {"version": version(), "cipher": got[0] if got else None}}


def _holder(login: handshake.Login, peer: str) -> str:
    """Who holds a link's mappings: the account and the client's id; a client from before ids
    is one holder per link (its address)."""
    return f"{login.user}#{login.client_id}" if login.client_id is not None else f"{login.user}@{peer}"


def _host_modes(cfg: CenterConfig) -> frozenset:
    """The mapping modes routed by name that this server has a listener for: http (by Host),
    https (TLS ended here: needs map_cert, or map_acme) and tls (https passed through by SNI)."""
    modes = set()
    if cfg.map_http_bind:
        modes.add("http")
    if cfg.map_https_bind:
        modes.add("tls")
        if cfg.map_cert or cfg.map_acme:
            modes.add("https")
    return frozenset(modes)


def listener_specs(cfg: Config) -> list[ListenerSpec]:
    """The center server listener (``[center] bind``)."""
    if cfg.center is None or not cfg.center.is_server:
        return []
    center = cfg.center
    settings = CenterSettings(center, cfg.proxy or ProxyConfig())

    def check() -> None:  # certificate files are read before anything changes (an "auto" pair: at start)
        if center.tls and center.cert != "auto":
            server_context(center.cert, center.key, "" if center.client_ca == "pin" else center.client_ca)

    assert center.bind is not None  # (a server config has its bind)
    return [ListenerSpec("center", center.bind, settings, "center.bind", CenterServer, check)]


@dataclass(frozen=True)
class CenterSettings:
    """What the center server listener is made from (compared on reload)."""

    center: CenterConfig
    proxy: ProxyConfig  # the forward proxy that serves the clients' PROXY streams

