"""Latency histograms for /metrics (Prometheus histograms: cumulative buckets, sum, count).

Pure and cheap: an observation is a comparison (or a bisect) and two additions, no lock (one
gevent hub); in C (prot/_speedups.c) where it was built, as http1's speedups.
"""

from __future__ import annotations

from bisect import bisect_left
from functools import partial
from typing import Any

from .prot import speedups

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

    def row(self, kind: str, upstream: str, server: str, up: bool, active: int) -> dict[str, Any]:
        return {"kind": kind, "upstream": upstream, "server": server, "up": up, "active": active,
                "requests": self.requests, "failures": self.failures,
                "connect_seconds": self.connect_seconds.as_dict(),
                "first_byte_seconds": self.first_byte_seconds.as_dict()}


def observe_py(counts: list[Any], seconds: float) -> None:
    """Count ``seconds`` in ``counts`` (one count per bucket, the last above every bound, then
    the sum). The C version (prot/_speedups.c) gives the same answers in a tenth of the time."""
    # most requests take less than the first bound: one comparison instead of a bisect
    counts[0 if seconds <= BUCKETS[0] else bisect_left(BUCKETS, seconds)] += 1
    counts[-1] += seconds


_observe = speedups.C.observe if speedups.C is not None else observe_py  # (prot/speedups.py decides)


class Histogram:
    """Request latencies in BUCKETS. ``observe(seconds)`` counts one."""

    __slots__ = ("counts", "observe")

    def __init__(self) -> None:
        self.counts: list[Any] = [0] * (len(BUCKETS) + 1) + [0.0]
        self.observe = partial(_observe, self.counts)

    def as_dict(self) -> dict[str, Any]:
        """Cumulative counts per upper bound ('+Inf' last), as /status shows and /metrics prints."""
        out, total = {}, 0
        for bound, n in zip((*(f"{b:g}" for b in BUCKETS), "+Inf"), self.counts):
            total += n
            out[bound] = total
        return {"buckets": out, "sum": round(self.counts[-1], 6), "count": total}


def add_histograms(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two histograms' as_dict() added up."""
    return {"buckets": {le: n + b["buckets"][le] for le, n in a["buckets"].items()},
            "sum": round(a["sum"] + b["sum"], 6), "count": a["count"] + b["count"]}


def merge_servers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (kind, upstream, server): a name reached both in plain HTTP and over TLS is two
    pools but one series (Prometheus refuses a scrape with a series twice). Counts and
    histograms add up; a server is up when it is up in one of them."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["kind"], row["upstream"], row["server"])
        seen = out.get(key)
        if seen is None:
            out[key] = dict(row)
            continue
        seen["up"] = seen["up"] or row["up"]
        if (row.get("last_check") or 0) > (seen.get("last_check") or 0):  # (the latest health check)
            seen["last_check"], seen["last_check_ok"] = row["last_check"], row["last_check_ok"]
        for name in ("active", "requests", "failures"):
            seen[name] += row[name]
        for name in ("connect_seconds", "first_byte_seconds"):
            seen[name] = add_histograms(seen[name], row[name])
    return list(out.values())
