"""``[stream]``: layer-4 forwarding, its upstreams and servers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .keys import (
    Addr, Invalid, REQUIRED, _unique_names, int_range, key, one_of, table_list, to_addr, to_duration,
    to_str, section, proxy_protocol_key, proxy_protocol_from_key, check_proxy_protocol, rate_limit_key,
)


@dataclass(frozen=True)
class UpstreamServerConfig:
    """One server of an upstream: ``{ addr = "127.0.0.1:8080", weight = 2 }``."""

    addr: Addr = key(to_addr, REQUIRED, "server address")
    weight: int = key(int_range(1, 1000), 1, "share of connections (round robin by weight)")


@dataclass(frozen=True)
class StreamHealthConfig:
    """``health_check = { interval = "5s" }`` on a ``[[stream.upstream]]``: each server is
    checked by a TCP connect; one that fails ``fall`` in a row is out until ``rise`` pass."""

    interval: float = key(to_duration, 5.0, "time between two checks of a server")
    timeout: float = key(to_duration, 2.0, "time a connect may take")
    fall: int = key(int_range(1, 100), 3, "failed checks in a row that take a server out")
    rise: int = key(int_range(1, 100), 2, "passed checks in a row that bring it back")

    def validate(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise Invalid("interval and timeout must be more than 0", ".interval")


@dataclass(frozen=True)
class StreamUpstreamConfig:
    """``[[stream.upstream]]``: a named group of servers."""

    name: str = key(to_str, REQUIRED, "the name servers refer to with up_name")
    server: tuple = key(table_list(UpstreamServerConfig), REQUIRED, "the servers")
    method: str = key(one_of(("round_robin", "ip_hash")), "round_robin",
                      "how a connection or UDP session picks its server")
    send_proxy_protocol: str = key(one_of(("", "v1", "v2")), "", "tcp: start each connection to a server with a "
                                   "PROXY protocol header of this version (HAProxy send-proxy): the client's "
                                   "address and the one it came in on")
    health_check: Optional[StreamHealthConfig] = section(StreamHealthConfig, "active checks of its servers "
                                                         "(TCP connect)")

    def validate(self) -> None:
        if not self.server:
            raise Invalid("an upstream needs at least one server", ".server")


STREAM_MODES = ("tcp", "udp", "ws2tcp", "tcp2ws", "tcp2wss")


@dataclass(frozen=True)
class StreamServerConfig:
    """``[[stream.server]]``: a layer-4 listener forwarding to an upstream."""

    bind: Addr = key(to_addr, REQUIRED, "listening address", aliases=("bind_addr",))
    bind_mode: str = key(one_of(STREAM_MODES), "tcp", "what is forwarded")
    up_name: str = key(to_str, REQUIRED, "name of a [[stream.upstream]]")
    connect_timeout: float = key(to_duration, 10.0, "time to connect to an upstream server (tcp2ws, tcp2wss: its "
                                                     "TLS and websocket handshakes included)")
    handshake_timeout: float = key(to_duration, 10.0, "ws2tcp: the client's websocket upgrade request must be whole "
                                                      "within this from the connection's start, as must a PROXY "
                                                      "protocol header (a deadline, not an idle timer)")
    idle_timeout: float = key(to_duration, 300.0, "close a connection silent this long")
    max_connections: int = key(int_range(1, 1_000_000), 10000, "concurrent client connections")
    max_connections_per_ip: int = key(int_range(0, 1_000_000), 1000, "concurrent connections of one client address "
                                                                     "(0: no limit)")
    rate_limit: float = rate_limit_key("each tcp connection")
    client_timeout: float = key(to_duration, 60.0, "udp: a client's session ends after this long without a datagram")
    max_sessions: int = key(int_range(1, 1_000_000), 10000, "udp: sessions kept (beyond: the oldest idle goes)")
    ws_path: str = key(to_str, "/", "tcp2ws(s): the path asked of the websocket server")
    ws_host: str = key(to_str, "", "tcp2ws(s): its Host (and TLS name); default: the server's host")
    ws_ca: str = key(to_str, "", "tcp2wss: CA file to verify the websocket server with ('' = the system store)")
    proxy_protocol: bool = proxy_protocol_key("tcp modes")
    proxy_protocol_from: tuple = proxy_protocol_from_key("proxy_protocol")

    def validate(self) -> None:
        check_proxy_protocol(self.proxy_protocol, self.proxy_protocol_from, "proxy_protocol")
        if self.proxy_protocol and self.bind_mode == "udp":
            raise Invalid("proxy_protocol is read on TCP connections; a udp server cannot take it", ".proxy_protocol")


@dataclass(frozen=True)
class StreamConfig:
    """``[stream]``: layer-4 forwarding (names as in the Rust wmproxy)."""

    upstream: tuple = key(table_list(StreamUpstreamConfig), (), "upstream groups")
    server: tuple = key(table_list(StreamServerConfig), (), "listeners")

    def validate(self) -> None:
        names = _unique_names(self.upstream, "upstream", ".upstream")
        binds: list[str] = []
        for i, srv in enumerate(self.server):
            if srv.up_name not in names:
                known = ", ".join(repr(n) for n in names) or "none defined"
                raise Invalid(f"no [[stream.upstream]] named {srv.up_name!r} (known: {known})",
                              f".server[{i}].up_name")
            where = f"{srv.bind}/udp" if srv.bind_mode == "udp" else str(srv.bind)  # TCP and UDP ports are apart
            if where in binds:
                raise Invalid(f"{where} is bound twice", f".server[{i}].bind")
            binds.append(where)

    def upstream_named(self, name: str) -> StreamUpstreamConfig:
        return next(u for u in self.upstream if u.name == name)
