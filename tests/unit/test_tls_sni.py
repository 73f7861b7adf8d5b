"""The SNI and ALPN of real ClientHellos (made by Python's ssl), whole, cut short, split over
records."""

from __future__ import annotations

import functools
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmproxy.errors import NeedMore, ProtocolError
from wmproxy.prot.tls import client_hello as parse_hello, client_hello_sni


def client_hello(name: str | None, alpn: list[str] | None = None) -> bytes:
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if name is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("name", ["app.example.com", "a.b.c.d.example.org", "x" * 63 + ".test"])
def test_sni_of_a_real_client_hello(name):
    hello = client_hello(name)
    assert client_hello_sni(hello) == name
    assert client_hello_sni(hello + b"more bytes after it") == name
    for cut in range(len(hello)):
        with pytest.raises(NeedMore):
            client_hello_sni(hello[:cut])


@pytest.mark.parametrize("alpn", [["acme-tls/1"], ["h2", "http/1.1"], None])
def test_alpn_of_a_real_client_hello(alpn):
    hello = client_hello("v.example.com", alpn)
    assert parse_hello(hello) == ("v.example.com", tuple(alpn or ()))
    for cut in range(len(hello)):
        with pytest.raises(NeedMore):
            parse_hello(hello[:cut])


def test_a_malformed_alpn_list_is_refused():
    hello = bytearray(client_hello("v.example.com", ["acme-tls/1"]))
    at = hello.index(b"\x0aacme-tls/1")
    hello[at] = 0x20  # an entry longer than the list
    with pytest.raises(ProtocolError, match="ALPN"):
        parse_hello(bytes(hello))


def test_no_sni_is_empty():
    assert client_hello_sni(client_hello(None)) == ""


def test_a_client_hello_split_over_two_records():
    hello = client_hello("split.example.com")
    body = hello[5:]  # one record here: split its handshake bytes in two records
    head = hello[:3]
    two = b"".join(head + len(part).to_bytes(2, "big") + part for part in (body[:50], body[50:]))
    assert client_hello_sni(two) == "split.example.com"


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
                                  b"\x17\x03\x03\x00\x01x"])
def test_not_a_client_hello(data):
    with pytest.raises(ProtocolError):
        client_hello_sni(data)


FUZZ_HELLO = functools.cache(lambda: client_hello("fuzz.example.com", ["h2", "http/1.1"]))  # (a context loads
# the system's CA store: 30 ms, once, not per example)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=300))
def test_never_anything_but_a_name_need_more_or_protocol_error(noise, at):
    hello = bytearray(FUZZ_HELLO())
    at = min(at, len(hello) - 1)
    for data in (bytes(noise), bytes(hello[:at]) + noise, b"\x16\x03\x01" + noise):
        try:
            name, alpn = parse_hello(data)
            assert isinstance(name, str) and all(isinstance(p, str) for p in alpn)
        except (NeedMore, ProtocolError):
            pass
