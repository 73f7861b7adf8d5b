"""Latency histograms for /metrics (Prometheus histograms: cumulative buckets, sum, count).

Pure and cheap: an observation is one bisect and two additions, no lock (one gevent hub).
"""

from __future__ import annotations

from bisect import bisect_left

#: upper bounds in seconds, Prometheus's default buckets (a request, a connect, a first byte)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def as_dict(self) -> dict:
        """Cumulative counts per upper bound ('+Inf' last), as /status shows and /metrics prints."""
        out, total = {}, 0
        for bound, n in zip((*(f"{b:g}" for b in BUCKETS), "+Inf"), self.counts):
            total += n
            out[bound] = total
        return {"buckets": out, "sum": round(self.sum, 6), "count": self.count}
