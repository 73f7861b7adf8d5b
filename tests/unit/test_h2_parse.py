"""What wmproxy itself reads of an HTTP/2 client, fed what an attacker likes: the frame scan that
bounds header blocks (any split of the bytes gives the same verdict), and the HTTP/1.1 head made
from an HTTP/2 header list (no value or name ever becomes a second header line)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from wmproxy.errors import ProtocolError
from wmproxy.prot import http1
from wmproxy.web.h2 import PREFACE, Cut, FrameScan, _request_head


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack("!I", len(payload))[1:] + bytes((kind, flags)) + struct.pack("!I", sid) + payload


frames = st.lists(st.tuples(st.sampled_from([0x0, 0x1, 0x4, 0x6, 0x8, 0x9]), st.sampled_from([0, 0x4]),
                            st.integers(0, 3000)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(frames, st.lists(st.integers(1, 50), max_size=30), st.integers(1000, 20000), st.booleans())
def test_frame_scan_gives_the_same_verdict_whatever_the_split(spec, cuts, limit, upstream):
    """A client's bytes (after its preface) or an upstream server's (none): the same verdict."""
    raw = (b"" if upstream else PREFACE) + b"".join(frame(kind, flags, 1, b"a" * n) for kind, flags, n in spec)

    def verdict(pieces):
        scan = FrameScan(limit, server=upstream)
        try:
            for piece in pieces:
                scan.feed(piece)
        except Cut:
            return "cut"
        return (scan.block, scan.frames, scan.skip, scan.buf)

    pieces, pos = [], 0
    for n in cuts:
        pieces.append(raw[pos:pos + n])
        pos += n
    pieces.append(raw[pos:])
    assert verdict(pieces) == verdict([raw])
    # and the verdict is what the frames say: a block over the limit (or 64 frames) is cut
    in_block, size, count, over = False, 0, 0, False
    for kind, flags, n in spec:
        if kind == 0x1 or (kind == 0x9 and in_block):
            in_block, size, count = True, size + n, count + 1
            if size > limit + 16384 or count > 64:
                over = True
                break
            if flags & 0x4:
                in_block, size, count = False, 0, 0
    assert (verdict([raw]) == "cut") == over


def test_a_continuation_flood_is_cut_by_bytes_and_by_frames():
    scan = FrameScan(1000)
    scan.feed(PREFACE + frame(0x1, 0, 1, b"x" * 500))
    with pytest.raises(Cut):
        for _ in range(100):
            scan.feed(frame(0x9, 0, 1, b"x" * 500))
    scan = FrameScan(1 << 20)
    scan.feed(PREFACE + frame(0x1, 0, 1, b""))
    with pytest.raises(Cut):
        for _ in range(100):
            scan.feed(frame(0x9, 0, 1, b""))  # empty frames: bounded in count


text = st.binary(max_size=40)
names = st.one_of(st.sampled_from([b"x-a", b"accept", b"cookie", b"host", b"content-length", b"user-agent"]),
                  st.binary(max_size=12))
values = st.one_of(st.sampled_from([b"1", b"a b", b"x\r\nx-injected: yes", b"y\nz", b"\x00", b"v\r"]), text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=8), st.one_of(st.sampled_from([b"", b"x", b"a/b?c=1"]), text),
       st.one_of(st.sampled_from([b".test", b"b:8080"]), text), st.booleans(), st.booleans())
def test_request_head_never_lets_a_header_become_two(fields, path, authority, ended, websocket):
    """Whatever the header list, the HTTP/1.1 head holds the client's lines, in order, and no
    more; a websocket's extended CONNECT (RFC 8441) adds exactly the Upgrade lines of a GET."""
    method = [(b":method", b"CONNECT"), (b":protocol", b"websocket")] if websocket else [(b":method", b"GET")]
    headers = [*method, (b":scheme", b"http"), (b":path", b"/" + path), (b":authority", b"a" + authority), *fields]
    try:
        method, head, chunked, upgrade = _request_head(headers, ended)
    except ProtocolError:
        return  # refused: fine
    try:
        parsed = http1.parse_request_head(head)
    except ProtocolError:
        return  # refused by the HTTP/1.1 parser: the stream gets 400
    sent = [(n, v) for n, v in fields if n not in (b"cookie", b"host", b"sec-websocket-key") and n[:1] != b":"]
    added = [b"connection", b"upgrade", b"sec-websocket-key"] if websocket else []
    got = [(n.lower(), v) for n, v in parsed.headers if n.lower() not in (b"host", b"cookie", b"transfer-encoding")]
    assert [n for n, _ in got] == [n for n, _ in sent] + added  # every line one of the client's, in order, no more
    assert method == "GET" and parsed.target == "/" + path.decode("latin-1") and upgrade == websocket
    assert chunked == (not ended and not websocket and not any(n == b"content-length" for n, _ in fields))
