"""Active health checks of a ``[[stream.upstream]]``'s servers: a TCP connect every
``interval``; ``fall`` failures in a row take a server out (new connections skip it, while
another is live), ``rise`` successes bring it back. One checker per upstream configuration,
shared by the listeners that use it and kept across reloads while that configuration stays
(the App closes the others)."""

from __future__ import annotations

import logging

import gevent

from ..config import StreamUpstreamConfig
from ..net.dns import Resolver
from ..net.health import NEVER_CHECKED, Streak, probe

log = logging.getLogger("wmproxy.stream")


class StreamHealth:
    """The checker of one upstream: ``live(addr)`` says whether a server is in."""

    def __init__(self, upstream: StreamUpstreamConfig, resolver: Resolver) -> None:
        assert upstream.health_check is not None
        self.upstream = upstream
        self.hc = upstream.health_check
        self.resolver = resolver
        self.out: set[str] = set()  # servers taken out ("host:port")
        self.checks: dict[str, Streak] = {}  # each server's probes so far
        self._greenlets = [gevent.spawn(self._watch, str(s.addr), s.addr.host, s.addr.port) for s in upstream.server]

    def live(self, addr: str) -> bool:
        return addr not in self.out

    def last_check(self, addr: str) -> dict:
        checks = self.checks.get(addr)
        return checks.last_check() if checks is not None else NEVER_CHECKED

    def close(self) -> None:
        for greenlet in self._greenlets:
            greenlet.kill(block=False)

    def _watch(self, label: str, host: str, port: int) -> None:
        hc = self.hc
        checks = self.checks[label] = Streak(hc.fall, hc.rise)
        while True:
            gevent.sleep(hc.interval)
            status, why = probe(self.resolver, host, port, hc.timeout)
            if not checks.saw(status is not None):
                continue
            if checks.up:
                self.out.discard(label)
                log.info("stream upstream %s: server %s is back: %d TCP checks passed", self.upstream.name, label,
                         hc.rise)
            else:
                self.out.add(label)
                log.warning("stream upstream %s: server %s is out: %d TCP checks failed (%s)", self.upstream.name,
                            label, hc.fall, why)


def checker(checkers: dict[StreamUpstreamConfig, StreamHealth], upstream: StreamUpstreamConfig,
            resolver: Resolver) -> StreamHealth | None:
    """The shared checker of ``upstream`` (started on first use), or None without health_check."""
    if upstream.health_check is None:
        return None
    found = checkers.get(upstream)
    if found is None:
        found = checkers[upstream] = StreamHealth(upstream, resolver)
    return found
