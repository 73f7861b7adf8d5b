"""SOCKS4/5 messages: round trips, any split of the input, and fuzzing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmproxy.errors import NeedMore, ProtocolError
from wmproxy.prot import socks as s


def feed_split(parse, data: bytes, cuts: list[int]):
    """Feed ``data`` in the pieces ``cuts`` makes, as a reader would; return the value."""
    buf = bytearray()
    pos = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        buf += data[pos:cut]
        pos = cut
        try:
            value, used = parse(bytes(buf))
        except NeedMore:
            continue
        assert used == len(data), "consumed more or less than the message"
        assert pos == len(data), "answered before the message was complete"
        return value
    raise AssertionError("never completed")


def splits(data: bytes):
    n = len(data)
    yield []  # whole
    yield list(range(1, n))  # one byte at a time
    rng = random.Random(n)
    for _ in range(5):
        yield sorted(rng.sample(range(1, n), k=min(n - 1, rng.randrange(1, 5)))) if n > 1 else []


REQUESTS = [
    ("93.184.216.34", 80),
    ("::1", 8080),
    ("2001:db8::1", 443),
    ("example.com", 65535),
    ("xn--bcher-kva.example", 1),
]


@pytest.mark.parametrize("host,port", REQUESTS)
def test_socks5_request_round_trip_any_split(host, port):
    data = s.encode_request(s.CMD_CONNECT, host, port)
    for cuts in splits(data):
        req = feed_split(s.parse_request, data, cuts)
        assert (req.version, req.command, req.host, req.port) == (5, s.CMD_CONNECT, host, port)


def test_socks5_reply_round_trip():
    for host, port in REQUESTS:
        (rep, h, p), used = s.parse_reply(s.encode_reply(s.REP_SUCCEEDED, host, port))
        assert (rep, h, p) == (0, host, port)


def test_greeting_and_userpass():
    assert feed_split(s.parse_greeting, b"\x05\x02\x00\x02", list(range(1, 4))) == b"\x00\x02"
    data = b"\x01\x05alice\x06s3cret"
    for cuts in splits(data):
        assert feed_split(s.parse_userpass, data, cuts) == ("alice", "s3cret")
    with pytest.raises(ProtocolError):
        s.parse_greeting(b"\x05\x00")
    with pytest.raises(ProtocolError):
        s.parse_userpass(b"\x02\x00\x00")


def test_bad_address_type_carries_its_reply_code():
    with pytest.raises(ProtocolError) as e:
        s.parse_request(b"\x05\x01\x00\x09\x00\x00")
    assert e.value.socks5_reply == s.REP_ADDRESS_TYPE_NOT_SUPPORTED


@pytest.mark.parametrize("host,userid", [("10.1.2.3", ""), ("127.0.0.1", "bob"), ("example.org", "x"), ("h", "")])
def test_socks4_round_trip(host, userid):
    data = s.encode_socks4(s.CMD_CONNECT, host, 1080, userid)
    for cuts in splits(data):
        req = feed_split(s.parse_socks4, data, cuts)
        assert (req.version, req.host, req.port, req.userid) == (4, host, 1080, userid)


def test_socks4a_marker_is_not_an_address():
    req, _ = s.parse_socks4(b"\x04\x01\x00\x50\x00\x00\x00\x07\x00name.test\x00")
    assert req.host == "name.test"
    req, _ = s.parse_socks4(b"\x04\x01\x00\x50\x00\x00\x00\x00\x00")  # 0.0.0.0 is a plain address
    assert req.host == "0.0.0.0"
    with pytest.raises(ProtocolError):
        s.parse_socks4(b"\x04\x01\x00\x50\x00\x00\x00\x07\x00\x00")  # 4a with an empty name


def test_socks4_overlong_fields_refused():
    with pytest.raises(ProtocolError):
        s.parse_socks4(b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * 300)
    with pytest.raises(NeedMore):
        s.parse_socks4(b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * 100)


@pytest.mark.parametrize("host,port", REQUESTS)
def test_udp_header_round_trip(host, port):
    datagram = s.encode_udp_header(host, port) + b"payload"
    frag, h, p, start = s.parse_udp_header(datagram)
    assert (frag, h, p, datagram[start:]) == (0, host, port, b"payload")
    for cut in range(len(datagram) - len(b"payload")):  # a datagram is whole: short is an error
        with pytest.raises(ProtocolError):
            s.parse_udp_header(datagram[:cut])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_udp_header_parser_never_raises_anything_else(data):
    try:
        frag, host, port, start = s.parse_udp_header(data)
    except ProtocolError:
        return
    assert 0 < start <= len(data) and frag == data[2]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_never_raise_anything_else(data):
    for parse in (s.parse_greeting, s.parse_userpass, s.parse_request, s.parse_socks4, s.parse_reply):
        try:
            value, used = parse(data)
        except (NeedMore, ProtocolError):
            continue
        assert 0 < used <= len(data)
