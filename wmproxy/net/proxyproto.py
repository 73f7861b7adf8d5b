"""The client's own address behind a balancer: the PROXY protocol on a listener (whom to
believe, and reading the header off a fresh connection before anything else touches it, TLS
included), and ``[http] real_ip_from`` (the address an HTTP proxy in front put in a header).

A listener with ``proxy_protocol = true`` takes connections only from ``proxy_protocol_from``
(the balancers) and only with a valid header, read whole within a deadline. The header's source
address then stands for the peer's everywhere: limits, ACLs, logs, forwarded headers.

The header is read without taking a byte past it (the client's data that follows belongs to
TLS or to the proxied protocol): each read first peeks at what has arrived, and takes only what
:func:`prot.proxyproto.parse` says is header. Bytes peeked that are all still a header prefix
are taken before waiting for more, so the peek never spins.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Optional

import gevent

from ..errors import NeedMore, PhaseTimeout, ProtocolError
from ..prot import proxyproto as pp
from .conn import Address
from .dial import Network, fmt_addr, in_networks, plain_ip

log = logging.getLogger("wmproxy")

LOG_EVERY = 1.0  # seconds: refusals of one listener are logged at most this often (a flood is one line)
MAX_LABELS = 1024  # listeners whose last refusal is remembered

_refusals: dict[tuple[str, bool], tuple[float, int]] = {}  # (label, untrusted) -> (last logged, refused since)


def _refused(label: str, peer: str, why: str, untrusted: bool) -> None:
    """One warning for a refused connection, at most one a second per listener and kind
    (untrusted peers, bad headers), with the count of those refused in between: a stranger
    hammering the port cannot flood the log, nor hide a balancer's bad headers in the flood."""
    now = time.monotonic()
    logged_at, since = _refusals.get((label, untrusted), (0.0, 0))
    if now - logged_at < LOG_EVERY:
        _refusals[(label, untrusted)] = (logged_at, since + 1)
        return
    more = f" ({since} more refused since the last line)" if since else ""
    log.warning("%s: refused %s: %s%s", label, peer, why, more)
    if len(_refusals) >= MAX_LABELS:  # (labels of mapping ports come and go with their clients)
        _refusals.clear()
    _refusals[(label, untrusted)] = (now, 0)


@dataclass(frozen=True)
class ProxyProtocolIn:
    """A listener's policy: the trusted balancers' networks and the header's deadline."""

    trusted: tuple[Network, ...]
    timeout: float

    def trusts(self, ip: str) -> bool:
        return in_networks(ip, self.trusted)


def policy(on: bool, trusted: tuple[Network, ...], timeout: float) -> Optional[ProxyProtocolIn]:
    """The policy of a listener whose config says ``proxy_protocol = on``; None when off."""
    return ProxyProtocolIn(tuple(trusted), timeout) if on else None


def read_header(sock: socket.socket, timeout: float) -> pp.ProxyHeader:
    """Read one PROXY protocol header (v1 or v2) from the start of ``sock``, whole within
    ``timeout`` seconds, taking no byte past it. Blocks (the greenlet). Raises PhaseTimeout,
    ProtocolError (malformed, or the connection closed before the header's end), OSError."""
    taken = b""
    with gevent.Timeout(timeout, PhaseTimeout(f"PROXY protocol header not complete within {timeout:g}s")):
        while True:
            seen = sock.recv(pp.V2_HEAD + pp.MAX_V2 - len(taken), socket.MSG_PEEK)
            if not seen:
                raise ProtocolError(f"closed after {len(taken)} byte(s), before a whole PROXY protocol header")
            try:
                header = pp.parse(taken + seen)
            except NeedMore:
                taken += _take(sock, len(seen))  # all of it is header: take it, then wait for more
                continue
            _take(sock, header.size - len(taken))
            return header


def _take(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes already peeked at (so present: recv does not wait)."""
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ProtocolError("closed inside a PROXY protocol header")
        out += chunk
    return out


def accept(sock: socket.socket, address: Address, rule: ProxyProtocolIn, label: str) -> Optional[Address]:
    """The client's address of a connection to a listener with ``rule``: the header's source
    (the peer's own for LOCAL and UNKNOWN headers). None, with one log line, when the peer is
    not trusted or its header is missing, malformed or late: the caller closes the connection.
    Blocks up to the rule's timeout; never raises for what the peer sends."""
    peer = fmt_addr(address[0], address[1]) if isinstance(address, tuple) else str(address)
    if not isinstance(address, tuple) or not rule.trusts(address[0]):
        _refused(label, peer, "not in proxy_protocol_from, it may not send a PROXY protocol header", True)
        return None
    try:
        header = read_header(sock, rule.timeout)
    except (ProtocolError, PhaseTimeout) as e:
        _refused(label, peer, str(e), False)
        return None
    except OSError as e:
        log.info("%s: %s: %s before its PROXY protocol header", label, peer, e.strerror or e)
        return None
    if header.source is None:
        return address
    return header.source


def real_ip(peer: str, values: list[bytes], trusted: tuple[Network, ...]) -> str:
    """The client's address of a request from ``peer`` carrying ``values`` (the lines of the
    real_ip_header, e.g. X-Forwarded-For): when ``peer`` is trusted, the right-most address of
    the list that is not (each trusted proxy appends the address it got the request from, so
    the first untrusted one from the right is the last that no trusted hop could have
    invented; nginx's real_ip_recursive on). ``peer`` itself when it is not trusted, or when
    the list holds no IP literal where one is needed (a malformed value is not believed)."""
    if not values or not in_networks(peer, trusted):
        return peer
    found = peer
    for value in reversed(b",".join(values).split(b",")):
        text = value.strip().decode("latin-1")
        if text.startswith("[") and "]" in text:  # ([v6]:port, as some proxies write it)
            text = text[1:text.index("]")]
        elif text.count(":") == 1:  # (v4:port)
            text = text.split(":", 1)[0]
        try:
            found = str(plain_ip(text))
        except ValueError:
            return found  # garbage: the last address believed so far stands
        if not in_networks(found, trusted):
            return found
    return found


def header_for(version: str, source: Optional[Address], dest: Optional[Address]) -> bytes:
    """The header that tells the next hop a connection from ``source`` (the client) came in
    on ``dest``: ``version`` "v1" (text) or "v2" (binary). A v2 header says LOCAL, and a v1
    header UNKNOWN, when either address is unknown or not an IP one (a UNIX socket...)."""
    src = (source[0], source[1]) if isinstance(source, tuple) and len(source) >= 2 else None
    dst = (dest[0], dest[1]) if isinstance(dest, tuple) and len(dest) >= 2 else None
    try:
        if src is not None:
            plain_ip(src[0])
        if dst is not None:
            plain_ip(dst[0])
    except ValueError:
        src = dst = None
    return pp.encode_v1(src, dst) if version == "v1" else pp.encode_v2(src, dst)
