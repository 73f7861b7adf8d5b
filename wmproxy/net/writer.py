"""Writing to a socket-like object without gevent's per-call overhead.

gevent's ``sendall`` asks the kernel for SO_SNDBUF on every call (a syscall, costly under
gVisor and visible at tens of thousands of requests a second); one ``send`` usually takes a
small message whole, and only the rest, if any, goes through ``sendall``.
"""

from __future__ import annotations

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
