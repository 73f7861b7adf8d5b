"""SOCKS5 (RFC 1928, RFC 1929) and SOCKS4/4a messages. Pure: bytes in, values out.

Every ``parse_*`` takes the bytes received so far and returns ``(value, consumed)``, or
raises :class:`NeedMore` when the message is not complete yet, or :class:`ProtocolError`
when it can never be valid. So the same parser serves a socket, a virtual connection or a
test feeding bytes one at a time.

SOCKS5 greeting            method selection     username/password (RFC 1929)
+-----+----------+------+  +-----+--------+      +-----+------+------+------+------+
| VER | NMETHODS | METH |  | VER | METHOD |      | VER | ULEN | USER | PLEN | PASS |
|  5  |    1     | 1-255|  |  5  |   1    |      |  1  |  1   | 1-255|  1   | 1-255|
+-----+----------+------+  +-----+--------+      +-----+------+------+------+------+

SOCKS5 request / reply
+-----+-----------+-----+------+----------+----------+
| VER | CMD / REP | RSV | ATYP | ADDR     | PORT     |
|  5  |     1     |  0  |  1   | variable | 2, big-e |
+-----+-----------+-----+------+----------+----------+
ATYP 1: 4-byte IPv4; 3: 1-byte length + name; 4: 16-byte IPv6.

SOCKS5 UDP request header (RFC 1928 section 7), in front of every relayed datagram
+-----+------+------+----------+----------+----------+
| RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
|  2  |  1   |  1   | variable |    2     | variable |
+-----+------+------+----------+----------+----------+

SOCKS4 request                                          SOCKS4 reply
+----+----+------+------+----------+------------------+  +----+----+------+------+
| VN | CD | PORT | IP   | USERID\\0 | [HOST\\0 if 4a]   |  | 0  | CD | PORT | IP   |
| 4  | 1  |  2   |  4   | variable | variable         |  | 1  | 1  |  2   |  4   |
+----+----+------+------+----------+------------------+  +----+----+------+------+
SOCKS4a: IP 0.0.0.x with x != 0 means "host name follows"; that IP is never dialled.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from ..errors import NeedMore, ProtocolError

SOCKS5 = 5
SOCKS4 = 4

# Method numbers in the greeting.
METHOD_NO_AUTH = 0x00  #: no authentication
METHOD_USERPASS = 0x02  #: username/password, RFC 1929
METHOD_NONE_ACCEPTABLE = 0xFF  #: none of the offered methods is acceptable

# Commands.
CMD_CONNECT = 0x01  #: open a TCP connection to the target
CMD_BIND = 0x02  #: accept one inbound connection (not served)
CMD_UDP_ASSOCIATE = 0x03  #: relay UDP datagrams (SOCKS5 only)

# Address types.
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

# SOCKS5 reply codes (RFC 1928 section 6).
REP_SUCCEEDED = 0x00
REP_GENERAL_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_HOST_UNREACHABLE = 0x04
REP_CONNECTION_REFUSED = 0x05
REP_TTL_EXPIRED = 0x06
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_TYPE_NOT_SUPPORTED = 0x08

# SOCKS4 reply codes.
S4_GRANTED = 0x5A
S4_REJECTED = 0x5B

MAX_SOCKS4_FIELD = 255  # longest USERID or HOST accepted


@dataclass(frozen=True)
class Request:
    """A CONNECT/BIND/UDP request of either version: what to reach and who asks."""

    version: int
    command: int
    host: str  # an IP literal or a name
    port: int
    userid: str = ""  # SOCKS4 only


def _need(buf: bytes, n: int) -> None:
    if len(buf) < n:
        raise NeedMore()


def parse_greeting(buf: bytes) -> tuple[bytes, int]:
    """SOCKS5 greeting -> (offered methods, consumed)."""
    _need(buf, 2)
    if buf[0] != SOCKS5:
        raise ProtocolError(f"not SOCKS5: version byte {buf[0]}")
    n = buf[1]
    if n == 0:
        raise ProtocolError("SOCKS5 greeting offers no method")
    _need(buf, 2 + n)
    return bytes(buf[2 : 2 + n]), 2 + n


def encode_method(method: int) -> bytes:
    return bytes((SOCKS5, method))


def parse_userpass(buf: bytes) -> tuple[tuple[str, str], int]:
    """RFC 1929 sub-negotiation -> ((username, password), consumed)."""
    _need(buf, 2)
    if buf[0] != 0x01:
        raise ProtocolError(f"username/password sub-negotiation has version {buf[0]}, expected 1")
    ulen = buf[1]
    _need(buf, 2 + ulen + 1)
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    _need(buf, end)
    user = bytes(buf[2 : 2 + ulen]).decode("utf-8", "replace")
    password = bytes(buf[3 + ulen : end]).decode("utf-8", "replace")
    return (user, password), end


def encode_userpass_status(ok: bool) -> bytes:
    return bytes((0x01, 0x00 if ok else 0x01))


def parse_address(buf: bytes, offset: int) -> tuple[str, int, int]:
    """ATYP + address + port at ``offset`` -> (host, port, end offset)."""
    _need(buf, offset + 1)
    atyp = buf[offset]
    if atyp == ATYP_IPV4:
        end = offset + 1 + 4
        _need(buf, end + 2)
        host = str(ipaddress.IPv4Address(bytes(buf[offset + 1 : end])))
    elif atyp == ATYP_IPV6:
        end = offset + 1 + 16
        _need(buf, end + 2)
        host = str(ipaddress.IPv6Address(bytes(buf[offset + 1 : end])))
    elif atyp == ATYP_DOMAIN:
        _need(buf, offset + 2)
        n = buf[offset + 1]
        if n == 0:
            raise ProtocolError("SOCKS5 empty domain name", socks5_reply=REP_HOST_UNREACHABLE)
        end = offset + 2 + n
        _need(buf, end + 2)
        raw = bytes(buf[offset + 2 : end])
        name = host_name(raw)
        if name is None:
            raise ProtocolError(f"SOCKS5 domain name {raw[:80]!r} is not a host name",
                                socks5_reply=REP_HOST_UNREACHABLE)
        host = name
    else:
        raise ProtocolError(f"SOCKS5 address type {atyp} is not supported", socks5_reply=REP_ADDRESS_TYPE_NOT_SUPPORTED)
    (port,) = struct.unpack_from("!H", buf, end)
    return host, port, end + 2


def encode_address(host: str, port: int) -> bytes:
    """ATYP + address + port for an IP literal or a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if len(name) > 255:
            raise ValueError(f"host name longer than 255 bytes: {host[:40]}...") from None
        return bytes((ATYP_DOMAIN, len(name))) + name + struct.pack("!H", port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes((atyp,)) + ip.packed + struct.pack("!H", port)


def parse_request(buf: bytes) -> tuple[Request, int]:
    """SOCKS5 request -> (Request, consumed)."""
    _need(buf, 3)
    if buf[0] != SOCKS5:
        raise ProtocolError(f"SOCKS5 request has version {buf[0]}")
    host, port, end = parse_address(buf, 3)
    return Request(SOCKS5, buf[1], host, port), end


def encode_request(command: int, host: str, port: int) -> bytes:
    return bytes((SOCKS5, command, 0)) + encode_address(host, port)


def encode_reply(rep: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """SOCKS5 reply with the bound address (the proxy's side of the upstream socket)."""
    return bytes((SOCKS5, rep, 0)) + encode_address(host, port)


def parse_reply(buf: bytes) -> tuple[tuple[int, str, int], int]:
    """SOCKS5 reply -> ((rep, bound host, bound port), consumed). For clients and tests."""
    _need(buf, 3)
    if buf[0] != SOCKS5:
        raise ProtocolError(f"SOCKS5 reply has version {buf[0]}")
    host, port, end = parse_address(buf, 3)
    return (buf[1], host, port), end


def parse_udp_header(datagram: bytes) -> tuple[int, str, int, int]:
    """A relayed datagram's header -> (FRAG, target host, target port, offset of the data).
    A datagram is whole: a header cut short is a ProtocolError, not NeedMore."""
    try:
        _need(datagram, 4)
        host, port, end = parse_address(datagram, 3)
    except NeedMore:
        raise ProtocolError(f"SOCKS5 UDP datagram of {len(datagram)} bytes ends inside its header") from None
    return datagram[2], host, port, end


def encode_udp_header(host: str, port: int) -> bytes:
    """The header for a datagram from (to) ``host:port``, FRAG 0."""
    return b"\0\0\0" + encode_address(host, port)


_NAME = re.compile(rb"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_IPV6 = re.compile(rb"[0-9A-Fa-f:.]+\Z")


def host_name(raw: bytes) -> str | None:
    """A host a SOCKS client named: an IP literal, or a name of letters, digits, '-', '_' and
    dots (IDNA names in their ASCII form), as a resolver takes; None for anything else (control
    bytes, spaces, other bytes: never asked of DNS, nor written to a log as they came)."""
    if not 0 < len(raw) <= 255:
        return None
    if _NAME.match(raw):
        return raw.decode("ascii")
    if not _IPV6.match(raw):  # (no scope: ipaddress takes any text after '%')
        return None
    try:
        return str(ipaddress.IPv6Address(raw.decode("ascii")))
    except ValueError:
        return None


def _cstring(buf: bytes, start: int, what: str) -> tuple[str, int]:
    """A NUL-terminated field of at most MAX_SOCKS4_FIELD bytes -> (text, end after NUL)."""
    nul = buf.find(b"\0", start, start + MAX_SOCKS4_FIELD + 1)
    if nul < 0:
        if len(buf) - start > MAX_SOCKS4_FIELD:
            raise ProtocolError(f"SOCKS4 {what} longer than {MAX_SOCKS4_FIELD} bytes")
        raise NeedMore()
    return bytes(buf[start:nul]).decode("utf-8", "replace"), nul + 1


def parse_socks4(buf: bytes) -> tuple[Request, int]:
    """SOCKS4 or SOCKS4a request -> (Request, consumed)."""
    _need(buf, 8)
    if buf[0] != SOCKS4:
        raise ProtocolError(f"not SOCKS4: version byte {buf[0]}")
    command = buf[1]
    (port,) = struct.unpack_from("!H", buf, 2)
    ip = bytes(buf[4:8])
    userid, end = _cstring(buf, 8, "USERID")
    if ip[:3] == b"\0\0\0" and ip[3] != 0:
        start = end
        _, end = _cstring(buf, start, "host name")
        raw = bytes(buf[start : end - 1])
        if not raw:
            raise ProtocolError("SOCKS4a request with an empty host name")
        name = host_name(raw)
        if name is None:
            raise ProtocolError(f"SOCKS4a host name {raw[:80]!r} is not a host name")
        host = name
    else:
        host = str(ipaddress.IPv4Address(ip))
    return Request(SOCKS4, command, host, port, userid), end


def encode_socks4(command: int, host: str, port: int, userid: str = "") -> bytes:
    """SOCKS4 request (SOCKS4a when ``host`` is a name). For clients and tests."""
    head = bytes((SOCKS4, command)) + struct.pack("!H", port)
    try:
        return head + ipaddress.IPv4Address(host).packed + userid.encode() + b"\0"
    except ValueError:
        return head + b"\0\0\0\x01" + userid.encode() + b"\0" + host.encode("idna") + b"\0"


def encode_socks4_reply(granted: bool, host: str = "0.0.0.0", port: int = 0) -> bytes:
    try:
        packed = ipaddress.IPv4Address(host).packed
    except ValueError:
        packed = b"\0\0\0\0"
    return bytes((0, S4_GRANTED if granted else S4_REJECTED)) + struct.pack("!H", port) + packed
