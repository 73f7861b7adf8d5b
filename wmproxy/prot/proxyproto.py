"""The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt): the header an L4
balancer sends first on a connection to say whose it is, read and written. Pure: bytes in,
values out.

Version 1 is one text line, at most 107 bytes with its CRLF::

    PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\\r\\n
    PROXY UNKNOWN\\r\\n                       (the receiver keeps the connection's own addresses)

Version 2 is binary: a 12-byte signature, version and command, family and transport, the length
of the rest, then the addresses (IPv4 12 bytes, IPv6 36, UNIX 216) and TLVs. The LOCAL command (a
balancer's own health check) and the UNSPEC and UNIX families carry no client address: the
connection's own addresses stand.

:func:`parse` reads either from the start of a buffer, raises :class:`NeedMore` while the header
is incomplete (never asking for more than a header may hold) and :class:`ProtocolError` for
anything else: a wrong signature, a v1 line past 107 bytes or not in the grammar, a v2 version,
command, family or transport that does not exist, a v2 length shorter than its addresses or past
MAX_V2. What follows the header is the client's own data, not taken.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Optional

from ..errors import NeedMore, ProtocolError

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (an IPv6 one with the longest addresses)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEAD = 16  # signature, version/command, family/transport, length
MAX_V2 = 2048  # bytes after the 16: addresses and TLVs (HAProxy's own headers are far smaller)

LOCAL, PROXY = 0x0, 0x1  # v2 commands
AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX = 0x0, 0x1, 0x2, 0x3
_ADDRESS_SIZE = {AF_UNSPEC: 0, AF_INET: 12, AF_INET6: 36, AF_UNIX: 216}
_TRANSPORTS = (0x0, 0x1, 0x2)  # UNSPEC, STREAM, DGRAM

Endpoint = tuple[str, int]  # (ip text, port)


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header. ``source`` and ``dest`` are None when the header names no client
    (v1 UNKNOWN, v2 LOCAL or a family without IP addresses): keep the connection's own.
    ``size``: the bytes it took; ``tlvs``: v2's (type, value) pairs, in order."""

    version: int
    source: Optional[Endpoint]
    dest: Optional[Endpoint]
    size: int
    tlvs: tuple[tuple[int, bytes], ...] = ()


def parse(data: bytes | bytearray | memoryview) -> ProxyHeader:
    """The header at the start of ``data``. Raises NeedMore (a prefix of a header that may yet
    be valid) or ProtocolError."""
    data = bytes(data[:V2_HEAD + MAX_V2])
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if not data:
        raise NeedMore()
    raise ProtocolError("not a PROXY protocol header (neither 'PROXY ' nor the v2 signature)")


def _parse_v1(data: bytes) -> ProxyHeader:
    if not V1_PREFIX.startswith(data[:len(V1_PREFIX)]):
        raise ProtocolError("not a PROXY protocol header (neither 'PROXY ' nor the v2 signature)")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        before = data[:-1] if data.endswith(b"\r") else data  # (a CR that its LF may yet follow)
        if len(data) >= V1_MAX or b"\r" in before or b"\n" in before:
            raise ProtocolError(f"PROXY v1 line without CRLF in its first {V1_MAX} bytes")
        raise NeedMore()
    words = data[:end].split(b" ")
    size = end + 2
    if len(words) >= 2 and words[1] == b"UNKNOWN":
        return ProxyHeader(1, None, None, size)  # the rest of the line is ignored (the spec)
    if len(words) != 6 or words[1] not in (b"TCP4", b"TCP6"):
        raise ProtocolError(f"malformed PROXY v1 line {data[:min(end, 60)]!r}")
    version = 4 if words[1] == b"TCP4" else 6
    source = _v1_endpoint(words[2], words[4], version)
    dest = _v1_endpoint(words[3], words[5], version)
    return ProxyHeader(1, source, dest, size)


def _v1_endpoint(addr: bytes, port: bytes, version: int) -> Endpoint:
    try:
        ip = ipaddress.ip_address(addr.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"PROXY v1: invalid address {addr[:46]!r}") from None
    if ip.version != version or (version == 4 and addr.decode("ascii") != str(ip)):
        raise ProtocolError(f"PROXY v1: {addr[:46]!r} is not an IPv{version} address in its plain form")
    if not port.isdigit() or len(port) > 5 or (port[:1] == b"0" and port != b"0") or int(port) > 65535:
        raise ProtocolError(f"PROXY v1: invalid port {port[:8]!r}")
    return str(ip), int(port)


