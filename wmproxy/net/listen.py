"""Opening listening sockets, with errors that name the config key and the address."""

from __future__ import annotations

import socket
from typing import Callable

from ..config import Addr
from ..errors import ProxyError
from .targets import register_own

UDP_BUFFER = 4 << 20


class BindError(ProxyError):
    """A listening address could not be opened."""


def _bound(addr: Addr, what: str, kind: int, prepare: Callable[[socket.socket], None]) -> socket.socket:
    """A socket of ``kind`` bound to ``addr`` (IPv6 sockets v6-only); ``prepare(sock)`` runs
    before bind. Raises BindError naming the config key, the address and the reason."""
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BindError(f"{what}: cannot resolve bind address {addr}: {e.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        prepare(sock)
        sock.bind(sockaddr)
    except OSError as e:
        sock.close()
        raise BindError(f"{what}: cannot listen on {addr}: {e.strerror or e}") from None
    register_own(sock)  # the forward proxy never dials its own listeners
    return sock


def open_listener(addr: Addr, what: str, backlog: int = 1024) -> socket.socket:
    """A bound, listening TCP socket for ``addr`` (SO_REUSEADDR). Raises BindError."""
    sock = _bound(addr, what, socket.SOCK_STREAM,
                  lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1))
    try:
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise BindError(f"{what}: cannot listen on {addr}: {e.strerror or e}") from None
    return sock


def _udp_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # one socket for every client: room for bursts
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER)  # the kernel caps it at its maximum
        except OSError:
            pass


def open_udp(addr: Addr, what: str, reuseport: bool = False) -> socket.socket:
    """A bound UDP socket for ``addr`` with large buffers; with ``reuseport`` one of a group
    bound to the same address (SO_REUSEPORT: the kernel gives each client's datagrams, by a
    hash of their addresses, to one socket of the group). Raises BindError."""
    def prepare(sock: socket.socket) -> None:
        _udp_buffers(sock)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)

    return _bound(addr, what, socket.SOCK_DGRAM, prepare)
