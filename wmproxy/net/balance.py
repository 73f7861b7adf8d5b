"""Picking a server: smooth weighted round robin (nginx's) and a hash of the client address.

Shared by ``[stream]`` (TCP and UDP) and the ``[http]`` upstreams. Never blocks, so a pick is
never interleaved with another greenlet's.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable, Sequence


class WeightedRoundRobin:
    """Smooth weighted round robin over ``servers`` (anything with a ``weight``): with weights
    5,1,1 the order is a a b a c a a, spread out rather than bunched."""

    def __init__(self, servers: Iterable[Any]) -> None:
        self.servers = tuple(servers)
        self.current = [0] * len(self.servers)

    def pick(self, among: Sequence[int] | None = None) -> int:
        """The index of the next server, among the indexes ``among`` (default: all)."""
        indexes: Sequence[int] = range(len(self.servers)) if among is None else among
        best, total = indexes[0], 0
        for i in indexes:
            weight = self.servers[i].weight
            self.current[i] += weight
            total += weight
            if self.current[i] > self.current[best]:
                best = i
        self.current[best] -= total
        return best

    def order(self) -> list[Any]:
        """The server to try first, then the others in their configured order."""
        first = self.pick()
        return [self.servers[first], *(s for i, s in enumerate(self.servers) if i != first)]


def hash_index(client_ip: str, n: int) -> int:
    """The same index in range(n) for the same client address (ip_hash)."""
    return zlib.crc32(client_ip.encode()) % n
