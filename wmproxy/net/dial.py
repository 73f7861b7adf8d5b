"""Open a TCP connection to a target by name or address, with errors every protocol can answer.

A failure is an UpstreamError that carries the HTTP status (502 refused/unreachable/DNS,
504 timeout) and the SOCKS5 reply code, so handlers map nothing themselves.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from gevent import socket as gsocket

from ..errors import UpstreamError
from ..prot.socks import (
    REP_CONNECTION_REFUSED,
    REP_GENERAL_FAILURE,
    REP_HOST_UNREACHABLE,
    REP_NETWORK_UNREACHABLE,
    REP_NOT_ALLOWED,
    REP_TTL_EXPIRED,
)
from .dns import Resolver

if TYPE_CHECKING:
    from .targets import TargetPolicy

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_ERRNO_REPLY = {
    errno.ECONNREFUSED: REP_CONNECTION_REFUSED,
    errno.ENETUNREACH: REP_NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: REP_HOST_UNREACHABLE,
    errno.EADDRNOTAVAIL: REP_NETWORK_UNREACHABLE,
    errno.EAFNOSUPPORT: REP_NETWORK_UNREACHABLE,
}


def plain_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A peer address as an address object: an IPv6 scope dropped, ::ffff:a.b.c.d as a.b.c.d.
    Raises ValueError when ``ip`` is not an IP literal."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def ip_allowed(ip: str, allow: tuple[Network, ...], deny: tuple[Network, ...]) -> bool:
    """The deny networks first, then the allow ones (none allows everyone)."""
    if not allow and not deny:
        return True
    try:
        addr = plain_ip(ip)
    except ValueError:
        return False
    if any(addr in net for net in deny):
        return False
    return not allow or any(addr in net for net in allow)


def in_networks(ip: str, nets: tuple[Network, ...]) -> bool:
    """``ip`` (a peer address as given, any form) is in one of ``nets``; False for no IP literal."""
    try:
        addr = plain_ip(ip)
    except ValueError:
        return False
    return any(addr in net for net in nets)


def fmt_addr(host: str, port: int) -> str:
    """'host:port', with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def allowed_addresses(addrs: list[tuple[int, str]], port: int, policy: Optional[TargetPolicy],
                      kind: int = socket.SOCK_STREAM) -> list[tuple[int, str]]:
    """The resolved ``addrs`` (family, ip) that ``policy`` (net.targets.TargetPolicy or None)
    lets the proxy reach on ``port`` (over TCP, or UDP for ``kind`` SOCK_DGRAM). Raises
    UpstreamError (403, SOCKS5 'not allowed') when it lets none."""
    if policy is None:
        return addrs
    kept, why = [], ""
    for family, ip in addrs:
        refusal = policy.refusal(ip, port, kind)
        if refusal is None:
            kept.append((family, ip))
        else:
            why = refusal
    if not kept:
        raise UpstreamError(f"target refused: {why}", 403, REP_NOT_ALLOWED)
    return kept


def dial(resolver: Resolver, host: str, port: int, timeout: float, policy: Optional[TargetPolicy] = None) -> Any:
    """Connect to ``host:port`` within ``timeout`` seconds in all (lookup included).

    Tries each address in turn, sharing the time left among them; with ``policy``
    (net.targets.TargetPolicy) only the addresses it allows, checked after resolution.
    Blocks cooperatively. Returns a connected socket with TCP_NODELAY and no timeout (the
    caller owns and closes it). Raises UpstreamError (DnsError for a name that does not
    resolve; 403 for a target the policy refuses).
    """
    deadline = time.monotonic() + timeout
    addrs = allowed_addresses(resolver.resolve(host), port, policy)
    last: UpstreamError | None = None
    for i, (family, ip) in enumerate(addrs):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        share = max(left / (len(addrs) - i), min(left, 2.0))
        sock = gsocket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(share)
        try:
            sock.connect((ip, port))
        except socket.timeout:
            last = UpstreamError(f"connect to {fmt_addr(ip, port)} timed out", 504, REP_TTL_EXPIRED)
        except OSError as e:
            reason = e.strerror or str(e)
            last = UpstreamError(f"connect to {fmt_addr(ip, port)}: {reason}", 502,
                                 _ERRNO_REPLY.get(e.errno or 0, REP_GENERAL_FAILURE))
        else:
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        sock.close()
    raise last or UpstreamError(f"connect to {fmt_addr(host, port)} timed out", 504, REP_TTL_EXPIRED)
