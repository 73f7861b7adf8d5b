"""Intranet penetration on the center server: the public ports of the clients' tcp mappings.

Each tcp mapping a client declares gets its own public listener on its ``remote_bind``,
checked at registration: a port outside ``allow_ports``, or one another client already holds,
is refused with a reason (MAPPING+ACK). A public connection becomes a TCP stream on the link of
the client that owns the mapping; the client dials the private service. The listeners belong
to their link: they close when it ends, and open again when the client comes back.
"""

from __future__ import annotations

import logging

from gevent.server import StreamServer

from ..config import Addr, to_addr
from ..net.dial import fmt_addr
from ..net.listen import BindError, open_listener
from ..net.relay import RelayStats, relay
from ..prot import frame as fr
from ..prot.frame import CreateMode

log = logging.getLogger("wmproxy.center")


class PublicPort(StreamServer):
    """The public listener of one tcp mapping; ``link`` is set once the handshake is done."""

    def __init__(self, sock, name: str, owner: str, idle_timeout: float) -> None:
        super().__init__(sock)
        self.name = name
        self.owner = owner
        self.idle_timeout = idle_timeout
        self.link = None
        self.bind = ""
        self.connections = 0

    def handle(self, conn, address) -> None:
        link = self.link
        peer = fmt_addr(address[0], address[1])
        if link is None or link.closed:
            log.info("%s mapping %s: client %s is not connected, connection closed", peer, self.name, self.owner)
            return
        try:
            stream = link.open_stream(CreateMode.TCP, self.name)
        except ConnectionError as e:
            log.info("%s mapping %s: %s", peer, self.name, e)
            return
        self.connections += 1
        stats = RelayStats()
        relay(conn, stream, self.idle_timeout, stats=stats)
        log.info("%s mapping %s (%s) done (%s) in=%d out=%d", peer, self.name, self.owner, stats.reason,
                 stats.a_to_b, stats.b_to_a)


class MappingRegistry:
    """The tcp mappings of every link of one center server, by public address."""

    def __init__(self) -> None:
        self.ports: dict[str, PublicPort] = {}

    def register(self, owner: str, mappings: list[fr.MappingSpec], allow_ports: tuple,
                 idle_timeout: float) -> tuple[list[fr.MappingAnswer], list[PublicPort]]:
        """Check and bind the public ports of ``owner``'s mappings. Returns the answers and
        the bound (not yet serving) ports; the caller attaches the link and starts them."""
        answers, ports = [], []
        for m in mappings:
            reason = ""
            if m.mode != "tcp":
                reason = f"mode {m.mode!r} is not served by this server (tcp only)"
            else:
                try:
                    addr = to_addr(m.remote_bind)
                except ValueError as e:
                    addr, reason = None, f"remote_bind: {e}"
                if addr is not None:
                    reason = self._refusal(owner, addr, allow_ports)
                if not reason:
                    try:
                        sock = open_listener(addr, f"mapping {m.name}")
                    except BindError as e:
                        reason = str(e)
                    else:
                        port = PublicPort(sock, m.name, owner, idle_timeout)
                        port.bind = str(addr)
                        self.ports[str(addr)] = port
                        ports.append(port)
            if reason:
                log.warning("center: mapping %r of client %s refused: %s", m.name, owner, reason)
            answers.append(fr.MappingAnswer(m.name, not reason, reason))
        return answers, ports

    def _refusal(self, owner: str, addr: Addr, allow_ports: tuple) -> str:
        if allow_ports and not any(lo <= addr.port <= hi for lo, hi in allow_ports):
            ranges = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in allow_ports)
            return f"port {addr.port} is outside allow_ports ({ranges})"
        held = self.ports.get(str(addr))
        if held is not None:
            return f"{addr} is already held by client {held.owner} (mapping {held.name})"
        return ""

    def update(self, owner: str, link, ports: list[PublicPort], specs: list[fr.MappingSpec], allow_ports: tuple,
               idle_timeout: float) -> list[fr.MappingAnswer]:
        """A live link's new mappings: withdraw the removed and moved ones, publish the new
        ones, leave the unchanged ones (and their connections) alone. Updates ``ports``."""
        wanted = {m.name: m for m in specs}
        gone = [p for p in ports if p.name not in wanted or wanted[p.name].remote_bind != p.bind
                or wanted[p.name].mode != "tcp"]
        self.withdraw(gone)
        ports[:] = [p for p in ports if p not in gone]
        kept = {p.name for p in ports}
        answers, bound = self.register(owner, [m for m in specs if m.name not in kept], allow_ports, idle_timeout)
        for port in bound:
            port.link = link
            port.start()
            ports.append(port)
            log.info("center: mapping %r of client %s published on %s", port.name, owner, port.bind)
        by_name = {a.name: a for a in answers}
        return [by_name.get(m.name, fr.MappingAnswer(m.name, True)) for m in specs]

    def withdraw(self, ports: list[PublicPort]) -> None:
        """Close the public ports of a link that ended."""
        for port in ports:
            for key, value in list(self.ports.items()):
                if value is port:
                    del self.ports[key]
            port.close()
            log.info("center: mapping %r of client %s withdrawn", port.name, port.owner)

    def status(self) -> list[dict]:
        return [{"name": p.name, "mode": "tcp", "client": p.owner, "remote_bind": bind,
                 "connected": p.link is not None and not p.link.closed, "connections": p.connections}
                for bind, p in self.ports.items()]
