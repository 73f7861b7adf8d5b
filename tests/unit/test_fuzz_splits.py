"""Property tests of the blocking readers fed bytes split every way (gunicorn's treq idea): the
chunked body decoder, the SOCKS5 handshake messages and the frame header, whole, a byte at a
time and at random cuts, give the same answer; on arbitrary bytes they give a value or a
ProtocolError / PeerClosed, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from wmproxy.errors import NeedMore, ProtocolError
from wmproxy.net import httpio
from wmproxy.net.reader import PeerClosed, Reader
from wmproxy.prot.framing import CHUNKED
from wmproxy.prot import frame as fr
from wmproxy.prot.chunked import ChunkedDecoder
from wmproxy.prot import socks as s5


class Pieces:
    """A socket-like source that hands out ``pieces`` one recv at a time, then EOF."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    def recv(self, n: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > n:
            piece, rest = piece[:n], piece[n:]
            self.pieces.insert(0, rest)
        return piece

    def fileno(self) -> int:
        return -1


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [p for p in out if p]


TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=8)
QUOTED = st.text("abc xyz\t!#", max_size=8).map(lambda t: '"' + t + '"')
EXT = st.tuples(TOKEN, st.one_of(st.none(), TOKEN, QUOTED)).map(lambda kv: ";" + kv[0] + ("=" + kv[1] if kv[1] else ""))
CHUNK = st.tuples(st.binary(min_size=1, max_size=300), st.lists(EXT, max_size=2), st.booleans())


def encode_chunked(chunks, trailers: list[tuple[str, str]]) -> bytes:
    out = b""
    for data, exts, upper in chunks:
        size = f"{len(data):x}"
        out += (size.upper() if upper else size).encode() + "".join(exts).encode() + b"\r\n" + data + b"\r\n"
    out += b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers) + b"\r\n"
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(CHUNK, max_size=8), st.lists(st.tuples(TOKEN, st.text("abc 123", max_size=10)), max_size=2),
       st.lists(st.integers(0, 10_000), max_size=12), st.binary(max_size=20))
def test_chunked_bodies_decode_alike_in_any_split(chunks, trailers, cuts, after):
    body = encode_chunked(chunks, trailers)
    want = b"".join(data for data, _, _ in chunks)
    for pieces in ([body + after], split(body + after, cuts), [bytes([b]) for b in body + after]):
        reader = Reader(Pieces(pieces))
        got = []
        assert httpio.copy_body(reader, got.append, CHUNKED, False) == len(want)
        assert b"".join(got) == want
        rest = bytes(reader.buf) + b"".join(reader.sock.pieces)
        assert rest == after  # the next message's bytes stay for it
        # and chunked out again, it decodes to the same
        again = []
        httpio.copy_body(Reader(Pieces(pieces)), again.append, CHUNKED, True)
        out = []
        httpio.copy_body(Reader(Pieces([b"".join(again)])), out.append, CHUNKED, False)
        assert b"".join(out) == want


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=6))
def test_chunked_decoder_on_any_bytes_answers_or_refuses(data, cuts):
    reader = Reader(Pieces(split(data, cuts)))
    try:
        httpio.copy_body(reader, lambda piece: None, CHUNKED, True)
    except (ProtocolError, PeerClosed):
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"\x05\x01\x00", b"\x05\x02\x00\x02"]),
       st.sampled_from([b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x01\x00\x03\x07example\x01\xbb",
                        b"\x05\x03\x00\x04" + bytes(16) + b"\x00\x35"]),
       st.lists(st.integers(0, 40), max_size=6))
def test_socks5_messages_read_alike_in_any_split(greeting, request, cuts):
    whole = Reader(Pieces([greeting + request]))
    want = (whole.read_message(s5.parse_greeting), whole.read_message(s5.parse_request))
    for pieces in (split(greeting + request, cuts), [bytes([b]) for b in greeting + request]):
        reader = Reader(Pieces(pieces))
        assert (reader.read_message(s5.parse_greeting), reader.read_message(s5.parse_request)) == want


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=6))
def test_socks_and_frame_readers_on_any_bytes_in_any_split(data, cuts):
    for parse in (s5.parse_greeting, s5.parse_request, s5.parse_socks4, s5.parse_userpass):
        reader = Reader(Pieces(split(data, cuts)))
        try:
            reader.read_message(parse)
        except (ProtocolError, PeerClosed):
            pass
    if len(data) >= fr.HEADER_SIZE:
        try:
            fr.decode_header(data[:fr.HEADER_SIZE], 1 << 20)
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.lists(CHUNK, max_size=6), st.lists(st.tuples(TOKEN, st.text("abc 123", max_size=10)), max_size=2),
       st.lists(st.integers(0, 5000), max_size=10), st.binary(max_size=20))
