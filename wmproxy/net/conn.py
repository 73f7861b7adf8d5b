"""The seams every handler, reader and relay is written against.

:class:`Conn` is what they may call on a connection: a gevent socket, a TLS socket and a
center link stream (center.vconn.VirtualConn) all are one. :class:`StreamSink` is what a link
stream in push mode hands its events to (net.bridge.StreamSocketRelay).
"""

from __future__ import annotations

from typing import Optional, Protocol, Union

Data = Union[bytes, bytearray, memoryview]


class Conn(Protocol):
    def recv(self, n: int) -> bytes: ...

    def send(self, data: Data) -> int: ...

    def sendall(self, data: Data) -> None: ...

    def settimeout(self, timeout: Optional[float]) -> None: ...

    def gettimeout(self) -> Optional[float]: ...

    def shutdown(self, how: int) -> None: ...

    def close(self) -> None: ...

    def setsockopt(self, level: int, option: int, value: Union[int, bytes]) -> None: ...


class StreamSink(Protocol):
    def data(self, body: bytes) -> None: ...

    def fin(self) -> None: ...

    def reset(self, reason: str) -> None: ...

    def credit(self) -> None: ...
