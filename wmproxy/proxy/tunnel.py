"""The end of every tunnelling request (CONNECT, SOCKS5, SOCKS4): dial, answer, relay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..errors import UpstreamError
from ..net.conn import Conn
from ..net.reader import Reader
from ..net.writer import send_all

if TYPE_CHECKING:
    from .server import ConnInfo, ProxyContext


def open_tunnel(ctx: ProxyContext, client: Conn, reader: Reader, info: ConnInfo, host: str, port: int,
                ok_reply: Callable[[str, int], bytes], fail_reply: Callable[[UpstreamError], bytes]) -> None:
    """Dial ``host:port``; answer the client with ``ok_reply(bound host, bound port)`` or
    ``fail_reply(error)``; then relay with ``ctx.relay`` (bytes the client sent early, still
    in ``reader``, go first), which fills ``info`` and may go on after this returns. The
    relay closes both sockets; on failure the caller's server closes the client. Blocks;
    raises OSError if the client is gone before the relay starts.
    """
    info.end_handshake()
    try:
        upstream = ctx.dial(host, port)
    except UpstreamError as e:
        client.sendall(fail_reply(e))
        info.result = f"failed: {e}"
        return
    try:
        bound = upstream.getsockname()
        send_all(client, ok_reply(bound[0], bound[1]))  # (one send: no SO_SNDBUF query and timer per tunnel)
    except OSError:
        upstream.close()
        raise
    ctx.relay(client, upstream, info, reader.take_pending())
