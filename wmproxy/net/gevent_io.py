"""The one module that touches gevent's private socket API.

A gevent socket keeps the kernel socket in ``_sock`` and waits for readiness with
``_wait(_read_event)``. wmproxy uses them on its hottest paths: the kernel socket's ``recv``,
``recv_into`` and ``send`` first (non-blocking, one Python layer less per message), gevent's
wait only when nothing is there yet. They are private, so only this module names them,
:func:`check` verifies them when a process starts, and ``pyproject.toml`` bounds gevent to the
versions tested (``GEVENT_TESTED``; CI installs the newest one allowed).
"""

from __future__ import annotations

import _socket
import socket
import ssl
from functools import partial
from typing import Callable, Optional

import gevent
from gevent.socket import socket as GeventSocket
from gevent.ssl import SSLSocket as GeventSSLSocket

from .conn import Conn, Data

#: the gevent versions whose internals this module was checked against (pyproject.toml says so too)
GEVENT_TESTED = ">=24.2,<27"


def kernel_socket(sock: Conn) -> Optional[socket.socket]:
    """The kernel socket under a plain gevent socket (not a TLS one, not a link stream), else
    None. Its calls never wait: they raise BlockingIOError when nothing can be done now."""
    return sock._sock if type(sock) is GeventSocket else None  # type: ignore[attr-defined]


def read_waiter(sock: Conn) -> Optional[Callable[[], None]]:
    """A function that blocks (cooperatively) until ``sock`` is readable, for a gevent socket
    (TLS ones too); None for any other socket-like object (whose recv waits by itself)."""
    wait, event = getattr(sock, "_wait", None), getattr(sock, "_read_event", None)
    if wait is None or event is None:
        return None
    return partial(wait, event)


def send_all(sock: Conn, data: Data, timeout: Optional[float] = None) -> None:
    """Send all of ``data``. Blocks cooperatively; raises OSError like ``sendall``.

    gevent's ``sendall`` asks the kernel for SO_SNDBUF on every call (a syscall, costly under
    gVisor and visible at tens of thousands of requests a second); one ``send`` usually takes a
    small message whole, and only the rest, if any, goes through ``sendall``. A plain gevent
    socket is sent on with the kernel socket's ``send`` (non-blocking), one Python layer less.

    ``timeout``: each wait for room in the peer's window ends with socket.timeout after this
    many seconds (nginx's send_timeout: a client that stops reading is given up), whatever the
    socket's own timeout; None leaves the waits to it. A timer only when the first send leaves
    a rest."""
    try:
        sent = sock._sock.send(data) if type(sock) is GeventSocket else sock.send(data)  # type: ignore[attr-defined]
    except BlockingIOError:
        sent = 0
    if sent >= len(data):
        return
    rest = memoryview(data)[sent:]
    if timeout is None:
        sock.sendall(rest)
        return
    while rest:
        with gevent.Timeout(timeout, socket.timeout(f"the peer took no bytes for {timeout:g}s")):
            rest = rest[sock.send(rest):]


def nonblocking_sender(sock: Conn) -> Optional[Callable[[Data], int]]:
    """A function that sends what it can of its argument now and never waits (it may run in
    the hub), returning how many bytes went: a plain gevent socket's kernel ``send`` (0 when
    the buffer is full), or a gevent TLS socket's SSL object ``write``, which takes all or
    nothing here (0 on want-write, and then the same bytes must be written again first, as
    OpenSSL requires); None for any other socket-like object. Raises OSError (SSLError) when
    the connection failed."""
    if type(sock) is GeventSocket:
        send = sock._sock.send  # type: ignore[attr-defined]

        def plain(data: Data) -> int:
            try:
                return int(send(data))
            except BlockingIOError:
                return 0
        return plain
    sslobj = getattr(sock, "_sslobj", None)
    if isinstance(sock, GeventSSLSocket) and sslobj is not None:
        write = sslobj.write

        def tls(data: Data) -> int:
            try:
                return int(write(data))
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return 0
        return tls
    return None


class GeventChanged(RuntimeError):
    pass


def check() -> None:
    """Raise GeventChanged if the installed gevent's sockets lack what this module uses.
    Called once when a process starts, so that a gevent upgrade fails loudly at start instead
    of at the first connection."""
    a, b = socket.socketpair()
    try:
        sock = GeventSocket(fileno=a.detach())
        missing = [name for name in ("_sock", "_wait", "_read_event") if not hasattr(sock, name)]
        if not missing and not isinstance(sock._sock, _socket.socket):
            missing.append("_sock (not a socket)")
        sock.close()
    finally:
        b.close()
    if missing:
        raise GeventChanged(f"gevent {gevent.__version__} lacks {', '.join(missing)} on its sockets: wmproxy is "
                            f"tested with gevent{GEVENT_TESTED}; install one of those "
                            f"(pip install 'gevent{GEVENT_TESTED}')")
