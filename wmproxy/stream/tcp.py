"""``[stream]`` TCP forwarding: each connection goes to one server of an upstream, picked by
smooth weighted round robin (as nginx does), and is relayed through the shared relay.

A server that refuses or times out is skipped for that connection and the next one is tried,
until every server of the upstream has been tried once.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import gevent

from ..config import Addr, Config, StreamServerConfig, StreamUpstreamConfig
from ..errors import PhaseTimeout, ProtocolError, UpstreamError
from ..listener import ConnStats, Listener, ListenerSpec
from ..metrics import ServerMetrics
from ..services import Services
from ..net.conn import Address, Conn
from ..net.proxyproto import ProxyProtocolIn, header_for, policy
from ..net.dns import Resolver
from ..net.balance import WeightedRoundRobin, hash_index
from ..net.dial import dial, fmt_addr
from ..net.reader import PeerClosed
from ..net.live import current
from ..net.relay import RelayStats, relay_then
from ..net.tls import client_context
from ..net.health import NEVER_CHECKED
from .health import StreamHealth, checker

if TYPE_CHECKING:
    from ..net.ws import WsSocket  # (imported where a listener bridges websockets: wsproto costs every start)

log = logging.getLogger("wmproxy.stream")


class StreamContext:
    def __init__(self, server: StreamServerConfig, upstream: StreamUpstreamConfig, resolver: Resolver,
                 stats: ConnStats, health: StreamHealth | None = None) -> None:
        self.cfg = server
        self.health = health  # its upstream's active checks (health_check), or None
        self.upstream = upstream
        self.resolver = resolver
        self.stats = stats
        self.balancer = WeightedRoundRobin(upstream.server)
        self.metrics = {str(s.addr): ServerMetrics() for s in upstream.server}
        # tcp2wss: the verifying TLS context, once (not a CA file read per connection)
        self.ws_tls = client_context(server.ws_ca, ca_key="stream.server.ws_ca") \
            if server.bind_mode == "tcp2wss" else None


@dataclass(frozen=True)
class StreamSettings:
    """What a [[stream.server]] listener (TCP or UDP) is made from (compared on reload)."""

    server: StreamServerConfig
    upstream: StreamUpstreamConfig


class StreamTcpServer(Listener):
    """One ``[[stream.server]]`` with ``bind_mode`` "tcp", or a websocket bridge: "ws2tcp"
    (the clients speak websocket, the servers TCP), "tcp2ws"/"tcp2wss" (the other way round,
    over TLS for tcp2wss)."""

    kind = "stream"

    def make_context(self, settings: "StreamSettings", services: Services) -> StreamContext:
        return StreamContext(settings.server, settings.upstream, services.resolver, self.stats,
                             checker(services.stream_health, settings.upstream, services.resolver))

    def max_connections(self, settings: "StreamSettings") -> int:
        return settings.server.max_connections

    def max_per_ip(self, settings: "StreamSettings") -> int:
        return settings.server.max_connections_per_ip

    def proxy_protocol(self, settings: "StreamSettings") -> ProxyProtocolIn | None:
        srv = settings.server
        return policy(srv.proxy_protocol, srv.proxy_protocol_from, srv.handshake_timeout)

    def upstream_status(self) -> list[dict]:
        ctx = self.ctx
        health = ctx.health
        return [{**figures.row("stream", ctx.upstream.name, addr, health is None or health.live(addr), 0),
                 **(health.last_check(addr) if health is not None else NEVER_CHECKED)}
                for addr, figures in ctx.metrics.items()]

    def serve(self, client: socket.socket, address: Address, ctx: StreamContext) -> None:
        peer = fmt_addr(address[0], address[1])
        mode = ctx.cfg.bind_mode
        conn: Conn = client
        if mode == "ws2tcp":
            limit = ctx.cfg.handshake_timeout
            client.settimeout(limit)
            try:
                from ..net import ws  # (wsproto: imported by the listeners that bridge websockets, not at every start)

                # a stranger's phase: a deadline for the whole upgrade, not a timer per recv
                with gevent.Timeout(limit, PhaseTimeout(f"websocket handshake not complete within {limit:g}s")):
                    conn = ws.accept(client)
            except (ProtocolError, PeerClosed, OSError) as e:  # (PhaseTimeout is a TimeoutError)
                log.info("%s stream %s (ws2tcp): %s", peer, ctx.cfg.bind, e)
                return
        errors = []
        if ctx.upstream.method == "ip_hash":
            servers = ctx.upstream.server
            start = hash_index(address[0], len(servers))
            order = [*servers[start:], *servers[:start]]
        else:
            order = ctx.balancer.order()
        health = ctx.health
        if health is not None:  # the servers its checks took out go last (tried once the live ones failed)
            order = sorted(order, key=lambda s: not health.live(str(s.addr)))
        for server in order:
            figures = ctx.metrics[str(server.addr)]
            figures.requests += 1
            started = time.monotonic()
            try:
                sock = dial(ctx.resolver, server.addr.host, server.addr.port, ctx.cfg.connect_timeout)
            except UpstreamError as e:
                figures.failures += 1
                errors.append(str(e))
                continue
            upstream: Conn = sock
            if ctx.upstream.send_proxy_protocol:
                try:
                    sock.sendall(header_for(ctx.upstream.send_proxy_protocol, address, client.getsockname()))
                except OSError as e:
                    sock.close()
                    figures.failures += 1
                    errors.append(f"{server.addr}: {e.strerror or e}")
                    continue
            if mode in ("tcp2ws", "tcp2wss"):
                try:
                    upstream = self._websocket(sock, server.addr, ctx)
                except (UpstreamError, ssl.SSLError, OSError) as e:
                    sock.close()
                    figures.failures += 1
                    errors.append(str(e))
                    continue
            figures.connect_seconds.observe(time.monotonic() - started)
            break
        else:
            log.warning("%s stream %s -> upstream %r: every server failed: %s", peer, ctx.cfg.bind,
                        ctx.upstream.name, "; ".join(errors))
            return

        def done(stats: RelayStats) -> None:
            ctx.stats.bytes_in += stats.a_to_b
            ctx.stats.bytes_out += stats.b_to_a
            log.info("%s stream %s -> %s (%s) done (%s) up=%d down=%d", peer, ctx.cfg.bind, server.addr,
                     ctx.upstream.name, stats.reason, stats.a_to_b, stats.b_to_a)

        live = current()
        if live is not None:  # (GET /api/connections)
            live.target = f"{server.addr} ({ctx.upstream.name})"
        # plain TCP both ways: relayed by callbacks after this returns (the listener keeps the slot)
        relay_then(conn, upstream, done, self.adopt, ctx.cfg.idle_timeout, rate=ctx.cfg.rate_limit)


    def _websocket(self, sock: socket.socket, addr: Addr, ctx: StreamContext) -> WsSocket:
        """tcp2ws(s): the websocket client handshake (over TLS for tcp2wss) on ``sock``."""
        from ..net import ws  # (as in serve)

        host = ctx.cfg.ws_host or addr.host
        limit = ctx.cfg.connect_timeout
        sock.settimeout(limit)
        try:  # (TLS and the upgrade within connect_timeout: a deadline, not only a timer per recv)
            with gevent.Timeout(limit, PhaseTimeout(f"websocket handshake with {addr} not complete within "
                                                    f"{limit:g}s (connect_timeout)")):
                if ctx.ws_tls is not None:
                    sock = ctx.ws_tls.wrap_socket(sock, server_hostname=host)
                upgraded = ws.connect(sock, host if addr.port in (80, 443) else f"{host}:{addr.port}",
                                      ctx.cfg.ws_path)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return upgraded


def listener_specs(cfg: Config) -> list[ListenerSpec]:
    """One listener per ``[[stream.server]]``; its settings include the upstream it uses,
    so a changed upstream counts as a change of the listener."""
    if cfg.stream is None:
        return []
    return [
        ListenerSpec("stream", srv.bind, StreamSettings(srv, cfg.stream.upstream_named(srv.up_name)),
                     f"stream.server[{i}].bind", StreamTcpServer,
                     partial(client_context, srv.ws_ca, ca_key=f"stream.server[{i}].ws_ca")
                     if srv.bind_mode == "tcp2wss" else None)
        for i, srv in enumerate(cfg.stream.server) if srv.bind_mode != "udp"
    ]
