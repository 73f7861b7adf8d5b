"""The center link's frames (docs/PROTOCOL.md), declared once. Pure: bytes in, values out.

Header: exactly 8 bytes, big-endian, then exactly ``length`` body bytes.

 0               1               2               3
+---------------+---------------+---------------+---------------+
|                 length (u24)                  |   kind (u8)   |
+---------------+---------------+---------------+---------------+
|   flag (u8)   |               sock_map (u24)                  |
+---------------+---------------+---------------+---------------+

Every ``decode_*`` takes a complete body and returns values or raises ProtocolError (never
anything else, whatever the bytes); :func:`parse_frame` takes the bytes received so far and
returns ``(Frame, consumed)`` or raises NeedMore, like the SOCKS parsers, so the same frames
can be read from a socket (read exactly 8, then exactly ``length``) or fed in any split.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import mmap
import struct
from dataclasses import dataclass
from typing import Optional

from ..errors import NeedMore, ProtocolError

Endpoint = tuple[str, int]  # (IP literal, port): a visitor's address on CREATE

HEADER_SIZE = 8
MAX_LENGTH = (1 << 24) - 1  # what the u24 length can say
MAX_SOCK_MAP = (1 << 24) - 1
DEFAULT_MAX_BODY = 1 << 20  # a receiver's default limit (1 MiB)
PROTOCOL_VERSION = 1
NONCE_SIZE = 16
PING_SIZE = 8

HEADER_STRUCT = struct.Struct("!II")  # (length << 8 | kind, flag << 24 | sock_map)


class Kind(enum.IntEnum):
    DATA = 0  #: payload bytes of a stream
    CREATE = 1  #: open a stream: u8 mode, short target
    CLOSE = 2  #: end a stream (with FIN: half-close), or the link (sock_map 0): short reason
    MAPPING = 3  #: the client's mappings; with ACK, the server's answer
    TOKEN = 4  #: short username, short proof; with ACK, accepted
    HELLO = 5  #: u8 version, 16-byte nonce; the server's first frame
    PING = 6  #: 8 opaque bytes; answered with ACK and the same bytes
    WINDOW = 7  #: u32 credit: the receiver consumed that many more DATA bytes


class Flag(enum.IntFlag):
    NONE = 0
    ACK = 0x01  #: answers a frame of the same kind
    FIN = 0x10  #: on CLOSE: half-close only
    #: on MAPPING (client) and MAPPING+ACK (server): this end reads a visitor's address on CREATE;
    #: on CREATE: its body carries one (only to an end that said it reads them)
    PEER = 0x20
    #: on HELLO (server): this server reads a client id on TOKEN; on TOKEN: its body carries one
    ID = 0x40
    #: on HELLO (server): this server pins client certificates on first use and takes one on
    #: TOKEN; on TOKEN: its body ends with the client's certificate (enrollment, PROTOCOL.md)
    CERT = 0x80


class CreateMode(enum.IntEnum):
    PROXY = 0  #: run the forward proxy on the stream's bytes
    CONNECT = 1  #: dial the ``host:port`` target
    TCP = 2  #: dial the local address of the named TCP mapping
    HTTP = 3  #: dial the local address of the named HTTP mapping


@dataclass(frozen=True)
class Frame:
    kind: Kind
    flag: int
    sock_map: int
    body: bytes = b""

    def encode(self) -> bytes:
        return encode_header(len(self.body), self.kind, self.flag, self.sock_map) + self.body


def encode_header(length: int, kind: int, flag: int, sock_map: int) -> bytes:
    """The 8 header bytes. Raises ValueError for values the fields cannot hold (our bug)."""
    if not 0 <= length <= MAX_LENGTH or not 0 <= sock_map <= MAX_SOCK_MAP or not 0 <= kind < 256 \
            or not 0 <= flag < 256:
        raise ValueError(f"frame header out of range: length={length} kind={kind} flag={flag} sock_map={sock_map}")
    return HEADER_STRUCT.pack((length << 8) | kind, (flag << 24) | sock_map)


def decode_header(data: bytes, max_body: int = DEFAULT_MAX_BODY) -> tuple[int, Kind, int, int]:
    """8 header bytes -> (length, kind, flag, sock_map). Raises ProtocolError for an unknown
    kind or a body longer than ``max_body``."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"a frame header is {HEADER_SIZE} bytes, got {len(data)}")
    first, second = HEADER_STRUCT.unpack(data)
    length, kind, flag, sock_map = first >> 8, first & 0xFF, second >> 24, second & 0xFFFFFF
    try:
        kind = Kind(kind)
    except ValueError:
        raise ProtocolError(f"unknown frame kind {kind}") from None
    if length > max_body:
        raise ProtocolError(f"frame body of {length} bytes is over the limit of {max_body}")
    return length, kind, flag, sock_map


