"""Writing to a socket-like object without gevent's per-call overhead.

gevent's ``sendall`` asks the kernel for SO_SNDBUF on every call (a syscall, costly under
gVisor and visible at tens of thousands of requests a second); one ``send`` usually takes a
small message whole, and only the rest, if any, goes through ``sendall``.
"""

from __future__ import annotations


def send_all(sock, data) -> None:
    """Send all of ``data``. Blocks cooperatively; raises OSError like ``sendall``."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
