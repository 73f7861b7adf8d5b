"""The forward proxy listener: one port, the protocol sniffed from the first byte.

0x05 -> SOCKS5, 0x04 -> SOCKS4/4a, anything else -> HTTP (absolute-form or CONNECT).
Each accepted connection runs in its own greenlet from a bounded Pool; ``handle`` returns
when the connection is done and the server closes the socket.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import time

from ..config import Config, ProxyConfig
from ..errors import ProtocolError
from ..listener import ConnStats, Listener, ListenerSpec
from ..net.dial import dial, fmt_addr
from ..net.dns import Resolver
from ..net.reader import PeerClosed, Reader
from . import http, socks

log = logging.getLogger("wmproxy.proxy")


class ConnInfo:
    """What one client connection did, for its single log line."""

    __slots__ = ("peer", "proto", "target", "result", "up", "down", "started")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.proto = "-"
        self.target = "-"
        self.result = "closed"
        self.up = 0
        self.down = 0
        self.started = time.monotonic()

    def line(self) -> str:
        took = time.monotonic() - self.started
        return (f"{self.peer} {self.proto} {self.target} {self.result} "
                f"up={self.up} down={self.down} {took:.3f}s")


class ProxyContext:
    """Settings and services one listener's handlers share. Immutable once built: a reload
    builds a new context for new connections while live ones keep theirs."""

    def __init__(self, cfg: ProxyConfig, resolver: Resolver, stats: ConnStats | None = None) -> None:
        self.cfg = cfg
        self.resolver = resolver
        self.stats = stats or ConnStats()

    def client_allowed(self, ip: str) -> bool:
        """Deny list first, then the allow list (an empty allow list allows everyone)."""
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.cfg.deny):
            return False
        return not self.cfg.allow or any(addr in net for net in self.cfg.allow)

    def credentials_ok(self, user: str, password: str) -> bool:
        """Both must match; compared in constant time."""
        ok_user = hmac.compare_digest(user.encode(), self.cfg.username.encode())
        ok_pass = hmac.compare_digest(password.encode(), self.cfg.password.encode())
        return ok_user and ok_pass

    def dial(self, host: str, port: int) -> socket.socket:
        return dial(self.resolver, host, port, self.cfg.connect_timeout)


class ProxyServer(Listener):
    """A forward proxy on one listening socket."""

    kind = "proxy"

    def make_context(self, settings: ProxyConfig, app) -> ProxyContext:
        return ProxyContext(settings, app.resolver, self.stats)

    def serve(self, client: socket.socket, address, ctx: ProxyContext) -> None:
        info = ConnInfo(fmt_addr(address[0], address[1]))
        client.settimeout(ctx.cfg.handshake_timeout)
        reader = Reader(client)
        allowed = ctx.client_allowed(address[0])
        failed = True
        first = None
        try:
            first = reader.peek(1)
            if not first:
                info.result = "closed before sending"
                return
            flags = ctx.cfg.flag
            if first[0] == socks.SOCKS5 and "socks5" in flags:
                socks.serve_socks5(ctx, client, reader, info, allowed)
            elif first[0] == socks.SOCKS4 and "socks4" in flags:
                socks.serve_socks4(ctx, client, reader, info, allowed)
            elif first[0] not in (socks.SOCKS4, socks.SOCKS5) and flags & {"http", "https"}:
                http.serve_http(ctx, client, reader, info, allowed)
            else:
                info.proto = "?"
                info.result = f"refused: protocol of first byte 0x{first[0]:02x} not served"
            failed = False
        except socket.timeout:
            info.result = "timeout waiting for the client"
        except PeerClosed as e:
            info.result = f"client closed: {e}"
        except ProtocolError as e:
            info.result = f"bad request: {e}"
        except OSError as e:
            info.result = f"client error: {e.strerror or e}"
        except Exception:
            info.result = "internal error"
            log.exception("internal error serving %s", info.peer)
        finally:
            ctx.stats.bytes_in += info.up
            ctx.stats.bytes_out += info.down
            if info.proto != "http" or failed:  # HTTP logs one line per request itself
                # a connect-and-close (port probe, health check) is not worth an info line
                log.log(logging.DEBUG if first == b"" else logging.INFO, "%s", info.line())


def listener_specs(cfg: Config) -> list[ListenerSpec]:
    """The forward proxy listener a config asks for (none without [proxy])."""
    if cfg.proxy is None:
        return []
    return [ListenerSpec("proxy", cfg.proxy.bind, cfg.proxy, "proxy.bind", ProxyServer)]
