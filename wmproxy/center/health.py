"""Health checks of a center client's local services (a mapping's ``health_check``, frp's
healthCheck): a mapping whose service fails ``fails`` checks in a row is withdrawn from the
server (the client sends its MAPPING without it), and published again after ``passes`` checks
in a row pass. One greenlet per checked mapping, owned by its HealthWatch."""

from __future__ import annotations

from typing import Callable

import gevent

from ..config import MappingConfig
from ..config.center import MappingHealthConfig
from ..net.dns import Resolver
from ..net.health import Streak, get_request, probe


def check(resolver: Resolver, mapping: MappingConfig, hc: MappingHealthConfig) -> str:
    """One check of ``mapping``'s local service: '' when healthy, else why not. Blocks up to
    ``hc.timeout``; never raises for what the service does."""
    addr = mapping.local_addr
    assert addr is not None  # (the config gives checked mappings a local address)
    request = b""
    if hc.type == "http":
        request = get_request(hc.path, mapping.domain if mapping.domain and "*" not in mapping.domain else str(addr))
    status, why = probe(resolver, addr.host, addr.port, hc.timeout, request)
    if status is None:
        return why
    if hc.type == "tcp" or (status in hc.status if hc.status else 200 <= status < 400):
        return ""
    return f"answered {status}"


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
        self.checks = Streak(self.hc.fails, self.hc.passes)
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        self._greenlet.kill(block=False)

    def _run(self) -> None:
        while True:
            gevent.sleep(self.hc.interval)
            why = check(self.resolver, self.mapping, self.hc)
            if self.checks.saw(not why):
                self.changed(self.mapping.name, self.checks.up,
                             f"{self.hc.passes} passed check(s)" if self.checks.up else
                             f"{self.hc.fails} failed check(s), the last: {why}")
