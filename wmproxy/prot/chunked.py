"""The chunked transfer coding (RFC 9112 7.1), decoded incrementally. Pure: bytes in, body
pieces out, no I/O; every body reader (the forward proxy's, ``[http]``'s, the http mappings',
whatever read the head: the C reader or llhttp) decodes through it::

    chunked-body = *chunk last-chunk trailer-section CRLF
    chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    last-chunk   = 1*("0") [ chunk-ext ] CRLF

Lines end at CRLF only; a size line, its extensions and the trailer lines are checked against
their grammar (:func:`parse_chunk_size`, :func:`check_trailer_line`); anything else is a
ProtocolError, so no two readers can cut the same bytes into different messages.
"""

from __future__ import annotations

import re

from ..errors import ProtocolError

MAX_CHUNK_LINE = 4096  # a size line with its extensions, or one trailer line
MAX_TRAILERS = 16384

# RFC 9112 7.1: chunk-size [ chunk-ext ] CRLF, where chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS
# value ] ), a name a token and a value a token or a quoted-string (no CR, LF or NUL inside). The
# line has been cut at its CRLF; a bare CR or LF anywhere in it is refused: a server that ends
# lines at LF would read another chunk there (request smuggling).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x20-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|"
                         + _QUOTED + rb"))?)*")
# a trailer field line (RFC 9112 7.1.2 and 5): name ":" OWS value, its CRLF cut off; no obs-fold.
# (OWS is not a group of its own before the value: "[ \t]*[\t ...]*" backtracks in quadratic
# time over a line of spaces ending in a bad byte, 77 ms for 4 KiB, a peer's CPU for free.)
_FIELD_LINE = re.compile(_TOKEN + rb":[\t \x21-\x7e\x80-\xff]*")


def parse_chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (without its CRLF). Extensions are checked against their
    grammar, then ignored. Raises ProtocolError (400) for anything else."""
    m = _CHUNK_LINE.fullmatch(line)
    if m is None:
        raise ProtocolError(f"invalid chunk size line {line[:40]!r}")
    return int(m.group(1), 16)


def check_trailer_line(line: bytes) -> None:
    """A trailer field line (without its CRLF) must be ``name: value`` with no CR, LF, NUL or
    folding. Raises ProtocolError (400)."""
    if _FIELD_LINE.fullmatch(line) is None:
        raise ProtocolError(f"invalid trailer line {line[:40]!r}")


_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)


class ChunkedDecoder:
    """Feed it the bytes after a head; it answers the body's data pieces and how many bytes it
    used, and says when the body ended (``done``; ``trailers``: the trailer lines as they came,
    each ending in CRLF). Bytes past the body's end are never used: they are the next message's.

    Each piece is (data, the size of its chunk when it is the chunk's first piece else 0,
    whether it is the chunk's last): what a proxy needs to code the body again with the same
    chunks (:func:`encode_piece`) without copying a large chunk's middle.

    ``data_left`` is the count of data bytes the current chunk still has: a caller may move
    them itself (without feeding them) and report them with :meth:`skip`."""

    __slots__ = ("state", "size", "data_left", "trailers", "done")

    def __init__(self) -> None:
        self.state = _SIZE
        self.size = 0  # of the current chunk
        self.data_left = 0
        self.trailers = b""
        self.done = False

    def feed(self, buf: bytes | bytearray) -> tuple[list[tuple[bytes, int, bool]], int]:
        """Decode from the start of ``buf`` (bytes or bytearray; not resized meanwhile) as far
        as it goes -> (data pieces, bytes used). What is left unused is an incomplete line, or
        the next message. Raises ProtocolError (400; 431 for trailers over MAX_TRAILERS)."""
        pieces: list[tuple[bytes, int, bool]] = []
        pos, end = 0, len(buf)
        view = memoryview(buf)  # one copy per piece (a slice of a bytearray would be two)
        try:
            while pos < end:
                state = self.state
                if state == _DATA:
                    take = min(self.data_left, end - pos)
                    pieces.append((view[pos:pos + take].tobytes(), *self._took(take)))
                    pos += take
                elif state == _DATA_END:
                    if buf[pos] != 13 or (end - pos > 1 and buf[pos + 1] != 10):
                        raise ProtocolError("chunk data not followed by CRLF")
                    if end - pos < 2:
                        break
                    pos += 2
                    self.state = _SIZE
                elif state == _DONE:
                    break
                else:  # a line: a chunk size, or a trailer
                    eol = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE + 2)
                    if eol < 0:
                        if end - pos > MAX_CHUNK_LINE + 1:
                            raise ProtocolError(f"a chunk size or trailer line longer than {MAX_CHUNK_LINE} bytes")
                        break
                    line = view[pos:eol].tobytes()
                    pos = eol + 2
                    if state == _TRAILERS:
                        if not line:
                            self.state, self.done = _DONE, True
                            break
                        check_trailer_line(line)
                        self.trailers += line + b"\r\n"
                        if len(self.trailers) > MAX_TRAILERS:
                            raise ProtocolError(f"trailers larger than {MAX_TRAILERS} bytes", 431)
                        continue
                    size = parse_chunk_size(line)
                    if not size:
                        self.state = _TRAILERS
                        continue
                    stop = pos + size
                    if stop + 2 <= end:  # the usual chunk: all of it here, its CRLF too
                        if buf[stop] != 13 or buf[stop + 1] != 10:
                            raise ProtocolError("chunk data not followed by CRLF")
                        pieces.append((view[pos:stop].tobytes(), size, True))
                        pos = stop + 2
                        continue
                    self.state, self.size, self.data_left = _DATA, size, size
        finally:
            view.release()
        return pieces, pos

    def skip(self, n: int) -> tuple[int, bool]:
        """``n`` data bytes of the current chunk (at most ``data_left``) were moved by the
        caller without being fed -> (the chunk's size if they are its first bytes else 0,
        whether they are its last), as for a piece."""
        if not 0 < n <= self.data_left or self.state != _DATA:
            raise ValueError(f"skip({n}) with {self.data_left} data bytes left")
        return self._took(n)

    def _took(self, n: int) -> tuple[int, bool]:
        first = self.size if self.data_left == self.size else 0
        self.data_left -= n
        if self.data_left:
            return first, False
        self.state = _DATA_END
        return first, True


def encode_piece(data: bytes, first: int, last: bool) -> bytes:
    """A decoded piece coded again: its chunk's size line before a first piece, CRLF after
    a last one; the middle of a large chunk as it is (no copy)."""
    if not first and not last:
        return data
    return b"".join((b"%x\r\n" % first if first else b"", data, b"\r\n" if last else b""))
