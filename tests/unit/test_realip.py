"""[http] real_ip_from: whose word about the client's address is believed (net.proxyproto.real_ip)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from wmproxy.net.proxyproto import real_ip

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize("peer,values,expected", [
    ("10.0.0.1", [b"203.0.113.9"], "203.0.113.9"),  # one trusted proxy
    ("10.0.0.1", [b"1.1.1.1, 203.0.113.9, 10.0.0.2"], "203.0.113.9"),  # a chain: the right-most untrusted
    ("10.0.0.1", [b"1.1.1.1", b"203.0.113.9"], "203.0.113.9"),  # the header given twice: one list
    ("192.0.2.5", [b"203.0.113.9"], "192.0.2.5"),  # an untrusted peer's word is not taken
    ("10.0.0.1", [b"10.0.0.7, 10.0.0.8"], "10.0.0.7"),  # every hop trusted: the left-most
    ("10.0.0.1", [b"junk"], "10.0.0.1"),  # garbage: the peer stands
    ("10.0.0.1", [b"1.1.1.1, junk, 10.0.0.9"], "10.0.0.9"),  # garbage past a trusted hop: that hop stands
    ("10.0.0.1", [b"203.0.113.9:4711"], "203.0.113.9"),
    ("10.0.0.1", [b"[2001:db8::1]:443"], "2001:db8::1"),
    ("::ffff:10.0.0.1", [b"2001:db8::1"], "2001:db8::1"),
    ("fd00::1", [b" 198.51.100.1 "], "198.51.100.1"),
    ("10.0.0.1", [], "10.0.0.1"),
])
def test_real_ip(peer, values, expected):
    assert real_ip(peer, values, TRUSTED) == expected


@given(st.lists(st.binary(max_size=80), max_size=4))
def test_any_header_gives_the_peer_or_an_address_named_in_it(values):
    got = real_ip("10.0.0.1", values, TRUSTED)  # (never raises)
    if got != "10.0.0.1":
        named = b",".join(values).decode("latin-1")
        assert str(ipaddress.ip_address(got)) == got and (got in named or got.split(".")[-1] in named)
