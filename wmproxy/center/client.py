"""The center client: keeps a link to each of its center servers (``servers_mode = "all"``) or
to one at a time, in order (``"failover"``), each dialled again with backoff whenever it drops
(uplink.py). ``link`` is the live link with the fewest open streams, or None while none is up
(new local connections then fail at once); mapped connections come over any of them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from typing import Any

import gevent
from gevent import socket as gsocket

from ..config import CenterConfig, MappingConfig, ProxyConfig
from ..listener import ConnStats
from ..errors import UpstreamError
from ..net.dial import dial, fmt_addr
from ..net.proxyproto import header_for
from .trust import ClientTrust
from ..net.udp import MAX_DATAGRAM
from ..net.relay import link_owned, relay_then
from ..prot import frame as fr
from ..prot.frame import CreateMode, Flag, Kind
from ..services import Handler, Services
from .entry import entry_for
from .health import HealthWatch
from .link import CenterLink
from .uplink import HANDSHAKE_TIMEOUT, ServerLink, backoff
from .vconn import VirtualConn

log = logging.getLogger("wmproxy.center")

IDLE_TIMEOUT = 300.0  # a mapped connection with no traffic this long is closed


def default_client_id(config_file: str | None) -> str:
    """A client's id when its config names none: the host name and a digest of the config
    file's path (``host-1a2b3c4d``): the same across restarts, another for each config on a
    host, nothing to store."""
    host = "".join(c if c.isascii() and (c.isalnum() or c in ".-") else "-" for c in socket.gethostname())[:40]
    where = os.path.realpath(config_file) if config_file else "(command line)"
    return f"{host or 'host'}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


class CenterClient:
    """Owned by the App; :meth:`start` and :meth:`stop` it."""

    def __init__(self, cfg: CenterConfig, services: Services, mappings: tuple = (), client_id: str = "") -> None:
        self.cfg = cfg
        self.client_id = client_id  # told to a server that reads ids: a new link of ours replaces an old one
        self.services = services
        self.entry = entry_for(self)  # what its local proxy port hands every connection
        self.mappings = {m.name: m for m in mappings}  # MappingConfig by name
        self._proxies: dict = {}
        self.trust = ClientTrust(cfg) if cfg.tls else None
        names = cfg.server_name * len(cfg.server) if len(cfg.server_name) == 1 else cfg.server_name
        self.servers = [ServerLink(self, addr, names[i] if names else "", f"to {addr}")
                        for i, addr in enumerate(cfg.server)]
        self._greenlet: gevent.Greenlet | None = None  # failover mode: the one driving the links in turn
        self.unhealthy: set[str] = set()  # mappings withdrawn while their local service fails its checks
        self._watches: list[HealthWatch] = []

    def start(self) -> None:
        if not self.cfg.tls:
            log.warning("center.server %s: tls = false, the link is plain TCP: anyone on the path can read and "
                        "alter the traffic", ", ".join(map(str, self.cfg.server)))
        if self.cfg.servers_mode == "failover" and len(self.servers) > 1:
            self._greenlet = gevent.spawn(self._failover)
        else:
            for server in self.servers:
                server.start()
        self._watch()

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        for watch in self._watches:
            watch.stop()
        for server in self.servers:
            server.stop()

    @property
    def link(self) -> CenterLink | None:
        """The live link new local streams go over: the one with the fewest open streams."""
        links = [link for server in self.servers if (link := server.up) is not None]
        return min(links, key=lambda link: link.stream_count) if links else None

    def _failover(self) -> None:
        """servers_mode = "failover": one link at a time, the servers in order, moving on to the
        next when one cannot be reached or its link dies; the backoff grows once every server
        failed in a row."""
        turn, failures = 0, 0
        while True:
            server = self.servers[turn]
            stable = server.attempt()
            if server.last_error == "enrolled":
                stable = server.attempt()  # (at once, presenting the certificate it pinned)
            failures = 0 if stable else failures + 1
            turn = (turn + 1) % len(self.servers)
            delay = backoff(failures // len(self.servers)) if failures >= len(self.servers) else 0.0
            log.warning("center link %s: attempt %d: %s; next: %s%s", server.label, server.attempts,
                        server.last_error, self.servers[turn].label, f" in {delay:.1f}s" if delay else "")
            gevent.sleep(delay)

    def _watch(self) -> None:
        """(Re)start the health checks of the mappings that have one; all start healthy."""
        for watch in self._watches:
            watch.stop()
        self.unhealthy.clear()
        self._watches = [HealthWatch(self.services.resolver, m, self._health_changed)
                         for m in self.mappings.values() if m.health_check is not None]

    def _health_changed(self, name: str, healthy: bool, why: str) -> None:
        """A checked service failed or came back: its mapping is withdrawn from the server or
        published again (a MAPPING over the live link; the next handshake otherwise)."""
        if healthy:
            self.unhealthy.discard(name)
            log.info("mapping %r: the local service is healthy again (%s): publishing it", name, why)
        else:
            self.unhealthy.add(name)
            log.warning("mapping %r: the local service is unhealthy (%s): withdrawn from the server", name, why)
        self._send_mappings()

    def specs(self) -> list[fr.MappingSpec]:
        """Our mappings as MAPPING tells them (the withdrawn unhealthy ones left out)."""
        return [fr.MappingSpec(m.name, m.wire_mode, m.domain, str(m.remote_bind) if m.remote_bind else "", m.headers,
                               m.group, m.group_key)
                for m in self.mappings.values() if m.name not in self.unhealthy]

    def update_mappings(self, mappings: tuple) -> None:
        """New mappings from a reload: sent over the live link (the server applies the
        difference; the link and its other streams stay), or with the next handshake."""
        self.mappings = {m.name: m for m in mappings}
        self._watch()
        self._send_mappings()

    def _send_mappings(self) -> None:
        for server in self.servers:
            server.send_mappings(self.specs)

    def serve_stream(self, vc: VirtualConn, mode: CreateMode, target: str) -> None:
        """A public connection to one of our mappings: dial its local address, relay."""
        mapping = self.mappings.get(target)
        wanted = {CreateMode.TCP: ("tcp", "udp", "tls"), CreateMode.HTTP: ("http", "https"),
                  CreateMode.PROXY: ("proxy",)}.get(mode)
        if mapping is None or mapping.wire_mode.partition("+")[0] not in (wanted or ()):
            vc.close(f"no {mode.name} mapping named {target!r} on this client")
            return
        visitor, vc.visitor = vc.visitor, None  # (the public client and the address it reached, from a server
        # that tells; read once: a long-lived stream does not keep it)
        if mapping.mode == "proxy":  # a forward proxy whose traffic leaves from this network
            vc.link.send_frame(Kind.CREATE, Flag.ACK, vc.sid)
            self._proxy_for(mapping)(vc, visitor[0] if visitor else vc.link.peer_address)
            return
        if mapping.mode == "udp":
            self._serve_udp(vc, mapping)
            return
        try:
            local = dial(self.services.resolver, mapping.local_addr.host, mapping.local_addr.port, HANDSHAKE_TIMEOUT)
        except UpstreamError as e:
            log.warning("mapping %r: %s", target, e)
            vc.close(str(e))
            return
        if mapping.proxy_protocol:  # the service hears of the public visitor (or of no one: UNKNOWN/LOCAL)
            try:
                local.sendall(header_for(mapping.proxy_protocol, *(visitor or (None, None))))
            except OSError as e:
                local.close()
                vc.close(f"{mapping.local_addr}: {e.strerror or e}")
                return
        vc.link.send_frame(Kind.CREATE, Flag.ACK, vc.sid)
        who = f"{fmt_addr(*visitor[0])} " if visitor else ""
        relay_then(vc, local, lambda stats: log.info(
            "%smapping %r: connection done (%s) in=%d out=%d", who, target, stats.reason, stats.a_to_b,
            stats.b_to_a), link_owned, IDLE_TIMEOUT, rate=mapping.rate_limit)

    def _serve_udp(self, vc: VirtualConn, mapping: MappingConfig) -> None:
        """One public peer of a udp mapping: its datagrams (one DATA frame each) go to the
        local service from a socket of its own, the service's answers come back the same way.
        Ends when the server ends the stream (the peer went quiet) or after IDLE_TIMEOUT."""
        assert mapping.local_addr is not None  # (a udp mapping has its local address)
        try:
            family, ip = self.services.resolver.resolve(mapping.local_addr.host)[0]
            sock = gsocket.socket(family, socket.SOCK_DGRAM)
            sock.connect((ip, mapping.local_addr.port))
        except (UpstreamError, OSError) as e:
            log.warning("mapping %r: %s", mapping.name, e)
            vc.close(str(e))
            return
        vc.link.send_frame(Kind.CREATE, Flag.ACK, vc.sid)
        counts, last = [0, 0], [time.monotonic()]

        def answers() -> None:
            while True:
                try:
                    data = sock.recv(MAX_DATAGRAM)
                except ConnectionRefusedError:
                    continue  # ICMP port unreachable: the service is not up (yet)
                except OSError:
                    return
                if vc.send_datagram(data):
                    counts[1] += 1
                    last[0] = time.monotonic()

        back = gevent.spawn(answers)
        why = "the server ended the session"
        vc.settimeout(min(IDLE_TIMEOUT, 30.0))
        try:
            while True:
                try:
                    data = vc.recv_datagram()
                except socket.timeout:
                    if time.monotonic() - last[0] < IDLE_TIMEOUT:
                        continue
                    why = f"idle {IDLE_TIMEOUT:g}s"
                    break
                if not data:
                    break
                last[0] = time.monotonic()
                try:
                    sock.send(data)
                    counts[0] += 1
                except OSError as e:
                    log.debug("mapping %r: datagram to %s dropped: %s", mapping.name, mapping.local_addr, e)
        except OSError as e:
            why = str(e)
        finally:
            back.kill(block=False)
            sock.close()
        log.info("mapping %r: udp session done (%s) in=%d out=%d datagrams", mapping.name, why, *counts)

    def _proxy_for(self, mapping: MappingConfig) -> Handler:
        """The forward proxy of a proxy mapping (its own credentials), built once per mapping."""
        key = (mapping.name, mapping.username, mapping.password)
        handler = self._proxies.get(key)
        if handler is None:
            cfg = ProxyConfig(username=mapping.username, password=mapping.password, idle_timeout=IDLE_TIMEOUT)
            exposed = mapping.remote_bind is None or not mapping.remote_bind.is_loopback
            handler = self._proxies[key] = self.services.proxy_handler(cfg, ConnStats(), exposed)
        return handler

    # -- a StatusSource (listener.StatusSource) --------------------------------------------------
    def upstream_status(self) -> list[dict[str, Any]]:
        return []

    def link_status(self) -> list[dict[str, Any]]:
        return [server.status() for server in self.servers]

    def mapping_status(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.mappings.values():
            live = [server for server in self.servers if server.up is not None]
            said = [server.answers[m.name] for server in live if m.name in server.answers]
            published = sum(1 for a in said if a.accepted)
            state = "withdrawn (unhealthy)" if m.name in self.unhealthy else "down" if not said else \
                "published" if published else "refused"
            rows.append({"name": m.name, "mode": m.mode, "local_addr": str(m.local_addr) if m.local_addr else "",
                         "remote_bind": str(m.remote_bind) if m.remote_bind else "", "domain": m.domain,
                         "state": state, "servers": published,
                         "reason": next((a.reason for a in said if not a.accepted), "")})
        return rows
