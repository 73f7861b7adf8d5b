"""A center client's local entry: its proxy port's connections go, unparsed, into the link.

The forward proxy (proxy/) serves the port but knows nothing of links: where its settings name
a center client, it hands each connection to :func:`entry_for`'s handler, which relays the
bytes into a PROXY stream (the center server's forward proxy reads them) and answers with the
protocol's refusal while the link is down. So the dependency runs one way, center -> proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..net.reader import Reader
from ..prot.frame import CreateMode
from ..prot.socks import SOCKS4, SOCKS5
from ..proxy.server import ConnInfo, ProxyContext, refuse

if TYPE_CHECKING:
    from .client import CenterClient

EntryHandler = Callable[[ProxyContext, Any, Reader, ConnInfo, bool, int], None]


def entry_for(client: "CenterClient") -> EntryHandler:
    """The handler of the local entry of ``client`` (the center client in force)."""

    def serve(ctx: ProxyContext, conn: Any, reader: Reader, info: ConnInfo, allowed: bool, first: int) -> None:
        """One local connection (its first byte ``first`` peeked): into a PROXY stream, or the
        protocol's refusal when the client address is not allowed or the link is down."""
        link = client.link
        if not allowed or link is None:
            reason = "client address not allowed" if not allowed else "the center link is down"
            info.proto = {SOCKS5: "socks5", SOCKS4: "socks4"}.get(first, "http")
            refuse(conn, reader, first, reason, ctx.cfg.max_header_size, not_allowed=not allowed)
            info.result = f"refused: {reason}"
            info.proto = "center"
            return
        info.proto, info.target = "center", link.name
        info.end_handshake()  # the center server's proxy reads the handshake, under its own deadline
        stream = link.open_stream(CreateMode.PROXY, "", ((info.ip, info.port), conn.getsockname()))
        ctx.relay(conn, stream, info, reader.take_pending())

    return serve
