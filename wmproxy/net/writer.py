"""Writing to and closing socket-like objects: ``send_all`` (in gevent_io, beside the gevent
internals it uses), ``close_quietly`` and ``linger``."""

from __future__ import annotations

import socket
import struct
import time

from .conn import Conn
from .gevent_io import send_all  # (it lives with the gevent internals it uses)

__all__ = ["send_all", "close_quietly", "linger"]

_LINGER_ZERO = struct.pack("ii", 1, 0)


def close_quietly(sock: Conn, reset: bool = False) -> None:
    """Close ``sock`` (a TLS socket: without waiting for the peer's close_notify). With
    ``reset``, as a cut instead of an orderly end, so the peer cannot take a close-delimited
    answer for a whole one: what a relay does when its other side was reset (a center link
    died under the stream, say): RST (SO_LINGER 0) for a socket, its own ``abort()`` for a
    socket-like object that has one (a link stream: CLOSE without FIN). Never raises."""
    try:
        if reset:
            abort = getattr(sock, "abort", None)
            if abort is not None:
                abort("reset: the other side of the relay was cut")
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


LINGER_TIME = 30.0  # nginx's lingering_time: the longest a closing connection's input is read and dropped
LINGER_TIMEOUT = 5.0  # nginx's lingering_timeout: the longest wait for more of it


def linger(sock: Conn, total: float = LINGER_TIME, idle: float = LINGER_TIMEOUT) -> None:
    """Before closing a connection whose client may still be sending (an error answered before
    its request was read whole: a head too large, a broken body, a protocol error): send our
    FIN after the answer, then read and drop what still comes, until the client's EOF, ``idle``
    seconds of silence or ``total`` seconds (nginx's lingering close). Closing with unread
    input sends a reset instead, which can destroy the answer before the client reads it, and
    a client still uploading then reports a broken pipe, not the answer. Never raises."""
    try:
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + total
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(min(idle, left))
            if not sock.recv(65536):
                return
    except (OSError, ValueError):  # (a timeout is an OSError; ValueError: a TLS socket once unwrapped)
        pass