def _parse_v2(data: bytes) -> ProxyHeader:
    if not (V2_SIGNATURE.startswith(data) if len(data) < len(V2_SIGNATURE) else data.startswith(V2_SIGNATURE)):
        raise ProtocolError("not a PROXY protocol header (neither 'PROXY ' nor the v2 signature)")
    if len(data) < V2_HEAD:
        raise NeedMore()
    ver_cmd, fam_proto, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProtocolError(f"PROXY v2: version {ver_cmd >> 4} (only 2 exists)")
    command, family, transport = ver_cmd & 0x0F, fam_proto >> 4, fam_proto & 0x0F
    if command not in (LOCAL, PROXY):
        raise ProtocolError(f"PROXY v2: unknown command {command}")
    if family not in _ADDRESS_SIZE or transport not in _TRANSPORTS:
        raise ProtocolError(f"PROXY v2: unknown address family {family} or transport {transport}")
    if length > MAX_V2:
        raise ProtocolError(f"PROXY v2: {length} bytes of addresses and TLVs (at most {MAX_V2})")
    need = _ADDRESS_SIZE[family] if command == PROXY else 0
    if length < need:
        raise ProtocolError(f"PROXY v2: length {length} is shorter than the family's addresses ({need})")
    if len(data) < V2_HEAD + length:
        raise NeedMore()
    size = V2_HEAD + length
    if command == LOCAL:  # the balancer's own connection: the block is discarded (the spec)
        return ProxyHeader(2, None, None, size)
    body = data[V2_HEAD:size]
    source = dest = None
    if family == AF_INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        source, dest = (str(ipaddress.IPv4Address(src)), sport), (str(ipaddress.IPv4Address(dst)), dport)
    elif family == AF_INET6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        source, dest = (_ip6(src), sport), (_ip6(dst), dport)
    return ProxyHeader(2, source, dest, size, _tlvs(body[_ADDRESS_SIZE[family]:]))


def _ip6(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def _tlvs(rest: bytes) -> tuple[tuple[int, bytes], ...]:
    out = []
    pos = 0
    while pos < len(rest):
        if len(rest) - pos < 3:
            raise ProtocolError("PROXY v2: a TLV cut short")
        kind, size = struct.unpack_from("!BH", rest, pos)
        if pos + 3 + size > len(rest):
            raise ProtocolError(f"PROXY v2: a TLV of {size} bytes past the header's end")
        out.append((kind, bytes(rest[pos + 3:pos + 3 + size])))
        pos += 3 + size
    return tuple(out)


# -- sending ------------------------------------------------------------------------------------

def encode_v1(source: Optional[Endpoint], dest: Optional[Endpoint]) -> bytes:
    """A v1 line for a connection from ``source`` to ``dest`` (None, or of two IP versions:
    UNKNOWN)."""
    if source is None or dest is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _plain(source[0]), _plain(dest[0])
    if src.version != dst.version:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {dest[1]}\r\n".encode("ascii")


def encode_v2(source: Optional[Endpoint], dest: Optional[Endpoint], tlvs: tuple[tuple[int, bytes], ...] = (),
              datagram: bool = False) -> bytes:
    """A v2 header: PROXY with the addresses (TCP, or UDP with ``datagram``), LOCAL without
    them (or when the two are of two IP versions)."""
    extra = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    transport = 0x2 if datagram else 0x1
    src = _plain(source[0]) if source is not None else None
    dst = _plain(dest[0]) if dest is not None else None
    if source is None or dest is None or src is None or dst is None or src.version != dst.version:
        body = extra
        return V2_SIGNATURE + struct.pack("!BBH", 0x20 | LOCAL, 0x00, len(body)) + body
    if src.version == 4:
        family, addresses = AF_INET, struct.pack("!4s4sHH", src.packed, dst.packed, source[1], dest[1])
    else:
        family, addresses = AF_INET6, struct.pack("!16s16sHH", src.packed, dst.packed, source[1], dest[1])
    body = addresses + extra
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | PROXY, family << 4 | transport, len(body)) + body


def _plain(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
