"""The forward proxy listener: one port, the protocol sniffed from the first byte.

0x05 -> SOCKS5, 0x04 -> SOCKS4/4a, anything else -> HTTP (absolute-form or CONNECT).
Each accepted connection runs in its own greenlet from a bounded Pool; ``handle`` returns
when the connection is done and the server closes the socket.
"""

from __future__ import annotations

import hmac
import logging
import socket
import time
from dataclasses import dataclass
from typing import Callable, Optional

import gevent

from ..config import CenterConfig, Config, ProxyConfig
from ..errors import ClientGone, PhaseTimeout, ProtocolError
from ..listener import ConnStats, Listener, ListenerSpec
from ..net.conn import Address, Conn
from ..net.proxyproto import ProxyProtocolIn, policy
from ..net.dial import dial, fmt_addr, ip_allowed
from ..net.dns import Resolver
from ..net.limits import AuthThrottle
from ..net.targets import target_policy
from ..net import httpio
from ..net.reader import PeerClosed, Reader
from ..net.live import current
from ..net.relay import Adopt, RelayStats, relay_then
from ..net.throttle import Bucket, Quota
from ..net.writer import linger
from ..prot import socks as s5
from ..prot.http1 import simple_response
from ..services import Services
from . import http, socks

log = logging.getLogger("wmproxy.proxy")


class ConnInfo:
    """What one client connection did, for its single log line."""

    __slots__ = ("ip", "port", "behalf", "proto", "target", "result", "up", "down", "started", "detached",
                 "deadline", "user", "quota")

    def __init__(self, ip: str, port: int, behalf: Optional[Address] = None) -> None:
        self.deadline: gevent.Timeout | None = None  # of the handshake: whole within handshake_timeout
        self.ip = ip  # the client's address (per-address limits and login throttling count it)
        self.port = port
        #: a center client's stream: the address of the client it serves, as it says (for the log)
        self.behalf = fmt_addr(behalf[0], behalf[1]) if behalf is not None else ""
        self.detached = False  # its relay goes on after the handler returned: it logs itself
        self.proto = "-"
        self.target = "-"
        self.result = "closed"
        self.up = 0
        self.down = 0
        self.started = time.monotonic()
        self.user = ""  # the account it logged in as
        self.quota: Optional[Quota] = None  # that account's limits, which count it ([[proxy.users]])

    @property
    def peer(self) -> str:
        """Who, for its log line (formatted then: a long-lived tunnel keeps no copy)."""
        return fmt_addr(self.ip, self.port) + (f" (for {self.behalf})" if self.behalf else "")

    def end_handshake(self) -> None:
        """The client has said what it wants: its handshake deadline no longer applies (the
        dial has its own timeout, the relay or the request loop its own watch)."""
        if self.deadline is not None:
            self.deadline.close()
            self.deadline = None

    def line(self) -> str:
        took = time.monotonic() - self.started
        return (f"{self.peer} {self.proto} {self.target} {self.result} "
                f"up={self.up} down={self.down} {took:.3f}s")


