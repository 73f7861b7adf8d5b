"""One UDP socket shared by many peers, one session per peer address.

The base of the ``[stream]`` UDP forwarder and of the center server's public ports of udp
mappings: each peer address gets a session (its own upstream socket, or its own stream on a
center link) and the session's answers go back to that peer only, so peers never get each
other's datagrams. A session ends after ``timeout`` without a datagram either way;
``max_sessions`` caps them (beyond it the least recently active one is dropped, and that is
logged). Datagrams keep their boundaries, up to 65,535 bytes.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import OrderedDict
from typing import Optional

import gevent
from gevent.server import DatagramServer

from ..listener import ConnStats
from .dial import fmt_addr

log = logging.getLogger("wmproxy.udp")

MAX_DATAGRAM = 65535


class UdpSession:
    """One peer's session. Subclasses send the peer's datagrams on with :meth:`send` and
    hand the answers to :meth:`UdpSessions.answer`; :meth:`close` ends it."""

    __slots__ = ("peer", "last", "greenlet")

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.last = time.monotonic()
        self.greenlet: gevent.Greenlet | None = None

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)


class UdpSessions(DatagramServer):  # type: ignore[misc]  # (gevent publishes no types)
    """Subclasses set ``label``, ``timeout`` and ``max_sessions`` and implement
    :meth:`open_session` (a UdpSession for a new peer, or None to drop its datagram)."""

    label = "udp"
    timeout = 60.0
    max_sessions = 10000

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.stats = ConnStats()
        # peer address -> session, least recently active first
        self.sessions: OrderedDict[tuple[str, int], UdpSession] = OrderedDict()
        self._reaper = gevent.spawn(self._expire)

    def open_session(self, peer: tuple[str, int]) -> UdpSession | None:
        raise NotImplementedError

    def do_read(self) -> Optional[tuple[bytes, tuple[str, int]]]:
        """gevent reads 8,192 bytes at most: take whole datagrams (up to 65,535)."""
        try:
            got: tuple[bytes, tuple[str, int]] = self._socket.recvfrom(MAX_DATAGRAM)
            return got
        except BlockingIOError:
            return None

    def handle(self, data: bytes, peer: tuple[str, int]) -> None:
        session = self.sessions.get(peer)
        if session is None:
            if len(self.sessions) >= self.max_sessions:
                self._evict_oldest()
            session = self.open_session(peer)
            if session is None:
                return
            self.sessions[peer] = session
            self.stats.active = len(self.sessions)
            self.stats.total += 1
        else:
            self.sessions.move_to_end(peer)
        session.last = time.monotonic()
        self.stats.bytes_in += len(data)
        session.send(data)

    def answer(self, session: UdpSession, data: bytes) -> None:
        """A datagram for ``session``'s peer, from the shared socket."""
        try:
            self.socket.sendto(data, session.peer)
        except OSError as e:
            log.debug("%s: answer to %s dropped: %s", self.label, fmt_addr(*session.peer[:2]), e)
            return
        session.last = time.monotonic()
        self.stats.bytes_out += len(data)

    def end(self, session: UdpSession, why: str) -> None:
        """Forget and close a session (its upstream is gone, say)."""
        if self.sessions.get(session.peer) is session:
            del self.sessions[session.peer]
            self.stats.active = len(self.sessions)
        session.close()
        log.info("%s %s: session ended: %s", fmt_addr(*session.peer[:2]), self.label, why)

    def _evict_oldest(self) -> None:
        peer, oldest = self.sessions.popitem(last=False)
        oldest.close()
        log.warning("%s: max_sessions %d reached, dropped the session of %s (idle %.1fs)", self.label,
                    self.max_sessions, fmt_addr(*peer[:2]), time.monotonic() - oldest.last)

    def _expire(self) -> None:
        while True:
            gevent.sleep(max(0.05, min(1.0, self.timeout / 4)))
            now = time.monotonic()
            for peer, session in list(self.sessions.items()):
                if now - session.last >= self.timeout:
                    del self.sessions[peer]
                    session.close()
                    log.info("%s %s: session expired", fmt_addr(*peer[:2]), self.label)
            self.stats.active = len(self.sessions)

    def close_sessions(self) -> int:
        """Stop serving: the socket, every session and the reaper. Returns how many were live."""
        if not self.closed:
            self.close()
        left = len(self.sessions)
        for session in list(self.sessions.values()):
            session.close()
        self.sessions.clear()
        self.stats.active = 0
        self._reaper.kill(block=False)
        return left
