"""Per client address connection limits (nginx ``limit_conn``), so one host cannot take every
slot of a listener whatever its ``max_connections``."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("wmproxy")

LOG_EVERY = 1.0  # seconds: refusals are counted, and logged at most this often per listener


class PerIpLimit:
    """Open connections per client address of one listener. Never blocks."""

    __slots__ = ("counts", "refused", "_logged_at", "label")

    def __init__(self, label: str) -> None:
        self.counts: dict[str, int] = {}
        self.refused = 0  # since the last log line
        self._logged_at = 0.0
        self.label = label

    def enter(self, ip: str, limit: int) -> bool:
        """Count a new connection from ``ip``; False (not counted, one log line a second at
        most) when it already has ``limit`` open. ``limit`` 0: no limit."""
        n = self.counts.get(ip, 0)
        if limit and n >= limit:
            self.refused += 1
            now = time.monotonic()
            if now - self._logged_at >= LOG_EVERY:
                log.warning("%s: refused %d connection(s) from %s: max_connections_per_ip (%d) reached", self.label,
                            self.refused, ip, limit)
                self._logged_at, self.refused = now, 0
            return False
        self.counts[ip] = n + 1
        return True

    def leave(self, ip: str) -> None:
        n = self.counts.get(ip, 0) - 1
        if n > 0:
            self.counts[ip] = n
        else:
            self.counts.pop(ip, None)


class AuthThrottle:
    """Failed logins per client address (forward proxy credentials, center link TOKEN): after
    ``limit`` failures within ``window`` seconds, the address is refused for ``window``
    seconds from its last failure, with one log line; other addresses are unaffected. A
    success forgets the address's failures. Bounded: at most MAX_ADDRESSES remembered."""

    MAX_ADDRESSES = 100_000

    __slots__ = ("limit", "window", "failures", "label", "_pruned_at")

    def __init__(self, limit: int, window: float, label: str) -> None:
        self.limit = limit  # 0: no throttling
        self.window = window
        self.failures: dict[str, list[float]] = {}  # ip -> monotonic times of its recent failures
        self.label = label
        self._pruned_at = 0.0

    def configure(self, limit: int, window: float) -> None:
        """New settings (a reload); what was counted stays."""
        self.limit, self.window = limit, window

    def blocked(self, ip: str) -> bool:
        """Whether ``ip`` is refused now (``limit`` failures, the last within ``window``)."""
        times = self.failures.get(ip)
        if not times or not self.limit or len(times) < self.limit:
            return False
        if time.monotonic() - times[-1] < self.window:
            return True
        del self.failures[ip]
        return False

    def failed(self, ip: str) -> None:
        """One failed attempt from ``ip``."""
        if not self.limit:
            return
        now = time.monotonic()
        times = [t for t in self.failures.get(ip, ()) if now - t < self.window]
        times.append(now)
        if len(self.failures) >= self.MAX_ADDRESSES and ip not in self.failures:
            # full: the stale ones go, at most once a second (a flood of new addresses must not
            # make every failure a walk over the whole table)
            if now - self._pruned_at >= 1.0:
                self._pruned_at = now
                self.failures = {k: v for k, v in self.failures.items() if now - v[-1] < self.window}
            if len(self.failures) >= self.MAX_ADDRESSES:
                return  # a flood of addresses: counting stops, nothing grows
        self.failures[ip] = times[-self.limit:]
        if len(times) == self.limit:
            log.warning("%s: %d failed logins from %s within %gs: its attempts are refused for %gs", self.label,
                        self.limit, ip, self.window, self.window)

    def succeeded(self, ip: str) -> None:
        self.failures.pop(ip, None)
