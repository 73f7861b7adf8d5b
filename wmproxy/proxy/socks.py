"""SOCKS5 (RFC 1928 + RFC 1929) and SOCKS4/4a CONNECT over the shared relay.

Handlers run in the listener's greenlet and return when the connection is done; the server
closes the client socket. Credentials are checked before any upstream connection is opened.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from ..errors import ProtocolError
from ..net.conn import Conn
from ..net.dial import fmt_addr
from ..net.reader import Reader
from ..prot import socks as s5
from ..prot.socks import SOCKS4, SOCKS5  # noqa: F401  (the server sniffs with these)
from .tunnel import open_tunnel
from .udp import serve_udp_associate

if TYPE_CHECKING:
    from .server import ConnInfo, ProxyContext


def serve_socks5(ctx: ProxyContext, client: Conn, reader: Reader, info: ConnInfo, allowed: bool) -> None:
    info.proto = "socks5"
    methods = reader.read_message(s5.parse_greeting)
    wanted = s5.METHOD_USERPASS if ctx.cfg.auth and allowed else s5.METHOD_NO_AUTH
    if wanted not in methods:
        client.sendall(s5.encode_method(s5.METHOD_NONE_ACCEPTABLE))
        info.result = "refused: client offers no acceptable auth method" + (" (auth required)" if ctx.cfg.auth else "")
        return
    client.sendall(s5.encode_method(wanted))
    if wanted == s5.METHOD_USERPASS:
        user, password = reader.read_message(s5.parse_userpass)
        ip = info.ip
        if ctx.auth_blocked(ip):
            client.sendall(s5.encode_userpass_status(False))
            info.result = "refused: too many failed logins from this address (auth_fail_limit)"
            return
        refused = ctx.login(user, password, ip)
        client.sendall(s5.encode_userpass_status(not refused))
        if refused:
            info.result = f"refused: {refused}"
            return
        full = ctx.admit(info, user)
    else:
        full = ""
    try:
        req = reader.read_message(s5.parse_request)
    except ProtocolError as e:
        client.sendall(s5.encode_reply(e.socks5_reply))
        raise
    info.target = fmt_addr(req.host, req.port)
    if not allowed or full:  # (the user's limit: "not allowed by ruleset", as for an address)
        client.sendall(s5.encode_reply(s5.REP_NOT_ALLOWED))
        info.result = f"refused: {full}" if full else "refused: client address not allowed"
        return
    if req.command == s5.CMD_UDP_ASSOCIATE and ctx.udp_associate:
        serve_udp_associate(ctx, client, reader, info, req)
        return
    if req.command != s5.CMD_CONNECT:
        client.sendall(s5.encode_reply(s5.REP_COMMAND_NOT_SUPPORTED))
        info.result = f"refused: command {req.command} not supported"
        return
    open_tunnel(
        ctx, client, reader, info, req.host, req.port,
        ok_reply=lambda host, port: s5.encode_reply(s5.REP_SUCCEEDED, host, port),
        fail_reply=lambda e: s5.encode_reply(e.socks5_reply),
    )


def serve_socks4(ctx: ProxyContext, client: Conn, reader: Reader, info: ConnInfo, allowed: bool) -> None:
    info.proto = "socks4"
    refuse = s5.encode_socks4_reply(False)
    try:
        req = reader.read_message(s5.parse_socks4)
    except ProtocolError:
        client.sendall(refuse)  # (SOCKS4 has one refusal for all)
        raise
    info.proto = "socks4a" if not _is_ip(req.host) else "socks4"
    info.target = fmt_addr(req.host, req.port)
    if not allowed:
        client.sendall(refuse)
        info.result = "refused: client address not allowed"
        return
    if ctx.cfg.auth:
        # SOCKS4 carries no password; with auth configured it cannot be allowed.
        client.sendall(refuse)
        info.result = "refused: authentication required, SOCKS4 cannot carry a password"
        return
    if req.command != s5.CMD_CONNECT:
        client.sendall(refuse)
        info.result = f"refused: command {req.command} not supported"
        return
    open_tunnel(
        ctx, client, reader, info, req.host, req.port,
        ok_reply=lambda host, port: s5.encode_socks4_reply(True, host, port),
        fail_reply=lambda e: refuse,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