def test_the_pure_chunked_decoder_fed_in_any_split(chunks, trailers, cuts, after):
    """prot.chunked.ChunkedDecoder without any reader: fed the pieces of a split as they come
    (unused bytes carried to the next feed, as a reader's buffer does), it gives the data, the
    trailers, and leaves exactly the bytes after the body unused."""
    body = encode_chunked(chunks, trailers)
    decoder = ChunkedDecoder()
    pending, got = b"", []
    for piece in split(body + after, cuts):
        pending += piece
        pieces, used = decoder.feed(pending)
        got += [data for data, _, _ in pieces]
        pending = pending[used:]
        if decoder.done:
            break
    assert decoder.done and b"".join(got) == b"".join(d for d, _, _ in chunks)
    assert decoder.trailers == b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers)
    # what was left unused is the start of the bytes after the body, never part of it
    assert after.startswith(pending)


def test_the_pure_chunked_decoder_refuses_and_limits():
    for bad in (b"5\nhello\r\n", b"5\r\nhelloX\r\n", b"zz\r\n", b"5;\r\n", b"0\r\nX : y\r\n\r\n"):
        with pytest.raises(ProtocolError):
            ChunkedDecoder().feed(bad)
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(b"1" * 5000)  # a size line that never ends
    with pytest.raises(ProtocolError) as e:
        ChunkedDecoder().feed(b"0\r\n" + b"X-A: " + b"y" * 4000 + b"\r\n" + (b"X-B: " + b"z" * 4000 + b"\r\n") * 4)
    assert e.value.http_status == 431
    decoder = ChunkedDecoder()
    assert decoder.feed(b"a\r\n01234") == ([(b"01234", 10, False)], 8)
    assert decoder.skip(5) == (0, True)  # the rest of the chunk moved by the caller
    assert decoder.feed(b"\r\n0\r\n\r\nGET") == ([], 7) and decoder.done


def _scan_all(pieces: list[bytes], max_body: int) -> list[fr.Frame]:
    """Feed ``pieces`` to scan_frames as the link does (a kept buffer, the unused tail carried)."""
    buf, start, need, out = bytearray(), 0, fr.HEADER_SIZE, []
    for piece in pieces:
        buf += piece
        if len(buf) - start >= need:
            frames, start, need = fr.scan_frames(buf, start, len(buf), max_body)
            out += [fr.Frame(fr.Kind(k), flag, sid, bytes(buf[b:e])) for k, flag, sid, b, e in frames]
    return out


FRAME = st.builds(lambda kind, flag, sid, body: fr.Frame(kind, flag, sid, body), st.sampled_from(list(fr.Kind)),
                  st.integers(0, 255), st.integers(0, fr.MAX_SOCK_MAP), st.binary(max_size=200))


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAME, max_size=8), st.lists(st.integers(0, 2000), max_size=8))
def test_the_link_frame_decoder_finds_every_frame_in_any_split(frames, cuts):
    """prot.frame.scan_frames, the link's production decoder: fed a stream of frames cut
    anywhere (bytes carried to the next feed as the link's buffer does), it finds exactly the
    frames parse_frame finds one by one."""
    data = b"".join(f.encode() for f in frames)
    assert _scan_all(split(data, cuts), 1 << 20) == frames
    assert _scan_all([bytes([b]) for b in data], 1 << 20) == frames


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.lists(st.integers(0, 80), max_size=6), st.integers(0, 40))
def test_the_link_frame_decoder_refuses_what_parse_frame_refuses(data, cuts, max_body):
    """On any bytes: the frames scan_frames finds before a refusal are parse_frame's, and it
    refuses (ProtocolError) exactly when parse_frame meets a bad header in the bytes given."""
    want, rest, refused = [], data, False
    while True:
        try:
            f, used = fr.parse_frame(rest, max_body)
        except NeedMore:
            break
        except ProtocolError:
            refused = True
            break
        want.append(f)
        rest = rest[used:]
    got = []
    try:
        got = _scan_all(split(data, cuts), max_body)
        scan_refused = False
    except ProtocolError:
        scan_refused = True
    assert scan_refused == refused
    if not refused:
        assert got == want
