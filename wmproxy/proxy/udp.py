"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7), enabled by ``[proxy] udp_bind``.

Each association gets its own relay socket (``udp_bind``'s address, a port of its own) whose
address goes back in the reply. Datagrams on it are accepted only from the associating
client: its TCP connection's IP, and the port it named in the request (or, when it named
port 0, the port of its first datagram). Each one's header is stripped and its data sent to
the target from an outbound socket of the association; answers come back with a header
naming their sender, and only from targets the client has sent to (address and port
restricted, as a NAT would). Fragments (FRAG != 0) are dropped. The association ends when
its TCP connection closes, or after ``idle_timeout`` with no datagram either way.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import gevent
from gevent import socket as gsocket

from ..errors import ProtocolError, UpstreamError
from ..net.conn import Address, Conn
from ..net.dial import allowed_addresses, fmt_addr, plain_ip
from ..net.listen import BindError, open_udp
from ..net.reader import Reader
from ..prot import socks as s5

if TYPE_CHECKING:
    from .server import ConnInfo, ProxyContext

log = logging.getLogger("wmproxy.proxy")

MAX_DATAGRAM = 65535
MAX_PEERS = 4096  # targets remembered per association (answers from others are dropped)


def _unmapped(ip: str) -> str:
    return str(plain_ip(ip))


class Association:
    """One client's UDP relay: the client-facing socket, one outbound socket per address
    family (made on first use), and the greenlets that pump them."""

    def __init__(self, ctx: ProxyContext, client_ip: str, client_port: int, relay_sock: socket.socket,
                 label: str) -> None:
        self.ctx = ctx
        self.client_ip = client_ip
        self.client_port = client_port  # 0 until the first datagram when the request named none
        self.relay = relay_sock
        self.label = label
        self.out: dict[int, socket.socket] = {}
        self.peers: OrderedDict = OrderedDict()  # (ip, port) the client sent to -> None
        self.greenlets: list[gevent.Greenlet] = []
        self.relay_to: Address | None = None  # the client's UDP address, known from its first datagram
        self.last = time.monotonic()
        self.up = self.down = self.dropped = 0

    def start(self) -> None:
        self.greenlets.append(gevent.spawn(self._from_client))

    def close(self) -> None:
        gevent.killall(self.greenlets, block=False)
        for sock in (self.relay, *self.out.values()):
            sock.close()

    # -- client -> targets ----------------------------------------------------------------------
    def _from_client(self) -> None:
        while True:
            try:
                datagram, source = self.relay.recvfrom(MAX_DATAGRAM)
            except OSError:
                return
            if _unmapped(source[0]) != self.client_ip or self.client_port not in (0, source[1]):
                self.dropped += 1
                log.debug("%s udp: datagram from %s ignored: not the associating client", self.label,
                          fmt_addr(*source[:2]))
                continue
            self.client_port = source[1]
            self._forward(datagram, source)

    def _forward(self, datagram: bytes, source: Address) -> None:
        try:
            frag, host, port, start = s5.parse_udp_header(datagram)
            if frag:
                raise ProtocolError(f"fragment {frag} (fragmentation is not supported)")
            family, ip = allowed_addresses(self.ctx.resolver.resolve(host), port, self.ctx.targets,
                                            socket.SOCK_DGRAM)[0]
            out = self._outbound(family)
            out.sendto(memoryview(datagram)[start:], (ip, port))
        except (ProtocolError, UpstreamError, OSError) as e:
            self.dropped += 1
            log.debug("%s udp: datagram of %d bytes dropped: %s", self.label, len(datagram), e)
            return
        self.peers[(ip, port)] = None
        self.peers.move_to_end((ip, port))
        if len(self.peers) > MAX_PEERS:
            self.peers.popitem(last=False)
        self.relay_to = source
        self.last = time.monotonic()
        self.up += len(datagram) - start

    def _outbound(self, family: int) -> socket.socket:
        sock = self.out.get(family)
        if sock is None:
            sock = self.out[family] = gsocket.socket(family, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))
            self.greenlets.append(gevent.spawn(self._from_targets, sock))
        return sock

    # -- targets -> client ----------------------------------------------------------------------
    def _from_targets(self, sock: socket.socket) -> None:
        while True:
            try:
                data, sender = sock.recvfrom(MAX_DATAGRAM)
            except ConnectionRefusedError:
                continue  # ICMP port unreachable for an earlier datagram
            except OSError:
                return
            host, port = sender[0], sender[1]
            if (host, port) not in self.peers or self.relay_to is None:  # (the client sends first)
                self.dropped += 1
                continue
            try:
                self.relay.sendto(s5.encode_udp_header(_unmapped(host), port) + data, self.relay_to)
            except OSError as e:
                self.dropped += 1
                log.debug("%s udp: answer to the client dropped: %s", self.label, e)
                continue
            self.last = time.monotonic()
            self.down += len(data)


def serve_udp_associate(ctx: ProxyContext, client: Conn, reader: Reader, info: ConnInfo, req: s5.Request) -> None:
    """Open the association, answer with its relay address, and keep it until the TCP
    connection closes or it is idle for ``idle_timeout``. Fills ``info``."""
    info.proto = "socks5-udp"
    info.end_handshake()
    bind = ctx.cfg.udp_bind
    assert bind is not None  # (UDP ASSOCIATE is served only with udp_bind set)
    try:
        relay_sock = gsocket.socket(fileno=open_udp(bind, "proxy.udp_bind").detach())
    except BindError as e:
        client.sendall(s5.encode_reply(s5.REP_GENERAL_FAILURE))
        info.result = f"failed: {e}"
        log.warning("%s", e)
        return
    ip = info.ip  # (the client's: behind a balancer, the PROXY protocol header's)
    port = req.port if req.host in ("0.0.0.0", "::", "0") or _is_ip_of(req.host, ip) else 0
    assoc = Association(ctx, _unmapped(ip), port, relay_sock, info.peer)
    try:
        host, relay_port = relay_sock.getsockname()[:2]
        if ipaddress.ip_address(host).is_unspecified:
            host = client.getsockname()[0]  # the address the client already reaches us on
        client.sendall(s5.encode_reply(s5.REP_SUCCEEDED, _unmapped(host), relay_port))
        info.target = f"udp relay {fmt_addr(host, relay_port)}"
        assoc.start()
        info.result = "done (" + _hold(ctx, client, reader, assoc) + ")"
    finally:
        assoc.close()
        info.up, info.down = assoc.up, assoc.down
        if assoc.dropped:
            info.result += f" dropped={assoc.dropped}"


def _is_ip_of(host: str, ip: str) -> bool:
    try:
        return _unmapped(host) == _unmapped(ip)
    except ValueError:
        return False


def _hold(ctx: ProxyContext, client: Conn, reader: Reader, assoc: Association) -> str:
    """Wait for the control connection to close (its bytes, if any, mean nothing)."""
    timeout = ctx.cfg.idle_timeout
    client.settimeout(min(timeout, 5.0))
    while True:
        try:
            if not reader.read_some():
                return "client closed the TCP connection"
            reader.take_pending()
        except socket.timeout:
            if time.monotonic() - assoc.last >= timeout:
                return f"idle {timeout:g}s"
        except OSError as e:
            return f"TCP connection error: {e.strerror or e}"