class ProxyContext:
    """Settings and services one listener's handlers share. Built for one configuration: a
    reload builds a new context for new connections while live ones keep theirs. Its settings
    are not changed afterwards; its counters (``stats``) and the login throttle count on."""

    def __init__(self, cfg: ProxyConfig, resolver: Resolver, adopt: Adopt, stats: ConnStats | None = None,
                 entry: Optional[Callable[..., None]] = None,
                 local: bool = True, exposed: bool | None = None, throttle: AuthThrottle | None = None,
                 quotas: dict[str, Quota] | None = None) -> None:
        self.cfg = cfg
        self.accounts = cfg.accounts()
        # [[proxy.users]] limits by user: kept across reloads by the listener (what is counted stays)
        self.quotas = quotas if quotas is not None else {}
        self.resolver = resolver
        self.stats = stats or ConnStats()
        # a center client's local entry (center.entry): it serves every connection, the proxy protocols do not
        self.entry = entry
        # SOCKS5 UDP ASSOCIATE: only where the client can reach our relay socket, so not for
        # connections that arrive over a center link from another network
        self.udp_associate = local and cfg.udp_bind is not None
        self.adopt = adopt  # keeps connections whose relay goes on after their handler returned
        # failed logins per client address (None: not counted; a center link's streams all share its address)
        self.throttle = throttle
        # exposed: other hosts can reach the clients' side (default: the proxy's bind is not loopback)
        self.targets = target_policy(cfg, (cfg.bind is None or not cfg.bind.is_loopback) if exposed is None else exposed)

    def shared(self, info: ConnInfo) -> list[tuple[Bucket, Bucket]]:
        """The buckets its user's bandwidth shares (from the client, to it)."""
        return [info.quota.buckets] if info.quota is not None and info.quota.buckets is not None else []

    def relay(self, client: Conn, upstream: Conn, info: ConnInfo, a_pending: bytes) -> None:
        """Relay the client and its upstream, filling ``info``. Where the relay can go on
        without this greenlet (a link stream and a socket), it does: the handler returns at
        once, and the connection's line is logged when the relay ends."""

        tunnel = _Tunnel(self, info)
        relay_then(client, upstream, tunnel, tunnel.adopt, self.cfg.idle_timeout, a_pending=a_pending,
                   rate=self.cfg.rate_limit, shared=self.shared(info))

    def conn_done(self, info: ConnInfo, log_line: bool = True, level: int = logging.INFO) -> None:
        """A connection ended: its bytes go into the listener's totals, its line to the log, its
        user's count goes down."""
        self.stats.bytes_in += info.up
        self.stats.bytes_out += info.down
        if info.quota is not None:
            info.quota.leave()
            info.quota = None
        if log_line:
            log.log(level, "%s", info.line())

    def client_allowed(self, ip: str) -> bool:
        """Deny list first, then the allow list (an empty allow list allows everyone)."""
        return ip_allowed(ip, self.cfg.allow, self.cfg.deny)

    def login(self, user: str, password: str, ip: str = "") -> str:
        """Check a user's credentials: '' when they are right and the account is enabled, else
        why not ('disabled' is said only to the one who gave the right password). The password
        is compared in constant time; a wrong one counts against ``ip``."""
        account = self.accounts.get(user)
        expected = account.password if account is not None else "\0" * max(1, len(password))
        ok = hmac.compare_digest(password.encode(), expected.encode()) and account is not None
        if self.throttle is not None and ip:
            if ok:
                self.throttle.succeeded(ip)
            else:
                self.throttle.failed(ip)
        if not ok:
            return f"bad credentials for user {user[:40]!r}"
        assert account is not None
        return f"user {user[:40]!r} is disabled" if account.disabled else ""

    def admit(self, info: ConnInfo, user: str) -> str:
        """The connection is ``user``'s from now on and counts in that user's max_connections:
        '' or why it may not ([[proxy.users]] limits; a connection that changes user moves)."""
        if user == info.user:
            return ""
        if info.quota is not None:
            info.quota.leave()
            info.quota = None
        info.user = user
        account = self.accounts.get(user)
        if account is None or not (account.max_connections or account.bandwidth):
            return ""
        quota = self.quotas.get(user) or self.quotas.setdefault(user, Quota(f"user {user}"))
        quota.set(account.max_connections, account.bandwidth)
        if not quota.enter():
            info.user = ""
            return quota.full_text
        info.quota = quota
        return ""

    def auth_blocked(self, ip: str) -> bool:
        """Whether ``ip`` failed to log in too often lately (auth_fail_limit): refused unheard."""
        return self.throttle is not None and self.throttle.blocked(ip)

    def dial(self, host: str, port: int) -> socket.socket:
        """Connect to a client's target, as :attr:`targets` allows. Raises UpstreamError."""
        return dial(self.resolver, host, port, self.cfg.connect_timeout, self.targets)


class _Tunnel:
    """A relayed connection's end (ProxyContext.relay): an object, not two closures and their
    cells (one per idle tunnel)."""

    __slots__ = ("ctx", "info")

    def __init__(self, ctx: ProxyContext, info: ConnInfo) -> None:
        self.ctx = ctx
        self.info = info

    def adopt(self, stop: Callable[[], None]) -> Callable[[], None]:
        self.info.detached = True
        return self.ctx.adopt(stop)

    def __call__(self, stats: RelayStats) -> None:
        info = self.info
        info.up, info.down, info.result = stats.a_to_b, stats.b_to_a, f"done ({stats.reason})"
        if info.detached:
            self.ctx.conn_done(info)


class ProxyServer(Listener):
    """A forward proxy on one listening socket (settings: ProxySettings). In a center client
    every connection goes to the center client's local entry (center.entry), not to the proxy
    protocols here."""

    kind = "proxy"
    answers_http = True

    def make_context(self, settings: "ProxySettings", services: Services) -> ProxyContext:
        proxy_cfg, center_cfg = settings.proxy, settings.center
        throttle = getattr(self, "throttle", None)  # kept across reloads: what was counted stays
        if throttle is None:
            throttle = self.throttle = AuthThrottle(proxy_cfg.auth_fail_limit, proxy_cfg.auth_fail_window,
                                                    f"proxy {proxy_cfg.bind}")
        throttle.configure(proxy_cfg.auth_fail_limit, proxy_cfg.auth_fail_window)
        quotas: dict[str, Quota] | None = getattr(self, "quotas", None)  # (users' counts and buckets: kept too)
        if quotas is None:
            quotas = {}
            self.quotas = quotas
        return ProxyContext(proxy_cfg, services.resolver, self.adopt, self.stats,
                            services.center_entry() if center_cfg else None,
                            throttle=throttle, quotas=quotas)

    def max_connections(self, settings: "ProxySettings") -> int:
        return settings.proxy.max_connections

    def max_per_ip(self, settings: "ProxySettings") -> int:
        return settings.proxy.max_connections_per_ip

    def proxy_protocol(self, settings: "ProxySettings") -> ProxyProtocolIn | None:
        cfg = settings.proxy
        return policy(cfg.proxy_protocol, cfg.proxy_protocol_from, cfg.handshake_timeout)

    def serve(self, client: socket.socket, address: Address, ctx: ProxyContext) -> None:
        serve_connection(ctx, client, address)


