"""The link handshake (PROTOCOL.md): HELLO nonce, TOKEN with an HMAC proof (and the client's
id, to a server whose HELLO said ID), TOKEN+ACK or CLOSE(0, "auth failed"), then MAPPING and
MAPPING+ACK. The password never crosses the wire.

Blocking-style over a Reader; the socket's timeout bounds each step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..errors import ProtocolError
from ..net.conn import Conn
from ..net.reader import Reader
from ..prot import frame as fr
from ..prot.frame import Flag, Kind
from .link import read_frame


class AuthFailed(Exception):
    pass


class Enrolled(AuthFailed):
    """The client's certificate is pinned now (TOKEN+CERT): it links again presenting it."""


ENROLLED = "enrolled: link again presenting this certificate"

#: a server's check of a client's certificate (client_ca = "pin"): (pin name, the certificate
#: presented in TLS or None, the one offered on TOKEN+CERT or None) -> None to go on; raises
#: Enrolled, or AuthFailed with the reason told to the client
CertCheck = Callable[[str, Optional[bytes], Optional[bytes]], None]


@dataclass(frozen=True)
class Login:
    """Who linked, as the server's handshake learnt it."""

    user: str  # the account ('' when the server takes anyone)
    client_id: Optional[str]  # the client's id (None: a client from before ids: one id per link)
    peer_aware: bool = False  # it reads a visitor's address on CREATE (PEER on its MAPPING)


HANDSHAKE_MAX_BODY = 65536


def _send(sock: Conn, kind: Kind, flag: int, body: bytes = b"") -> None:
    sock.sendall(fr.Frame(kind, flag, 0, body).encode())


def _expect(reader: Reader, kind: Kind, want_ack: bool) -> fr.Frame:
    f = read_frame(reader, HANDSHAKE_MAX_BODY)
    if f.kind == Kind.CLOSE and f.sock_map == 0:
        raise AuthFailed(fr.decode_close(f.body) or "closed by the far end")
    if f.kind != kind or bool(f.flag & Flag.ACK) != want_ack or f.sock_map != 0:
        raise ProtocolError(f"handshake: expected {kind.name}{'+ACK' if want_ack else ''}, got {f.kind.name}"
                            f"{'+ACK' if f.flag & Flag.ACK else ''}{f' on stream {f.sock_map}' if f.sock_map else ''}")
    return f


def pin_name(username: str, client_id: Optional[str]) -> str:
    """A client's line in known_clients: its account, and its id when it sent one."""
    return (username or "-") + (f"#{client_id}" if client_id else "")


def server_side(sock: Conn, reader: Reader, accounts: dict[str, str],
                decide: Callable[[Login, list[fr.MappingSpec]], list[fr.MappingAnswer]],
                check_cert: Optional[CertCheck] = None, presented: Optional[bytes] = None,
                disabled: frozenset = frozenset()) -> Login:
    """Run the server's half; returns who linked. ``decide(login, mappings)`` answers the
    client's mappings; ``check_cert`` (client certificates pinned on first use) checks the
    certificate ``presented`` in TLS, or the one a client offers to enroll; an account in
    ``disabled`` is refused once it proved its password. Raises AuthFailed
    (Enrolled; after telling the client), ProtocolError, PeerClosed, OSError."""
    nonce = os.urandom(fr.NONCE_SIZE)
    _send(sock, Kind.HELLO, Flag.ID | (Flag.CERT if check_cert is not None else 0), fr.encode_hello(nonce))
    token = _expect(reader, Kind.TOKEN, False)
    username, proof, client_id, offered = fr.decode_token_cert(token.body, bool(token.flag & Flag.ID),
                                                               check_cert is not None and bool(token.flag & Flag.CERT))
    if accounts:
        password = accounts.get(username)
        right = password is not None and fr.proof_matches(password, nonce, proof, offered)
        if not right:
            _send(sock, Kind.CLOSE, 0, fr.encode_close("auth failed"))
            raise AuthFailed(f"auth failed for user {username[:40]!r}")
        if username in disabled:  # (said only to whoever proved the password)
            _send(sock, Kind.CLOSE, 0, fr.encode_close("account disabled"))
            raise AuthFailed(f"account {username!r} is disabled")
    if check_cert is not None:
        try:
            check_cert(pin_name(username, client_id), presented, offered)
        except AuthFailed as e:
            _send(sock, Kind.CLOSE, 0, fr.encode_close(ENROLLED if isinstance(e, Enrolled) else str(e)[:200]))
            raise
    _send(sock, Kind.TOKEN, Flag.ACK)
    mapping = _expect(reader, Kind.MAPPING, False)
    mappings = fr.decode_mappings(mapping.body, bool(mapping.flag & Flag.ID))
    login = Login(username, client_id, bool(mapping.flag & Flag.PEER))
    _send(sock, Kind.MAPPING, Flag.ACK | Flag.PEER, fr.encode_mapping_answers(decide(login, mappings)))
    return login


def client_side(sock: Conn, reader: Reader, username: str, password: str,
                mappings: Sequence[fr.MappingSpec] = (), client_id: str = "",
                enroll: Optional[bytes] = None) -> tuple[list[fr.MappingAnswer], bool, bool]:
    """Run the client's half (``client_id`` sent to a server that reads it; ``enroll``: this
    client's certificate, offered to a server that pins them when TLS did not present it);
    returns the server's answer per mapping, whether it reads a visitor's address on CREATE
    (it set PEER on its answer) and whether it reads client ids and mapping groups (ID on its
    HELLO). Raises AuthFailed (Enrolled: link again presenting the certificate),
    ProtocolError, PeerClosed, OSError."""
    hello = _expect(reader, Kind.HELLO, False)
    version, nonce = fr.decode_hello(hello.body)
    if version != fr.PROTOCOL_VERSION:
        raise ProtocolError(f"the server speaks link protocol {version}, this client {fr.PROTOCOL_VERSION}")
    cert = enroll if enroll is not None and hello.flag & Flag.CERT else None
    if cert is not None:
        proof = fr.cert_proof(password, nonce, cert) if username else ""
    else:
        proof = fr.proof(password, nonce) if username else ""
    with_id = bool(client_id and hello.flag & Flag.ID)
    flags = (Flag.ID if with_id else 0) | (Flag.CERT if cert is not None else 0)
    _send(sock, Kind.TOKEN, flags, fr.encode_token(username, proof, client_id if with_id else None, cert))
    try:
        _expect(reader, Kind.TOKEN, True)
    except AuthFailed as e:
        if str(e) == ENROLLED:
            raise Enrolled(str(e)) from None
        raise
    ids = bool(hello.flag & Flag.ID)
    _send(sock, Kind.MAPPING, Flag.PEER | (Flag.ID if ids else 0), fr.encode_mappings(list(mappings), ids))
    answer = _expect(reader, Kind.MAPPING, True)
    return fr.decode_mapping_answers(answer.body), bool(answer.flag & Flag.PEER), ids
