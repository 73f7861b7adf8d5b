"""Active health checks of a ``[[stream.upstream]]``'s servers: a TCP connect every
``interval``; ``fall`` failures in a row take a server out (new connections skip it, while
another is live), ``rise`` successes bring it back. One checker per upstream configuration,
shared by the listeners that use it and kept across reloads while that configuration stays
(the App closes the others)."""

from __future__ import annotations

import logging

import gevent

from ..config import StreamUpstreamConfig
from ..errors import UpstreamError
from ..net.dial import dial
from ..net.dns import Resolver

log = logging.getLogger("wmproxy.stream")


class StreamHealth:
    """The checker of one upstream: ``live(addr)`` says whether a server is in."""

    def __init__(self, upstream: StreamUpstreamConfig, resolver: Resolver) -> None:
        assert upstream.health_check is not None
        self.upstream = upstream
        self.hc = upstream.health_check
        self.resolver = resolver
        self.out: set[str] = set()  # servers taken out ("host:port")
        self._greenlets = [gevent.spawn(self._watch, str(s.addr), s.addr.host, s.addr.port) for s in upstream.server]

    def live(self, addr: str) -> bool:
        return addr not in self.out

    def close(self) -> None:
        for greenlet in self._greenlets:
            greenlet.kill(block=False)

    def _watch(self, label: str, host: str, port: int) -> None:
        failed = passed = 0
        while True:
            gevent.sleep(self.hc.interval)
            why = ""
            try:
                with gevent.Timeout(self.hc.timeout, UpstreamError(f"no connection within {self.hc.timeout:g}s")):
                    dial(self.resolver, host, port, self.hc.timeout).close()
            except (UpstreamError, OSError) as e:
                why = str(e) or type(e).__name__
            if why:
                failed, passed = failed + 1, 0
                if label not in self.out and failed >= self.hc.fall:
                    self.out.add(label)
                    log.warning("stream upstream %s: server %s is out: %d TCP checks failed (%s)",
                                self.upstream.name, label, failed, why)
            else:
                failed, passed = 0, passed + 1
                if label in self.out and passed >= self.hc.rise:
                    self.out.discard(label)
                    log.info("stream upstream %s: server %s is back: %d TCP checks passed", self.upstream.name,
                             label, passed)


def checker(checkers: dict[StreamUpstreamConfig, StreamHealth], upstream: StreamUpstreamConfig,
            resolver: Resolver) -> StreamHealth | None:
    """The shared checker of ``upstream`` (started on first use), or None without health_check."""
    if upstream.health_check is None:
        return None
    found = checkers.get(upstream)
    if found is None:
        found = checkers[upstream] = StreamHealth(upstream, resolver)
    return found
