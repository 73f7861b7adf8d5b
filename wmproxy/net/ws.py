"""A websocket connection used like a TCP socket (wsproto does the framing).

:class:`WsSocket` has the socket methods the relay uses (recv, send, sendall, shutdown, close,
settimeout): bytes sent go out as binary messages, the payloads of received messages (binary
or text) come back as a byte stream. Pings are answered; a close frame from the peer reads as
EOF (after the close is answered), and ``shutdown(SHUT_WR)`` sends one. So ``[stream]``'s
``ws2tcp`` (websocket clients -> a TCP service) and ``tcp2ws``/``tcp2wss`` (TCP clients -> a
websocket service) are the ordinary relay between a socket and a WsSocket.
"""

from __future__ import annotations

import socket
from typing import Any, Optional, Union

from gevent.lock import Semaphore
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Ping, RejectConnection, Request
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..errors import ProtocolError, UpstreamError
from .conn import Address, Conn, Data
from .reader import PeerClosed

RECV = 65536
MAX_HANDSHAKE = 65536


class WsSocket:
    def __init__(self, sock: Conn, ws: WSConnection) -> None:
        self.sock = sock
        self.ws = ws
        self.inbox = bytearray()
        self.eof = False
        self._write = Semaphore()  # two pumps may send (data, a pong): frames must not interleave

    def settimeout(self, timeout: Optional[float]) -> None:
        self.sock.settimeout(timeout)

    def gettimeout(self) -> Optional[float]:
        return self.sock.gettimeout()

    def setsockopt(self, level: int, option: int, value: Union[int, bytes]) -> None:
        self.sock.setsockopt(level, option, value)

    def getsockname(self) -> Address:
        return self.sock.getsockname()

    def getpeername(self) -> Address:
        return self.sock.getpeername()

    def _send(self, data: bytes) -> None:
        if data:
            with self._write:
                self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        while not self.inbox and not self.eof:
            data = self.sock.recv(RECV)
            try:
                self.ws.receive_data(data or None)
                events = list(self.ws.events())
            except RemoteProtocolError as e:
                raise ConnectionResetError(f"websocket protocol error: {e}") from None
            if not data:
                self.eof = True
            for event in events:
                if isinstance(event, Message):
                    self.inbox += event.data if isinstance(event.data, bytes) else event.data.encode()
                elif isinstance(event, Ping):
                    self._send(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self.ws.state == ConnectionState.REMOTE_CLOSING:
                        self._send(self.ws.send(event.response()))
                    self.eof = True
        out = bytes(self.inbox[:n])
        del self.inbox[:n]
        return out

    def sendall(self, data: Data) -> None:
        if self.ws.state != ConnectionState.OPEN:
            raise BrokenPipeError("the websocket is closing")
        self._send(self.ws.send(BytesMessage(data=bytes(data))))

    def send(self, data: Data) -> int:
        self.sendall(data)
        return len(data)

    def shutdown(self, how: int) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and self.ws.state == ConnectionState.OPEN:
            try:
                self._send(self.ws.send(CloseConnection(code=1000)))
            except LocalProtocolError:
                pass

    def close(self) -> None:
        self.sock.close()


def _events_until(sock: Conn, ws: WSConnection, wanted: tuple[type, ...]) -> Any:
    """Feed ``ws`` from ``sock`` until one of ``wanted`` events (the handshake's)."""
    seen = 0
    while True:
        for event in ws.events():
            if isinstance(event, wanted):
                return event
        data = sock.recv(RECV)
        if not data:
            raise PeerClosed("closed during the websocket handshake")
        seen += len(data)
        if seen > MAX_HANDSHAKE:
            raise ProtocolError("websocket handshake longer than 64 KiB")
        try:
            ws.receive_data(data)
        except RemoteProtocolError as e:
            raise ProtocolError(f"not a websocket handshake: {e}") from None
        except UnicodeError:  # (wsproto decodes some header values as ASCII without a check)
            raise ProtocolError("not a websocket handshake: a header value is not ASCII") from None


def accept(sock: Conn) -> WsSocket:
    """Server side: read the client's upgrade request and accept it. Raises ProtocolError
    (after answering 400) for anything else, PeerClosed, OSError."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        _events_until(sock, ws, (Request,))
    except ProtocolError:
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n"
                     b"Connection: close\r\n\r\nwmproxy: expected a websocket\r\n\r\n")
        raise
    sock.sendall(ws.send(AcceptConnection()))
    return WsSocket(sock, ws)


def connect(sock: Conn, host: str, path: str) -> WsSocket:
    """Client side: ask ``host``/``path`` to upgrade. Raises UpstreamError when refused."""
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=host, target=path)))
    try:
        event = _events_until(sock, ws, (AcceptConnection, RejectConnection))
    except (ProtocolError, PeerClosed) as e:
        raise UpstreamError(f"websocket handshake with {host}: {e}") from None
    if isinstance(event, RejectConnection):
        raise UpstreamError(f"websocket {host}{path} refused the upgrade: status {event.status_code}")
    return WsSocket(sock, ws)

