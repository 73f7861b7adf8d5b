"""Health checks of a center client's local services (a mapping's ``health_check``, frp's
healthCheck): a mapping whose service fails ``fails`` checks in a row is withdrawn from the
server (the client sends its MAPPING without it), and published again after ``passes`` checks
in a row pass. One greenlet per checked mapping, owned by its HealthWatch."""

from __future__ import annotations

import logging
from typing import Callable

import gevent

from ..config import MappingConfig
from ..config.center import MappingHealthConfig
from ..errors import ProtocolError, UpstreamError
from ..net.dial import dial
from ..net.dns import Resolver
from ..net.reader import PeerClosed, Reader

log = logging.getLogger("wmproxy.center")

MAX_STATUS_LINE = 4096


def check(resolver: Resolver, mapping: MappingConfig, hc: MappingHealthConfig) -> str:
    """One check of ``mapping``'s local service: '' when healthy, else why not. Blocks up to
    ``hc.timeout``; never raises for what the service does."""
    addr = mapping.local_addr
    assert addr is not None  # (the config gives checked mappings a local address)
    try:
        with gevent.Timeout(hc.timeout, UpstreamError(f"no answer within {hc.timeout:g}s")):
            sock = dial(resolver, addr.host, addr.port, hc.timeout)
            try:
                if hc.type == "tcp":
                    return ""
                host = mapping.domain if mapping.domain and "*" not in mapping.domain else str(addr)
                sock.sendall(f"GET {hc.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wmproxy-health-check\r\n"
                             f"Connection: close\r\n\r\n".encode())
                line = Reader(sock).read_until(b"\r\n", MAX_STATUS_LINE)
            finally:
                sock.close()
    except (UpstreamError, OSError, PeerClosed, ProtocolError, EOFError) as e:
        return str(e) or type(e).__name__
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return f"answered {line.strip()[:60]!r}, not HTTP"
    status = int(parts[1])
    healthy = status in hc.status if hc.status else 200 <= status < 400
    return "" if healthy else f"answered {status}"


class HealthWatch:
    """Checks one mapping every ``interval`` and calls ``changed(name, healthy, why)`` when its
    state flips (it starts healthy: published until proven otherwise)."""

    def __init__(self, resolver: Resolver, mapping: MappingConfig,
                 changed: Callable[[str, bool, str], None]) -> None:
        assert mapping.health_check is not None
        self.mapping = mapping
        self.hc = mapping.health_check
        self.resolver = resolver
        self.changed = changed
        self.healthy = True
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        self._greenlet.kill(block=False)

    def _run(self) -> None:
        failed = passed = 0
        while True:
            gevent.sleep(self.hc.interval)
            why = check(self.resolver, self.mapping, self.hc)
            if why:
                failed, passed = failed + 1, 0
                if self.healthy and failed >= self.hc.fails:
                    self.healthy = False
                    self.changed(self.mapping.name, False, f"{failed} failed check(s), the last: {why}")
            else:
                failed, passed = 0, passed + 1
                if not self.healthy and passed >= self.hc.passes:
                    self.healthy = True
                    self.changed(self.mapping.name, True, f"{passed} passed check(s)")