def parse_frame(buf: bytes, max_body: int = DEFAULT_MAX_BODY) -> tuple[Frame, int]:
    """A whole frame from the start of ``buf`` -> (Frame, consumed); NeedMore if incomplete."""
    if len(buf) < HEADER_SIZE:
        raise NeedMore()
    length, kind, flag, sock_map = decode_header(bytes(buf[:HEADER_SIZE]), max_body)
    end = HEADER_SIZE + length
    if len(buf) < end:
        raise NeedMore()
    return Frame(kind, flag, sock_map, bytes(buf[HEADER_SIZE:end])), end


_KIND_VALUES = frozenset(int(k) for k in Kind)

#: a whole frame found by :func:`scan_frames`: (kind, flag, sock_map, body start, body end)
Found = tuple[int, int, int, int, int]


def scan_frames(buf: bytes | bytearray | memoryview | mmap.mmap, start: int, end: int,
                max_body: int = DEFAULT_MAX_BODY) -> tuple[list[Found], int, int]:
    """The frame decoder of the link (center.link reads with it) and of the tests that fuzz it:
    the whole frames in ``buf[start:end]``, without copying their bodies.

    Returns (frames, new start, need): each frame as (kind, flag, sock_map, body start, body
    end) offsets into ``buf``; the start of the first incomplete frame; and how many bytes from
    there it needs (HEADER_SIZE, or its header and body once its header is in). A header is
    checked as soon as it is in, before its body is waited for: ProtocolError (decode_header's)
    for an unknown kind or a body over ``max_body``."""
    frames: list[Found] = []
    unpack = HEADER_STRUCT.unpack_from
    while end - start >= HEADER_SIZE:
        first, second = unpack(buf, start)
        length, kind = first >> 8, first & 0xFF
        if length > max_body or kind not in _KIND_VALUES:
            decode_header(bytes(buf[start:start + HEADER_SIZE]), max_body)  # raises, saying which
        if end - start < HEADER_SIZE + length:
            return frames, start, HEADER_SIZE + length
        body = start + HEADER_SIZE
        start = body + length
        frames.append((kind, second >> 24, second & 0xFFFFFF, body, start))
    return frames, start, HEADER_SIZE


# -- body fields ------------------------------------------------------------------------------

def encode_short(text: str) -> bytes:
    """A short string: u8 length, then that many UTF-8 bytes."""
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"short string longer than 255 bytes: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


class _Body:
    """A cursor over one body; every read checks the bounds."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"{self.what} body is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def short(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{self.what} body has a string that is not UTF-8") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.what} body has {len(self.data) - self.pos} unexpected trailing bytes")


# -- one encoder and decoder per body -----------------------------------------------------------

def encode_create(mode: CreateMode, target: str = "", visitor: Optional[tuple[str, str]] = None) -> bytes:
    """A CREATE body; with ``visitor`` (the flag PEER goes with it): the ``"ip:port"`` of the
    connection's client and of the address it reached, after the target."""
    body = bytes((mode,)) + encode_short(target)
    if visitor is not None:
        body += encode_short(visitor[0]) + encode_short(visitor[1])
    return body


def decode_create(body: bytes, peer: bool = False) -> tuple[CreateMode, str, Optional[tuple[Endpoint, Endpoint]]]:
    """(mode, target, visitor): ``visitor`` the (client, reached) endpoints that a CREATE with
    the flag PEER (``peer``) carries, else None."""
    b = _Body(body, "CREATE")
    raw_mode = b.u8()
    try:
        mode = CreateMode(raw_mode)
    except ValueError:
        raise ProtocolError(f"CREATE mode {raw_mode} is not known") from None
    target = b.short()
    visitor = (parse_endpoint(b.short()), parse_endpoint(b.short())) if peer else None
    b.end()
    return mode, target, visitor