def serve_connection(ctx: ProxyContext, client: Conn, address: Address, behalf: Optional[Address] = None) -> None:
    """Serve one client connection (a socket or a center link stream) as the forward proxy;
    ``behalf``: for a center client's stream, the address of the client it serves, as that
    center client says (shown in the log; limits and ACLs count ``address``, the center
    client's, which authenticated). Returns when it is done; never raises for what the client
    sends; does not close ``client``."""
    info = ConnInfo(address[0], address[1], behalf)
    live = current()
    if live is not None:  # GET /api/connections shows its target and counts
        live.info = info
    client.settimeout(ctx.cfg.handshake_timeout)
    # a deadline, not an idle timer: a client trickling a byte at a time is cut all the same
    info.deadline = gevent.Timeout.start_new(ctx.cfg.handshake_timeout, PhaseTimeout(
        f"handshake not complete within handshake_timeout ({ctx.cfg.handshake_timeout:g}s)"))
    reader = Reader(client, keep_watching=True)
    allowed = ctx.client_allowed(address[0])
    failed, mangled = True, False
    first = None
    try:
        first = reader.peek(1)
        if not first:
            info.result = "closed before sending"
            return
        flags = ctx.cfg.flag
        if ctx.entry is not None:
            ctx.entry(ctx, client, reader, info, allowed, first[0])
        elif first[0] == socks.SOCKS5 and "socks5" in flags:
            socks.serve_socks5(ctx, client, reader, info, allowed)
        elif first[0] == socks.SOCKS4 and "socks4" in flags:
            socks.serve_socks4(ctx, client, reader, info, allowed)
        elif first[0] not in (socks.SOCKS4, socks.SOCKS5) and flags & {"http", "https"}:
            http.serve_http(ctx, client, reader, info, allowed)
        else:
            info.proto = "?"
            info.result = f"refused: protocol of first byte 0x{first[0]:02x} not served"
        failed = False
    except PhaseTimeout as e:
        info.result = f"cut: {e}"
    except socket.timeout:
        info.result = "timeout waiting for the client"
    except (PeerClosed, ClientGone) as e:
        info.result = f"client closed: {e}"
    except ProtocolError as e:  # (answered as its protocol says, unless it was too mangled to be)
        info.result = f"bad request: {e}"
        mangled = True
    except OSError as e:
        info.result = f"client error: {e.strerror or e}"
    except Exception:
        info.result = "internal error"
        log.exception("internal error serving %s", info.peer)
    finally:
        info.end_handshake()
        reader.release()
        if mangled:  # its client may still be sending: what comes is dropped first, so that the answer is read
            linger(client)
        if not info.detached:
            # HTTP logs one line per request itself; a connect-and-close (port probe, health
            # check) is not worth an info line
            ctx.conn_done(info, info.proto != "http" or failed, logging.DEBUG if first == b"" else logging.INFO)


def refuse(client: Conn, reader: Reader, first: int, reason: str, max_header: int, not_allowed: bool = False) -> None:
    """Read the request just far enough to answer it with the protocol's refusal."""
    if first == socks.SOCKS5:
        reader.read_message(s5.parse_greeting)
        client.sendall(s5.encode_method(s5.METHOD_NO_AUTH))
        reader.read_message(s5.parse_request)
        client.sendall(s5.encode_reply(s5.REP_NOT_ALLOWED if not_allowed else s5.REP_GENERAL_FAILURE))
    elif first == socks.SOCKS4:
        reader.read_message(s5.parse_socks4)
        client.sendall(s5.encode_socks4_reply(False))
    else:
        httpio.read_head(reader, max_header)
        client.sendall(simple_response(403 if not_allowed else 502, f"wmproxy: {reason}"))


def listener_specs(cfg: Config) -> list[ListenerSpec]:
    """The forward proxy listener a config asks for (none without [proxy]). In a center
    client (``[center] server``), its connections go to the center client's entry."""
    if cfg.proxy is None or cfg.proxy.bind is None:
        return []
    center_client = cfg.center if cfg.center is not None and not cfg.center.is_server else None
    return [ListenerSpec("proxy", cfg.proxy.bind, ProxySettings(cfg.proxy, center_client), "proxy.bind", ProxyServer)]


@dataclass(frozen=True)
class ProxySettings:
    """What a forward proxy listener is made from (compared on reload)."""

    proxy: ProxyConfig
    center: Optional[CenterConfig]  # a center client's [center]: connections go through its link
