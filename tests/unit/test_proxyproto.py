"""The PROXY protocol v1/v2 reader and writer (prot/proxyproto.py): the spec's forms, what is
refused, every split of a header, and any bytes at all (hypothesis)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from wmproxy.errors import NeedMore, ProtocolError
from wmproxy.prot import proxyproto as pp

SIG = pp.V2_SIGNATURE


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    return SIG + struct.pack("!BBH", ver_cmd, fam, len(body) if length is None else length) + body


def test_v1_forms():
    h = pp.parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET / HTTP/1.1\r\n")
    assert (h.version, h.source, h.dest, h.size) == (1, ("192.0.2.1", 56324), ("198.51.100.7", 443), 45)
    h = pp.parse(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n")
    assert h.source == ("2001:db8::1", 1) and h.dest == ("::1", 65535)
    h = pp.parse(b"PROXY UNKNOWN\r\nrest")
    assert (h.source, h.dest, h.size) == (None, None, 15)
    assert pp.parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").source is None  # the rest is ignored
    ffff = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    tcp6 = b"PROXY TCP6 " + ffff + b" " + ffff + b" 65535 65535\r\n"
    assert pp.parse(tcp6).source == (ffff.decode(), 65535)
    longest = b"PROXY UNKNOWN " + ffff + b" " + ffff + b" 65535 65535\r\n"  # the spec's worst case
    assert len(longest) == pp.V1_MAX and pp.parse(longest).size == pp.V1_MAX


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n",           # LF alone
    b"PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n",              # a field missing
    b"PROXY TCP4  192.0.2.1 198.51.100.7 56324 443\r\n",         # two spaces
    b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 \r\n",         # a trailing space
    b"PROXY UDP4 192.0.2.1 198.51.100.7 56324 443\r\n",          # no such protocol
    b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n",              # IPv6 in TCP4
    b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",                         # IPv4 in TCP6
    b"PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n",               # a leading zero in the address
    b"PROXY TCP4 192.0.2.1 198.51.100.7 01 2\r\n",               # a leading zero in the port
    b"PROXY TCP4 192.0.2.1 198.51.100.7 1 65536\r\n",            # a port past 65535
    b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 2\r\n",
    b"PROXY TCP4 example.com 198.51.100.7 1 2\r\n",              # a name
    b"PROXY TCP4 192.0.2.1\r198.51.100.7 1 2\r\n",                # a bare CR
    b"proxy TCP4 192.0.2.1 198.51.100.7 1 2\r\n",                # lower case
    b"PROXY TCP4 " + b"1" * 100 + b"\r\n",                       # past 107 bytes
    b"GET / HTTP/1.1\r\n\r\n",                                   # not a header at all
])
def test_v1_refused(line):
    with pytest.raises(ProtocolError):
        pp.parse(line)


def test_v1_line_without_an_end_is_refused_at_107_bytes():
    with pytest.raises(NeedMore):
        pp.parse(b"PROXY TCP4 " + b"1" * 95)
    with pytest.raises(ProtocolError):
        pp.parse(b"PROXY TCP4 " + b"1" * 96)  # 107 bytes and no CRLF


def test_v2_forms():
    inet = struct.pack("!4s4sHH", bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7]), 56324, 443)
    h = pp.parse(v2(0x21, 0x11, inet) + b"data")
    assert (h.version, h.source, h.dest, h.size, h.tlvs) == (2, ("192.0.2.1", 56324), ("198.51.100.7", 443), 28, ())
    inet6 = struct.pack("!16s16sHH", bytes(15) + b"\x01", bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]), 7, 8)
    h = pp.parse(v2(0x21, 0x21, inet6 + b"\x04\x00\x02ab" + b"\x01\x00\x00"))
    assert h.source == ("::1", 7) and h.dest == ("10.0.0.1", 8)  # an IPv4-mapped address read as IPv4
    assert h.tlvs == ((0x04, b"ab"), (0x01, b""))
    # LOCAL (a health check), UNSPEC and UNIX: the connection's own addresses stand
    assert pp.parse(v2(0x20, 0x00, b"")).source is None
    assert pp.parse(v2(0x20, 0x11, inet)).source is None  # LOCAL: the block is discarded
    assert pp.parse(v2(0x21, 0x00, b"")).source is None
    assert pp.parse(v2(0x21, 0x31, bytes(216))).source is None


@pytest.mark.parametrize("header", [
    SIG[:-1] + b"X" + struct.pack("!BBH", 0x21, 0x11, 12) + bytes(12),  # the signature
    v2(0x11, 0x11, bytes(12)),                                          # version 1
    v2(0x31, 0x11, bytes(12)),                                          # version 3
    v2(0x22, 0x11, bytes(12)),                                          # command 2
    v2(0x21, 0x41, bytes(12)),                                          # family 4
    v2(0x21, 0x13, bytes(12)),                                          # transport 3
    v2(0x21, 0x11, bytes(8)),                                           # shorter than its addresses
    v2(0x21, 0x21, bytes(12)),                                          # IPv6 in IPv4's length
    v2(0x21, 0x11, b"", length=pp.MAX_V2 + 1),                          # too long
    v2(0x21, 0x11, bytes(12) + b"\x01\x00\x05ab"),                      # a TLV past the end
    v2(0x21, 0x11, bytes(12) + b"\x01\x00"),                            # a TLV cut short
])
def test_v2_refused(header):
    with pytest.raises(ProtocolError):
        pp.parse(header)


def test_v2_length_past_the_data_waits_for_it():
    with pytest.raises(NeedMore):
        pp.parse(v2(0x21, 0x11, bytes(12), length=200) + bytes(12))


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
    b"PROXY UNKNOWN\r\n",
    pp.encode_v2(("192.0.2.1", 1), ("198.51.100.7", 2), tlvs=((0x04, b"x" * 40),)),
    pp.encode_v2(None, None),
])
def test_every_prefix_of_a_header_asks_for_more(header):
    for n in range(len(header)):
        with pytest.raises(NeedMore):
            pp.parse(header[:n])
    assert pp.parse(header + b"next").size == len(header)


@pytest.mark.parametrize("source,dest", [
    (("192.0.2.1", 56324), ("198.51.100.7", 443)),
    (("2001:db8::5", 1), ("2001:db8::6", 65535)),
    (("::ffff:10.0.0.1", 3), ("10.0.0.2", 4)),  # a mapped address goes out as IPv4
])
def test_written_headers_read_back(source, dest):
    plain = (source[0].removeprefix("::ffff:"), source[1])
    for header in (pp.encode_v1(source, dest), pp.encode_v2(source, dest, tlvs=((0x05, b"id"),))):
        h = pp.parse(header)
        assert (h.source, h.dest, h.size) == (plain, dest, len(header))
    assert pp.parse(pp.encode_v2(source, dest, tlvs=((0x05, b"id"),))).tlvs == ((0x05, b"id"),)


def test_written_without_a_client():
    assert pp.encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert pp.encode_v1(("192.0.2.1", 1), ("::1", 2)) == b"PROXY UNKNOWN\r\n"  # two IP versions
    h = pp.parse(pp.encode_v2(("192.0.2.1", 1), ("::1", 2)))
    assert h.source is None and h.size == 16


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=120).map(lambda b: b"PROXY " + b),
                 st.binary(max_size=300).map(lambda b: SIG + b)))
def test_any_bytes_are_read_or_refused(data):
    try:
        h = pp.parse(data)
    except (NeedMore, ProtocolError):
        return
    assert 0 < h.size <= len(data)
    assert h.source is None or (isinstance(h.source[0], str) and 0 <= h.source[1] <= 65535)


@settings(max_examples=500, deadline=None)
@given(st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4))
       | st.tuples(*[st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None)] * 2),
       st.integers(0, 65535), st.integers(0, 65535), st.booleans(), st.binary(max_size=50))
def test_any_written_header_reads_back_in_any_split(addrs, sport, dport, version2, after):
    src, dst = (str(a) for a in addrs)
    header = pp.encode_v2((src, sport), (dst, dport)) if version2 else pp.encode_v1((src, sport), (dst, dport))
    h = pp.parse(header + after)
    assert h.size == len(header) and h.source is not None and h.source[1] == sport and h.dest[1] == dport