def format_endpoint(host: str, port: int) -> str:
    """``ip:port``, ``[v6]:port``: how CREATE carries an endpoint."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """The endpoint of :func:`format_endpoint`. Raises ProtocolError unless it is an IP literal
    and a port."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""
    try:
        ip = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        ip, number = None, -1
    if not sep or ip is None or not 0 <= number <= 65535 or not port.isdigit():
        raise ProtocolError(f"CREATE: {text[:60]!r} is not an ip:port")
    return str(ip), number


def encode_close(reason: str = "") -> bytes:
    return encode_short(reason[:200])


def decode_close(body: bytes) -> str:
    if not body:
        return ""  # lenient: an empty body is an empty reason
    b = _Body(body, "CLOSE")
    reason = b.short()
    b.end()
    return reason


CERT_MAX = 16384  # a client certificate on TOKEN+CERT (DER)


def encode_token(username: str, proof: str, client_id: Optional[str] = None, cert: Optional[bytes] = None) -> bytes:
    """A TOKEN body; with ``client_id`` (the flag ID goes with it) the client's id after the
    proof; with ``cert`` (the flag CERT goes with it) its certificate (u16 length, DER) last."""
    body = encode_short(username) + encode_short(proof)
    if client_id is not None:
        body += encode_short(client_id)
    if cert is not None:
        if not 0 < len(cert) <= CERT_MAX:
            raise ValueError(f"a certificate on TOKEN is 1 to {CERT_MAX} bytes")
        body += len(cert).to_bytes(2, "big") + cert
    return body


CLIENT_ID_MAX = 64


def check_client_id(client_id: str) -> Optional[str]:
    """Why ``client_id`` is not a client id (1-64 of A-Z a-z 0-9 . _ : @ -), or None."""
    if not 1 <= len(client_id) <= CLIENT_ID_MAX:
        return f"a client id has 1 to {CLIENT_ID_MAX} characters, not {len(client_id)}"
    if not all(c.isascii() and (c.isalnum() or c in "._:@-") for c in client_id):
        return f"{client_id[:40]!r} has characters other than letters, digits and . _ : @ -"
    return None


def decode_token(body: bytes, with_id: bool = False) -> tuple[str, str, Optional[str]]:
    """(username, proof, client id): the id that a TOKEN with the flag ID (``with_id``)
    carries, else None. Raises ProtocolError, for an id out of :func:`check_client_id` too."""
    username, proof, client_id, _ = decode_token_cert(body, with_id, False)
    return username, proof, client_id


def decode_token_cert(body: bytes, with_id: bool, with_cert: bool) -> tuple[str, str, Optional[str], Optional[bytes]]:
    """:func:`decode_token`, and the certificate a TOKEN with the flag CERT carries (else None)."""
    b = _Body(body, "TOKEN")
    username, proof = b.short(), b.short()
    client_id = b.short() if with_id else None
    cert = None
    if with_cert:
        n = b.u16()
        if not 0 < n <= CERT_MAX:
            raise ProtocolError(f"TOKEN: a certificate of {n} bytes (1 to {CERT_MAX})")
        cert = b.take(n)
    b.end()
    if client_id is not None and (why := check_client_id(client_id)) is not None:
        raise ProtocolError(f"TOKEN: {why}")
    return username, proof, client_id, cert


