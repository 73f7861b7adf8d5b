"""Center link frames: every kind round-trips, any split of the input, fuzzed decoders."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmproxy.errors import NeedMore, ProtocolError
from wmproxy.prot import frame as f


def feed(data: bytes, cuts: list[int], max_body: int = f.DEFAULT_MAX_BODY) -> list[f.Frame]:
    """Frames out of ``data`` delivered in the pieces ``cuts`` makes, as a reader would."""
    buf, out, pos = b"", [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        buf += data[pos:cut]
        pos = cut
        while True:
            try:
                fr, used = f.parse_frame(buf, max_body)
            except NeedMore:
                break
            out.append(fr)
            buf = buf[used:]
    assert buf == b""
    return out


def sample_frames() -> list[f.Frame]:
    nonce = os.urandom(16)
    mappings = [f.MappingSpec("web", "http", "*.example.com", "", (
        f.HeaderRule(True, f.HeaderOp.ADD, "X-Real-IP", "{client_ip}"),
        f.HeaderRule(False, f.HeaderOp.DELETE, "Server"))),
        f.MappingSpec("ssh", "tcp", "", "0.0.0.0:2222")]
    return [
        f.Frame(f.Kind.HELLO, 0, 0, f.encode_hello(nonce)),
        f.Frame(f.Kind.TOKEN, 0, 0, f.encode_token("alice", f.proof("pw", nonce))),
        f.Frame(f.Kind.TOKEN, f.Flag.ACK, 0),
        f.Frame(f.Kind.MAPPING, 0, 0, f.encode_mappings(mappings)),
        f.Frame(f.Kind.MAPPING, f.Flag.ACK, 0, f.encode_mapping_answers([f.MappingAnswer("web", True),
                                                                          f.MappingAnswer("ssh", False, "port held")])),
        f.Frame(f.Kind.CREATE, 0, 1, f.encode_create(f.CreateMode.CONNECT, "example.com:443")),
        f.Frame(f.Kind.CREATE, f.Flag.ACK, 1),
        f.Frame(f.Kind.DATA, 0, 1, os.urandom(70000)),
        f.Frame(f.Kind.DATA, 0, f.MAX_SOCK_MAP, b""),
        f.Frame(f.Kind.WINDOW, 0, 1, f.encode_window(65536)),
        f.Frame(f.Kind.PING, 0, 0, b"12345678"),
        f.Frame(f.Kind.PING, f.Flag.ACK, 0, b"12345678"),
        f.Frame(f.Kind.CLOSE, f.Flag.FIN, 1, f.encode_close("")),
        f.Frame(f.Kind.CLOSE, 0, 0, f.encode_close("auth failed")),
    ]


def test_round_trip_whole_bytewise_and_random_splits():
    frames = sample_frames()
    data = b"".join(fr.encode() for fr in frames)
    assert feed(data, []) == frames
    small = [fr for fr in frames if len(fr.body) < 1000]
    small_data = b"".join(fr.encode() for fr in small)
    assert feed(small_data, list(range(1, len(small_data)))) == small  # one byte at a time
    rng = random.Random(1)
    for _ in range(20):
        assert feed(data, rng.sample(range(1, len(data)), k=30)) == frames


def test_bodies_decode_to_what_was_encoded():
    frames = {fr.kind: fr for fr in sample_frames() if not fr.flag}
    version, nonce = f.decode_hello(frames[f.Kind.HELLO].body)
    assert version == 1 and len(nonce) == 16
    user, proof, client_id = f.decode_token(frames[f.Kind.TOKEN].body)
    assert client_id is None
    assert user == "alice" and f.proof_matches("pw", nonce, proof) and not f.proof_matches("pW", nonce, proof)
    # a stranger's proof is any UTF-8 text: no match, and no TypeError from compare_digest on a str past ASCII
    assert not f.proof_matches("pw", nonce, "\u00e9" * 64) and not f.proof_matches("pw", nonce, "", b"cert")
    assert f.proof_matches("pw", nonce, f.cert_proof("pw", nonce, b"cert"), b"cert")
    web, ssh = f.decode_mappings(frames[f.Kind.MAPPING].body)
    assert web.domain == "*.example.com" and web.headers[0] == f.HeaderRule(True, f.HeaderOp.ADD, "X-Real-IP",
                                                                            "{client_ip}")
    assert ssh == f.MappingSpec("ssh", "tcp", "", "0.0.0.0:2222")
    assert f.decode_create(frames[f.Kind.CREATE].body) == (f.CreateMode.CONNECT, "example.com:443", None)
    assert f.decode_window(frames[f.Kind.WINDOW].body) == 65536
    assert f.decode_close(frames[f.Kind.CLOSE].body) == "auth failed"
    assert f.decode_close(b"") == ""


def test_proof_is_hmac_sha256_hex():
    # RFC 4231-style known answer (key "key", the quick brown fox)
    assert f.proof("key", b"The quick brown fox jumps over the lazy dog") == \
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


def test_header_layout_is_big_endian_u24_u8_u8_u24():
    assert f.encode_header(0x010203, 7, 0x10, 0x0A0B0C) == bytes([1, 2, 3, 7, 0x10, 0x0A, 0x0B, 0x0C])
    assert f.decode_header(bytes([1, 2, 3, 7, 0x10, 0x0A, 0x0B, 0x0C]), f.MAX_LENGTH) == (0x010203, f.Kind.WINDOW,
                                                                                           0x10, 0x0A0B0C)


def test_refusals():
    with pytest.raises(ProtocolError, match="unknown frame kind 9"):
        f.decode_header(bytes([0, 0, 0, 9, 0, 0, 0, 1]))
    with pytest.raises(ProtocolError, match="over the limit"):
        f.parse_frame(f.encode_header(2 << 20, 0, 0, 1))  # 2 MiB > the 1 MiB default: refused on the header
    with pytest.raises(ProtocolError, match="trailing"):
        f.decode_window(b"\0\0\0\1\0")
    with pytest.raises(ProtocolError, match="truncated"):
        f.decode_token(b"\x05ab")
    with pytest.raises(ProtocolError, match="mode 9"):
        f.decode_create(b"\x09\x00")
    with pytest.raises(ValueError):
        f.encode_short("x" * 256)
    with pytest.raises(ValueError):
        f.encode_header(0, 0, 0, 1 << 24)


def test_create_with_the_visitor_address():
    """CREATE with the flag PEER: the visitor's and the reached address after the target."""
    body = f.encode_create(f.CreateMode.TCP, "ssh", ("[2001:db8::7]:40000", "192.0.2.1:22"))
    assert f.decode_create(body, peer=True) == (f.CreateMode.TCP, "ssh", (("2001:db8::7", 40000), ("192.0.2.1", 22)))
    with pytest.raises(ProtocolError, match="trailing"):  # to an end that did not ask for it: refused
        f.decode_create(body)
    with pytest.raises(ProtocolError, match="truncated"):  # the flag without the addresses
        f.decode_create(f.encode_create(f.CreateMode.TCP, "ssh"), peer=True)
    for bad in ("example.com:22", "1.2.3.4", "1.2.3.4:65536", "1.2.3.4:-1", "::1:22", "[::1]:x", "[1.2.3.4]:", ""):
        with pytest.raises(ProtocolError, match="not an ip:port"):
            f.parse_endpoint(bad)
    assert f.parse_endpoint(f.format_endpoint("::1", 0)) == ("::1", 0)


