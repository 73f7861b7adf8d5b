"""The link handshake (PROTOCOL.md): HELLO nonce, TOKEN with an HMAC proof, TOKEN+ACK or
CLOSE(0, "auth failed"), then MAPPING and MAPPING+ACK. The password never crosses the wire.

Blocking-style over a Reader; the socket's timeout bounds each step.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

from ..errors import ProtocolError
from ..net.conn import Conn
from ..net.reader import Reader
from ..prot import frame as fr
from ..prot.frame import Flag, Kind
from .link import read_frame


class AuthFailed(Exception):
    pass


HANDSHAKE_MAX_BODY = 65536


def _send(sock: Conn, kind: Kind, flag: int, body: bytes = b"") -> None:
    sock.sendall(fr.Frame(kind, flag, 0, body).encode())


def _expect(reader: Reader, kind: Kind, want_ack: bool) -> fr.Frame:
    f = read_frame(reader, HANDSHAKE_MAX_BODY)
    if f.kind == Kind.CLOSE and f.sock_map == 0:
        raise AuthFailed(fr.decode_close(f.body) or "closed by the far end")
    if f.kind != kind or bool(f.flag & Flag.ACK) != want_ack or f.sock_map != 0:
        raise ProtocolError(f"handshake: expected {kind.name}{'+ACK' if want_ack else ''}, got {f.kind.name}")
    return f


def server_side(sock: Conn, reader: Reader, accounts: dict[str, str],
                decide: Callable[[str, list[fr.MappingSpec]], list[fr.MappingAnswer]]) -> tuple[str, bool]:
    """Run the server's half; returns the client's user name ('' when no accounts are set)
    and whether it reads a visitor's address on CREATE (it set PEER on its MAPPING).
    ``decide(user, mappings)`` answers the client's mappings. Raises AuthFailed (after
    telling the client), ProtocolError, PeerClosed, OSError."""
    nonce = os.urandom(fr.NONCE_SIZE)
    _send(sock, Kind.HELLO, 0, fr.encode_hello(nonce))
    username, proof = fr.decode_token(_expect(reader, Kind.TOKEN, False).body)
    if accounts:
        password = accounts.get(username)
        if password is None or not fr.proof_matches(password, nonce, proof):
            _send(sock, Kind.CLOSE, 0, fr.encode_close("auth failed"))
            raise AuthFailed(f"auth failed for user {username[:40]!r}")
    _send(sock, Kind.TOKEN, Flag.ACK)
    mapping = _expect(reader, Kind.MAPPING, False)
    mappings = fr.decode_mappings(mapping.body)
    _send(sock, Kind.MAPPING, Flag.ACK | Flag.PEER, fr.encode_mapping_answers(decide(username, mappings)))
    return username, bool(mapping.flag & Flag.PEER)


def client_side(sock: Conn, reader: Reader, username: str, password: str,
                mappings: Sequence[fr.MappingSpec] = ()) -> tuple[list[fr.MappingAnswer], bool]:
    """Run the client's half; returns the server's answer per mapping and whether it reads a
    visitor's address on CREATE (it set PEER on its answer). Raises AuthFailed, ProtocolError,
    PeerClosed, OSError."""
    version, nonce = fr.decode_hello(_expect(reader, Kind.HELLO, False).body)
    if version != fr.PROTOCOL_VERSION:
        raise ProtocolError(f"the server speaks link protocol {version}, this client {fr.PROTOCOL_VERSION}")
    _send(sock, Kind.TOKEN, 0, fr.encode_token(username, fr.proof(password, nonce) if username else ""))
    _expect(reader, Kind.TOKEN, True)
    _send(sock, Kind.MAPPING, Flag.PEER, fr.encode_mappings(list(mappings)))
    answer = _expect(reader, Kind.MAPPING, True)
    return fr.decode_mapping_answers(answer.body), bool(answer.flag & Flag.PEER)
