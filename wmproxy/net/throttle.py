"""Bandwidth limits (``rate_limit = "4m/s"``, the Rust wmproxy's): a token bucket per direction.

A :class:`Bucket` holds up to ``burst`` bytes of credit and refills at ``rate`` bytes a second.
Bytes are sent first and paid after: the credit may go below zero, and the sender then sleeps
until it is back at zero, so over any stretch longer than a burst the bytes moved stay within
``rate`` x time + ``burst``, however the peer sizes its writes. Reads and writes are cut to at
most one burst, so a single call never runs far ahead of the rate.

:class:`Throttled` wraps a connection: what it receives is paid from one bucket, what it sends
from another. ``relay(..., rate=)`` (net.relay) throttles its pumps the same way.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import gevent

from .conn import Data

MIN_BURST = 4096
MAX_BURST = 65536


class Bucket:
    """Credit for ``rate`` bytes a second, at most ``burst`` saved up (default: a tenth of a
    second's worth, from 4 KiB to 64 KiB)."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: Optional[int] = None) -> None:
        if rate <= 0:
            raise ValueError("a rate is more than 0 bytes a second")
        self.rate = float(rate)
        self.burst = burst or max(MIN_BURST, min(MAX_BURST, int(rate / 10)))
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    def spend(self, n: int, now: Optional[float] = None) -> float:
        """Pay for ``n`` bytes moved; the seconds to wait before moving more (0: none)."""
        now = time.monotonic() if now is None else now
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def pay(self, n: int) -> None:
        """:meth:`spend`, then sleep (cooperatively) as long as it says."""
        wait = self.spend(n)
        if wait > 0:
            gevent.sleep(wait)


class Throttled:
    """A connection whose receives and sends are each held to ``rate`` bytes a second. Any
    other attribute is the wrapped connection's."""

    __slots__ = ("conn", "down", "up")

    def __init__(self, conn: Any, rate: float) -> None:
        self.conn = conn
        self.up = Bucket(rate)  # what is received from the peer
        self.down = Bucket(rate)  # what is sent to it

    def recv(self, n: int) -> bytes:
        data: bytes = self.conn.recv(min(n, self.up.burst))
        self.up.pay(len(data))
        return data

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        view = memoryview(buf)
        n: int = self.conn.recv_into(view[:min(nbytes or len(view), self.up.burst)])
        self.up.pay(n)
        return n

    def send(self, data: Data) -> int:
        sent: int = self.conn.send(memoryview(data)[:self.down.burst])
        self.down.pay(sent)
        return sent

    def sendall(self, data: Data) -> None:
        view = memoryview(data)
        for start in range(0, len(view), self.down.burst):
            piece = view[start:start + self.down.burst]
            self.conn.sendall(piece)
            self.down.pay(len(piece))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)
