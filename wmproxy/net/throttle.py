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
from typing import Any, Optional, Sequence

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
    """A connection whose receives and sends are each held to ``rate`` bytes a second (0: no
    rate of its own) and within what the ``shared`` buckets allow (pairs: what it receives,
    what it sends; an account's, a mapping's). Any other attribute is the wrapped connection's."""

    __slots__ = ("conn", "up", "down", "up_burst", "down_burst")

    def __init__(self, conn: Any, rate: float = 0, shared: Sequence[tuple[Bucket, Bucket]] = ()) -> None:
        self.conn = conn
        own = [(Bucket(rate), Bucket(rate))] if rate else []
        self.up = [received for received, _ in [*own, *shared]]  # what is received from the peer
        self.down = [sent for _, sent in [*own, *shared]]  # what is sent to it
        if not self.up:
            raise ValueError("a throttle needs a rate or a shared bucket")
        self.up_burst = min(b.burst for b in self.up)
        self.down_burst = min(b.burst for b in self.down)

    def recv(self, n: int) -> bytes:
        data: bytes = self.conn.recv(min(n, self.up_burst))
        _pay(self.up, len(data))
        return data

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        view = memoryview(buf)
        n: int = self.conn.recv_into(view[:min(nbytes or len(view), self.up_burst)])
        _pay(self.up, n)
        return n

    def send(self, data: Data) -> int:
        sent: int = self.conn.send(memoryview(data)[:self.down_burst])
        _pay(self.down, sent)
        return sent

    def sendall(self, data: Data) -> None:
        view = memoryview(data)
        for start in range(0, len(view), self.down_burst):
            piece = view[start:start + self.down_burst]
            self.conn.sendall(piece)
            _pay(self.down, len(piece))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def _pay(buckets: list[Bucket], n: int) -> None:
    """Pay ``n`` bytes to each bucket, then sleep as long as the emptiest says."""
    now = time.monotonic()
    wait = max(b.spend(n, now) for b in buckets)
    if wait > 0:
        gevent.sleep(wait)


class Quota:
    """The connections and bandwidth a group of connections share: an account's or one of its
    mappings' ([[center.users]] max_connections, bandwidth and their mapping_ twins), a forward
    proxy user's ([[proxy.users]]): a count, and a token bucket each way (what comes from the
    clients, what goes to them)."""

    __slots__ = ("label", "max_connections", "rate", "buckets", "connections")

    def __init__(self, label: str) -> None:
        self.label = label
        self.connections = 0
        self.max_connections = 0
        self.rate = 0.0
        self.buckets: Optional[tuple[Bucket, Bucket]] = None

    def set(self, max_connections: int, rate: float) -> None:
        """Its limits as configured now (connections counted and credit saved stay)."""
        self.max_connections = max_connections
        if rate != self.rate:
            self.rate = rate
            self.buckets = (Bucket(rate), Bucket(rate)) if rate else None

    def enter(self) -> bool:
        if self.max_connections and self.connections >= self.max_connections:
            return False
        self.connections += 1
        return True

    def leave(self) -> None:
        self.connections -= 1

    @property
    def full_text(self) -> str:
        return f"{self.label} has {self.connections} connections open (max_connections)"


def enter_all(quotas: list[Quota]) -> Optional[Quota]:
    """Count a connection in each of ``quotas``; the one that refused it (none counted), or None."""
    for i, q in enumerate(quotas):
        if not q.enter():
            for taken in quotas[:i]:
                taken.leave()
            return q
    return None
