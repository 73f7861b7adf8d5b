"""[http] limit_req's table of client addresses (web/server.py RateLimit), apart from a server."""

from __future__ import annotations

from wmproxy.web.server import RateLimit


def test_a_flood_of_new_addresses_is_bounded_and_cheap_and_recent_clients_stay_limited(monkeypatch):
    """An attacker with many addresses (an IPv6 /64) fills the table with fresh buckets: it
    stays within MAX_CLIENTS, is rebuilt once per tenth of it (it was rebuilt at every request
    once full: 100,000 entries walked per request), and a client seen lately keeps its empty
    bucket (the least recently seen go first)."""
    monkeypatch.setattr(RateLimit, "MAX_CLIENTS", 1000)
    limit = RateLimit(rate=1 / 60, burst=0)  # one request a minute: nothing refills during the test
    assert limit.take("203.0.113.9") and not limit.take("203.0.113.9")  # the client we watch: limited
    rebuilds, table = 0, limit.buckets
    for i in range(20_000):
        assert limit.take(f"2001:db8::{i:x}")  # each new address has its burst
        if i % 50 == 0:
            assert not limit.take("203.0.113.9")  # seen lately: still limited, never forgotten
        if limit.buckets is not table:  # (the table was rebuilt: a walk over all of it)
            rebuilds, table = rebuilds + 1, limit.buckets
        assert len(limit.buckets) <= 1000
    assert 0 < rebuilds <= 20_000 // 100  # a rebuild per 100 new addresses at most (a tenth of 1000)
    assert not limit.take("2001:db8::4e1f")  # a recent attacker address: limited as any client
