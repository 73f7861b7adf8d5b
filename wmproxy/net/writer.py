"""Writing to and closing socket-like objects: ``send_all`` (in gevent_io, beside the gevent
internals it uses) and ``close_quietly``."""

from __future__ import annotations

import socket
import struct

from .conn import Conn
from .gevent_io import send_all  # (it lives with the gevent internals it uses)

__all__ = ["send_all", "close_quietly"]

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
