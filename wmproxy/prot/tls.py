"""The server name (SNI) and ALPN protocols of a TLS ClientHello, read without terminating
TLS. Pure.

For routing TLS by name while passing its bytes through untouched (``tls_passthrough``), and
for seeing an ACME TLS-ALPN-01 validation (ALPN ``acme-tls/1``) before the handshake.

TLS record                       handshake message              ClientHello body
+------+---------+--------+      +------+--------+            +---------+--------+-----------+
| type | version | length |      | type | length |            | version | random | sess. id  |
|  22  |    2    |   2    |      |  1   |   3    |            |    2    |   32   | 1 + n     |
+------+---------+--------+      +------+--------+            +---------+--------+-----------+
then cipher suites (2 + n), compression methods (1 + n), extensions (2 + n): each type (2),
length (2), data. server_name (type 0): list length (2), then entries name_type (1, 0 = host
name), length (2), name. application_layer_protocol_negotiation (type 16): list length (2),
then entries length (1), protocol name. The handshake message may span several records.
"""

from __future__ import annotations

import struct
from typing import cast

from ..errors import NeedMore, ProtocolError

RECORD_HANDSHAKE = 22
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
MAX_HELLO = 65536  # a ClientHello longer than this is refused


def _handshake_bytes(buf: bytes) -> bytes:
    """The first handshake message, joined from as many records as it spans."""
    out = bytearray()
    pos = 0
    while True:
        if len(buf) < pos + 5:
            raise NeedMore()
        rtype, major, length = buf[pos], buf[pos + 1], struct.unpack_from("!H", buf, pos + 3)[0]
        if rtype != RECORD_HANDSHAKE or major != 3:
            raise ProtocolError(f"not a TLS handshake record (type {rtype}, version {major}.x)")
        if len(buf) < pos + 5 + length:
            raise NeedMore()
        out += buf[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(out) >= 4:
            need = 4 + int.from_bytes(out[1:4], "big")
            if out[0] != CLIENT_HELLO:
                raise ProtocolError(f"the first TLS handshake message is type {out[0]}, not a ClientHello")
            if need > MAX_HELLO:
                raise ProtocolError(f"a ClientHello of {need} bytes is over {MAX_HELLO}")
            if len(out) >= need:
                return bytes(out[4:need])
        if pos > MAX_HELLO + 1024:
            raise ProtocolError("a ClientHello spread over too many records")


def client_hello_sni(buf: bytes) -> str:
    """The host name a ClientHello at the start of ``buf`` asks for ('' when it names none).
    Raises NeedMore until the whole ClientHello is there, ProtocolError when it is not TLS."""
    return client_hello(buf)[0]


def client_hello(buf: bytes) -> tuple[str, tuple[str, ...]]:
    """(host name, ALPN protocols offered) of a ClientHello at the start of ``buf``: '' and ()
    for what it does not say. Raises NeedMore until the whole ClientHello is there,
    ProtocolError when it is not TLS or an extension is malformed."""
    hello = _handshake_bytes(buf)
    name, alpn = "", cast(tuple[str, ...], ())
    try:
        pos = 2 + 32
        pos += 1 + hello[pos]  # session id
        pos += 2 + struct.unpack_from("!H", hello, pos)[0]  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        if pos == len(hello):
            return "", ()  # no extensions
        end = pos + 2 + struct.unpack_from("!H", hello, pos)[0]
        pos += 2
        while pos + 4 <= end:
            etype, elen = struct.unpack_from("!HH", hello, pos)
            pos += 4
            if etype == EXT_SERVER_NAME:
                name = _server_name(hello, pos)
            elif etype == EXT_ALPN:
                alpn = _alpn(hello[pos : pos + elen])
            pos += elen
        return name, alpn
    except (IndexError, struct.error, UnicodeDecodeError):
        raise ProtocolError("malformed ClientHello") from None


def _server_name(hello: bytes, pos: int) -> str:
    lpos, lend = pos + 2, pos + 2 + struct.unpack_from("!H", hello, pos)[0]
    while lpos + 3 <= lend:
        ntype, nlen = hello[lpos], struct.unpack_from("!H", hello, lpos + 1)[0]
        name = hello[lpos + 3 : lpos + 3 + nlen]
        if ntype == 0:
            if len(name) != nlen:
                break
            return name.decode("ascii").lower().rstrip(".")
        lpos += 3 + nlen
    raise ProtocolError("malformed server_name extension")


def _alpn(data: bytes) -> tuple[str, ...]:
    if len(data) < 2 or struct.unpack_from("!H", data)[0] != len(data) - 2:
        raise ProtocolError("malformed ALPN extension")
    out, pos = [], 2
    while pos < len(data):
        n = data[pos]
        item = data[pos + 1 : pos + 1 + n]
        if not n or len(item) != n:
            raise ProtocolError("malformed ALPN extension")
        out.append(item.decode("latin-1"))
        pos += 1 + n
    return tuple(out)
