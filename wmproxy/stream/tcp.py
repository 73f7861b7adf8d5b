"""``[stream]`` TCP forwarding: each connection goes to one server of an upstream, picked by
smooth weighted round robin (as nginx does), and is relayed through the shared relay.

A server that refuses or times out is skipped for that connection and the next one is tried,
until every server of the upstream has been tried once.
"""

from __future__ import annotations

import logging
import socket
import zlib

from ..config import Config, StreamServerConfig, StreamUpstreamConfig, UpstreamServerConfig
from ..errors import UpstreamError
from ..listener import ConnStats, Listener, ListenerSpec
from ..net.dial import dial, fmt_addr
from ..net.relay import RelayStats, relay

log = logging.getLogger("wmproxy.stream")


class WeightedRoundRobin:
    """Smooth weighted round robin: with weights 5,1,1 the order is a a b a c a a, spread
    out rather than bunched. Not shared between greenlets' yields: ``pick`` never blocks."""

    def __init__(self, servers: tuple[UpstreamServerConfig, ...]) -> None:
        self.servers = servers
        self.current = [0] * len(servers)
        self.total = sum(s.weight for s in servers)

    def pick(self) -> int:
        best = 0
        for i, s in enumerate(self.servers):
            self.current[i] += s.weight
            if self.current[i] > self.current[best]:
                best = i
        self.current[best] -= self.total
        return best

    def order(self) -> list[UpstreamServerConfig]:
        """The server to try first, then the others in their configured order."""
        first = self.pick()
        return [self.servers[first], *(s for i, s in enumerate(self.servers) if i != first)]


class StreamContext:
    def __init__(self, server: StreamServerConfig, upstream: StreamUpstreamConfig, resolver, stats: ConnStats):
        self.cfg = server
        self.upstream = upstream
        self.resolver = resolver
        self.stats = stats
        self.balancer = WeightedRoundRobin(upstream.server)


class StreamTcpServer(Listener):
    """One ``[[stream.server]]`` with ``bind_mode = "tcp"``."""

    kind = "stream"

    def make_context(self, settings, app) -> StreamContext:
        server, upstream = settings
        return StreamContext(server, upstream, app.resolver, self.stats)

    def max_connections(self, settings) -> int:
        return settings[0].max_connections

    def serve(self, client: socket.socket, address, ctx: StreamContext) -> None:
        peer = fmt_addr(address[0], address[1])
        errors = []
        if ctx.upstream.method == "ip_hash":
            servers = ctx.upstream.server
            start = zlib.crc32(address[0].encode()) % len(servers)
            order = [*servers[start:], *servers[:start]]
        else:
            order = ctx.balancer.order()
        for server in order:
            try:
                upstream = dial(ctx.resolver, server.addr.host, server.addr.port, ctx.cfg.connect_timeout)
                break
            except UpstreamError as e:
                errors.append(str(e))
        else:
            log.warning("%s stream %s -> upstream %r: every server failed: %s", peer, ctx.cfg.bind,
                        ctx.upstream.name, "; ".join(errors))
            return
        stats = RelayStats()
        relay(client, upstream, ctx.cfg.idle_timeout, stats=stats)
        ctx.stats.bytes_in += stats.a_to_b
        ctx.stats.bytes_out += stats.b_to_a
        log.info("%s stream %s -> %s (%s) done (%s) up=%d down=%d", peer, ctx.cfg.bind, server.addr,
                 ctx.upstream.name, stats.reason, stats.a_to_b, stats.b_to_a)


def listener_specs(cfg: Config) -> list[ListenerSpec]:
    """One listener per ``[[stream.server]]``; its settings include the upstream it uses,
    so a changed upstream counts as a change of the listener."""
    if cfg.stream is None:
        return []
    return [
        ListenerSpec("stream", srv.bind, (srv, cfg.stream.upstream_named(srv.up_name)),
                     f"stream.server[{i}].bind", StreamTcpServer)
        for i, srv in enumerate(cfg.stream.server) if srv.bind_mode == "tcp"
    ]
