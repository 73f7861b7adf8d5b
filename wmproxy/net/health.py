"""What every active health check shares ([http] and [stream] upstreams, a center client's
mappings): one probe of a server (a TCP connect, or an HTTP GET and its status line), and the
streak that turns probes into a state (``fall`` failures in a row take a server out, ``rise``
successes bring it back)."""

from __future__ import annotations

import time
from typing import Any, Optional

import gevent

from ..errors import ProtocolError, UpstreamError
from .dial import dial
from .dns import Resolver
from .reader import PeerClosed, Reader

MAX_STATUS_LINE = 4096


def probe(resolver: Resolver, host: str, port: int, timeout: float, request: bytes = b"") -> tuple[Optional[int], str]:
    """Connect to ``host:port``; with ``request`` (an HTTP request, and whatever must precede
    it), send it and read the answer's status line. Returns (status, "") for an HTTP answer, (0,
    "") for a bare connect, (None, why) for a failure. Whole within ``timeout``; never raises
    for what the server does; reads at most one line of MAX_STATUS_LINE bytes."""
    try:
        with gevent.Timeout(timeout, UpstreamError(f"no answer within {timeout:g}s")):
            sock = dial(resolver, host, port, timeout)
            try:
                if not request:
                    return 0, ""
                sock.sendall(request)
                line = Reader(sock).read_until(b"\r\n", MAX_STATUS_LINE)
            finally:
                sock.close()
    except (UpstreamError, OSError, PeerClosed, ProtocolError, EOFError) as e:
        return None, str(e) or type(e).__name__
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None, f"answered {line.strip()[:60]!r}, not HTTP"
    return int(parts[1]), ""


def get_request(path: str, host: str) -> bytes:
    """The GET a health check sends (its own connection, closed after the answer)."""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wmproxy-health-check\r\n"
            f"Connection: close\r\n\r\n").encode()


NEVER_CHECKED: dict[str, Any] = {"last_check": None, "last_check_ok": None}  # (Streak.last_check without probes)


class Streak:
    """A server's state from its probes: up until ``fall`` failures in a row, then down until
    ``rise`` successes in a row."""

    __slots__ = ("fall", "rise", "up", "count", "checked_at", "last_ok")

    def __init__(self, fall: int, rise: int) -> None:
        self.fall = fall
        self.rise = rise
        self.up = True
        self.count = 0  # probes in a row that said the opposite of ``up``
        self.checked_at: Optional[float] = None  # the last probe's time (epoch seconds)
        self.last_ok: Optional[bool] = None  # and its result

    def last_check(self) -> dict[str, Any]:
        """For /api/upstreams: when the last probe was, and whether it passed."""
        return {"last_check": self.checked_at, "last_check_ok": self.last_ok}

    def saw(self, ok: bool) -> bool:
        """One probe's result; True when it changed ``up``."""
        self.checked_at, self.last_ok = time.time(), ok
        if ok == self.up:
            self.count = 0
            return False
        self.count += 1
        if self.count < (self.fall if self.up else self.rise):
            return False
        self.up, self.count = ok, 0
        return True
