"""Which addresses the forward proxy may dial on a client's behalf (no SSRF through the proxy).

Checked after name resolution, on each address a target resolves to (a name resolving to
127.0.0.1 is refused as 127.0.0.1 is), in this order:

1. ``deny_targets`` refuse;
2. this process's own listening addresses are always refused (every listener: the forward
   proxy, ``[http]``, ``[stream]``, the center link, mapping ports, the control API), so a
   client can neither reach the control API through the proxy nor make it loop into itself;
3. ``allow_targets`` allow;
4. by default (``deny_local``: a proxy bound to a non-loopback address) loopback, unspecified
   and link-local targets are refused (127.0.0.0/8, ::1, 0.0.0.0, ::, 169.254.0.0/16,
   fe80::/10), as squid's ``to_localhost``.

The own addresses come from the registry that ``net.listen`` fills for every socket it binds.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Optional

import psutil

from ..config import ProxyConfig, TargetRule
from .dial import plain_ip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# socket -> (its address as an ip_address, port, type); held strongly (gevent's server keeps
# only the socket inside the one given to it, which closes with it) and dropped once closed
_OWN: dict[socket.socket, tuple[IPAddress, int, int]] = {}
# (address, port, type) of the listening sockets of the rest of this process tree: a worker's
# master tells it those it bound (every listener's, the control API's)
_TREE: list[tuple[IPAddress, int, int]] = []
_HOST_ADDRS: tuple[float, frozenset[IPAddress]] = (0.0, frozenset())
HOST_ADDRS_TTL = 5.0


def register_own(sock: socket.socket) -> None:
    """Remember a listening socket of this process until it is closed (the closed ones are
    forgotten here, at the next registration)."""
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return
    for old in [s for s in _OWN if s.fileno() == -1]:
        del _OWN[old]
    _OWN[sock] = (plain_ip(host), port, sock.type)


def register_tree(addresses: list[tuple[str, int, int]]) -> None:
    """The (host, port, type) of the listening sockets the rest of this process tree holds
    (a worker's master's list, replacing the last one): never dialled either."""
    _TREE[:] = [(plain_ip(host), port, kind) for host, port, kind in addresses]


def own_addresses(kind: int = socket.SOCK_STREAM) -> list[tuple[IPAddress, int]]:
    """(address, port) of every listening socket of this process (and of its process tree:
    register_tree) of ``kind`` still open."""
    mine = [(addr, port) for sock, (addr, port, k) in list(_OWN.items()) if k == kind and sock.fileno() != -1]
    return mine + [(addr, port) for addr, port, k in _TREE if k == kind]


def host_addresses() -> frozenset[IPAddress]:
    """The addresses of this host's interfaces (a wildcard listener answers on each),
    remembered for HOST_ADDRS_TTL seconds."""
    global _HOST_ADDRS
    now = time.monotonic()
    if now - _HOST_ADDRS[0] > HOST_ADDRS_TTL:
        found = set()
        try:
            for addrs in psutil.net_if_addrs().values():
                for a in addrs:
                    if a.family in (socket.AF_INET, socket.AF_INET6):
                        try:
                            found.add(plain_ip(a.address))
                        except ValueError:
                            pass
        except OSError:
            pass
        _HOST_ADDRS = (now, frozenset(found))
    return _HOST_ADDRS[1]


def _is_local(addr: IPAddress) -> bool:
    return bool(addr.is_loopback or addr.is_unspecified or addr.is_link_local)


def _matches(rules: tuple[TargetRule, ...], addr: IPAddress, port: int) -> bool:
    return any(rule.matches(addr, port) for rule in rules)


class TargetPolicy:
    """The checks of one listener's settings. Immutable; :meth:`refusal` is cheap for the
    usual remote target (a few set and network tests)."""

    __slots__ = ("deny", "allow", "deny_local")

    def __init__(self, deny: tuple[TargetRule, ...] = (), allow: tuple[TargetRule, ...] = (),
                 deny_local: bool = False) -> None:
        self.deny = deny
        self.allow = allow
        self.deny_local = deny_local

    def refusal(self, ip: str, port: int, kind: int = socket.SOCK_STREAM) -> Optional[str]:
        """Why the proxy must not dial ``ip:port``, or None when it may."""
        try:
            addr = plain_ip(ip)
        except ValueError:
            return f"{ip} is not an IP address"
        if self.deny and _matches(self.deny, addr, port):
            return f"{ip}:{port} is refused by deny_targets"
        if self._own(addr, port, kind):
            return f"{ip}:{port} is one of this proxy's own listening addresses"
        if self.allow and _matches(self.allow, addr, port):
            return None
        if self.deny_local and _is_local(addr):
            return (f"{ip} is a loopback, unspecified or link-local address, refused on a proxy that other hosts "
                    f"can reach (allow_targets lets it)")
        return None

    @staticmethod
    def _own(addr: IPAddress, port: int, kind: int) -> bool:
        for bound, bound_port in own_addresses(kind):
            if bound_port != port:
                continue
            if bound == addr or addr.is_unspecified:  # 0.0.0.0:P reaches whatever listens on P here
                return True
            if bound.is_unspecified and (addr.is_loopback or addr in host_addresses()):
                return True
        return False


def target_policy(cfg: ProxyConfig, exposed: bool) -> TargetPolicy:
    """What the forward proxy of ``cfg`` may dial: its deny_targets and allow_targets; by
    default no loopback, unspecified or link-local target when other hosts can reach its
    clients' side (``exposed``); never this process's own listeners."""
    return TargetPolicy(cfg.deny_targets, cfg.allow_targets, deny_local=exposed)
