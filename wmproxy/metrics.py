"""Latency histograms for /metrics (Prometheus histograms: cumulative buckets, sum, count).

Pure and cheap: an observation is one bisect and two additions, no lock (one gevent hub).
"""

from __future__ import annotations

from bisect import bisect_left

#: upper bounds in seconds, Prometheus's default buckets (a request, a connect, a first byte)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The figures of one upstream server ([http] or [stream])."""

    __slots__ = ("requests", "failures", "connect_seconds", "first_byte_seconds")

    def __init__(self) -> None:
        self.requests = 0  # requests ([http]) or connections ([stream]) sent to it
        self.failures = 0  # connects and requests that failed
        self.connect_seconds = Histogram()  # new connections: DNS, TCP and TLS
        self.first_byte_seconds = Histogram()  # [http]: request sent -> response head in

    def row(self, kind: str, upstream: str, server: str, up: bool, active: int) -> dict:
        return {"kind": kind, "upstream": upstream, "server": server, "up": up, "active": active,
                "requests": self.requests, "failures": self.failures,
                "connect_seconds": self.connect_seconds.as_dict(),
                "first_byte_seconds": self.first_byte_seconds.as_dict()}


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


def _add(a: dict, b: dict) -> dict:
    return {"buckets": {le: n + b["buckets"][le] for le, n in a["buckets"].items()},
            "sum": round(a["sum"] + b["sum"], 6), "count": a["count"] + b["count"]}


def merge_servers(rows: list[dict]) -> list[dict]:
    """One row per (kind, upstream, server): a name reached both in plain HTTP and over TLS is two
    pools but one series (Prometheus refuses a scrape with a series twice). Counts and
    histograms add up; a server is up when it is up in one of them."""
    out: dict[tuple[str, str, str], dict] = {}
    for row in rows:
        key = (row["kind"], row["upstream"], row["server"])
        seen = out.get(key)
        if seen is None:
            out[key] = dict(row)
            continue
        seen["up"] = seen["up"] or row["up"]
        for name in ("active", "requests", "failures"):
            seen[name] += row[name]
        for name in ("connect_seconds", "first_byte_seconds"):
            seen[name] = _add(seen[name], row[name])
    return list(out.values())
