"""Writing to a socket-like object without gevent's per-call overhead.

gevent's ``sendall`` asks the kernel for SO_SNDBUF on every call (a syscall, costly under
gVisor and visible at tens of thousands of requests a second); one ``send`` usually takes a
small message whole, and only the rest, if any, goes through ``sendall``.
"""

from __future__ import annotations

import socket
import struct

from gevent.socket import socket as GeventSocket


def send_all(sock, data) -> None:
    """Send all of ``data``. Blocks cooperatively; raises OSError like ``sendall``."""
    try:
        # a plain gevent socket: the kernel socket's send (non-blocking), one Python layer less
        sent = sock._sock.send(data) if type(sock) is GeventSocket else sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


_LINGER_ZERO = struct.pack("ii", 1, 0)


def close_quietly(sock, reset: bool = False) -> None:
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