def encode_hello(nonce: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes")
    return bytes((version,)) + nonce


def decode_hello(body: bytes) -> tuple[int, bytes]:
    b = _Body(body, "HELLO")
    version, nonce = b.u8(), b.take(NONCE_SIZE)
    b.end()
    return version, nonce


def decode_ping(body: bytes) -> bytes:
    if len(body) != PING_SIZE:
        raise ProtocolError(f"PING body must be {PING_SIZE} bytes, got {len(body)}")
    return body


def encode_window(credit: int) -> bytes:
    return struct.pack("!I", credit)


def decode_window(body: bytes) -> int:
    b = _Body(body, "WINDOW")
    credit = b.u32()
    b.end()
    return credit


def proof(password: str, nonce: bytes) -> str:
    """The handshake proof: lowercase hex HMAC-SHA256(key=password, msg=nonce). The password
    itself never crosses the wire."""
    return hmac.new(password.encode("utf-8"), nonce, hashlib.sha256).hexdigest()


def proof_matches(password: str, nonce: bytes, given: str, cert: Optional[bytes] = None) -> bool:
    """Whether ``given``, any text a client sent, is the proof for ``password`` (with ``cert``:
    of a TOKEN+CERT), compared in constant time as bytes (compare_digest refuses a str with
    characters past ASCII: a stranger's proof must not be an internal error)."""
    expected = proof(password, nonce) if cert is None else cert_proof(password, nonce, cert)
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8"))


def cert_proof(password: str, nonce: bytes, cert: bytes) -> str:
    """The proof of a TOKEN+CERT: HMAC-SHA256(key=password, msg=nonce + SHA-256(cert)): the
    certificate enrolled is the password holder's choice."""
    return hmac.new(password.encode("utf-8"), nonce + hashlib.sha256(cert).digest(), hashlib.sha256).hexdigest()


# -- MAPPING ------------------------------------------------------------------------------------

class HeaderOp(enum.IntEnum):
    ADD = 1  #: "+ k v"
    DELETE = 2  #: "- k"
    SET_IF_ABSENT = 3  #: "? k v"
    REPLACE = 4  #: "k v"


@dataclass(frozen=True)
class HeaderRule:
    is_proxy: bool  # applies to the request going to the service ("proxy ..."), else the response
    op: HeaderOp
    key: str
    value: str = ""


@dataclass(frozen=True)
class MappingSpec:
    """What the client tells the server of one mapping (its local address stays local)."""

    name: str
    mode: str  # tcp, http, https, proxy, udp
    domain: str = ""
    remote_bind: str = ""
    headers: tuple[HeaderRule, ...] = ()
    group: str = ""  # clients whose mappings share a group (and its key) serve one domain or port together
    group_key: str = ""


@dataclass(frozen=True)
class MappingAnswer:
    name: str
    accepted: bool
    reason: str = ""


def encode_mappings(mappings: list[MappingSpec] | tuple[MappingSpec, ...], groups: bool = False) -> bytes:
    """A MAPPING body; with ``groups`` (the flag ID goes with it) each mapping's group and
    group key after its header rules."""
    out = [struct.pack("!H", len(mappings))]
    for m in mappings:
        out += [encode_short(m.name), encode_short(m.mode), encode_short(m.domain), encode_short(m.remote_bind),
                struct.pack("!H", len(m.headers))]
        for h in m.headers:
            out += [bytes((int(h.is_proxy), h.op)), encode_short(h.key), encode_short(h.value)]
        if groups:
            out += [encode_short(m.group), encode_short(m.group_key)]
    return b"".join(out)


def decode_mappings(body: bytes, groups: bool = False) -> list[MappingSpec]:
    """The mappings of a MAPPING body (with the flag ID: ``groups``, each with its group)."""
    b = _Body(body, "MAPPING")
    mappings = []
    for _ in range(b.u16()):
        name, mode, domain, remote_bind = b.short(), b.short(), b.short(), b.short()
        headers = []
        for _ in range(b.u16()):
            is_proxy, raw_op = b.u8(), b.u8()
            if is_proxy not in (0, 1):
                raise ProtocolError(f"MAPPING header rule has is_proxy={is_proxy}")
            try:
                op = HeaderOp(raw_op)
            except ValueError:
                raise ProtocolError(f"MAPPING header rule op {raw_op} is not known") from None
            headers.append(HeaderRule(bool(is_proxy), op, b.short(), b.short()))
        group, group_key = (b.short(), b.short()) if groups else ("", "")
        mappings.append(MappingSpec(name, mode, domain, remote_bind, tuple(headers), group, group_key))
    b.end()
    return mappings


def encode_mapping_answers(answers: list[MappingAnswer] | tuple[MappingAnswer, ...]) -> bytes:
    out = [struct.pack("!H", len(answers))]
    for a in answers:
        out += [encode_short(a.name), bytes((int(a.accepted),)), encode_short(a.reason)]
    return b"".join(out)


def decode_mapping_answers(body: bytes) -> list[MappingAnswer]:
    b = _Body(body, "MAPPING answer")
    answers = []
    for _ in range(b.u16()):
        name, accepted = b.short(), b.u8()
        if accepted not in (0, 1):
            raise ProtocolError(f"MAPPING answer has accepted={accepted}")
        answers.append(MappingAnswer(name, bool(accepted), b.short()))
    b.end()
    return answers
