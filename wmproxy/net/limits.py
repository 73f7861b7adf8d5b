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