def test_token_with_the_client_id():
    """TOKEN with the flag ID: the client's id after the proof, checked."""
    body = f.encode_token("alice", "ab" * 32, "office-1.example:a_b@c")
    assert f.decode_token(body, with_id=True) == ("alice", "ab" * 32, "office-1.example:a_b@c")
    with pytest.raises(ProtocolError, match="trailing"):  # to a server that did not ask for it: refused
        f.decode_token(body)
    with pytest.raises(ProtocolError, match="truncated"):
        f.decode_token(f.encode_token("alice", "x"), with_id=True)
    for bad in ("", "x" * 65, "a b", "ö", "a/b"):
        with pytest.raises(ProtocolError, match="TOKEN: "):
            f.decode_token(f.encode_token("alice", "x", bad), with_id=True)


def test_mappings_with_their_groups():
    """MAPPING with the flag ID: each mapping's group and key after its header rules."""
    specs = [f.MappingSpec("web", "http", "app.test", "", (f.HeaderRule(True, f.HeaderOp.ADD, "X-A", "1"),), "g", "k"),
             f.MappingSpec("ssh", "tcp", "", "0.0.0.0:2222")]
    assert f.decode_mappings(f.encode_mappings(specs, groups=True), groups=True) == specs
    plain = f.decode_mappings(f.encode_mappings(specs))  # to a server from before groups: none sent
    assert [(m.group, m.group_key) for m in plain] == [("", ""), ("", "")]
    with pytest.raises(ProtocolError):
        f.decode_mappings(f.encode_mappings(specs, groups=True))


def _decode_mappings_groups(body: bytes) -> object:
    return f.decode_mappings(body, groups=True)


def _decode_token_id(body: bytes) -> object:
    return f.decode_token(body, with_id=True)


def _decode_create_peer(body: bytes) -> object:
    return f.decode_create(body, peer=True)


DECODERS = (f.decode_create, _decode_create_peer, f.decode_close, f.decode_token, _decode_token_id, f.decode_hello,
            f.decode_ping, f.decode_window, f.decode_mappings, _decode_mappings_groups, f.decode_mapping_answers)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_never_raise_anything_but_protocol_error(data):
    for decode in DECODERS:
        try:
            decode(data)
        except ProtocolError:
            pass
    try:
        fr, used = f.parse_frame(data, 1000)
        assert used == 8 + len(fr.body)
    except (NeedMore, ProtocolError):
        pass
