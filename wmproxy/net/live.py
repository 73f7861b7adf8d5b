"""The live connections of the TCP listeners, as ``GET /api/connections`` lists them and
``DELETE /api/connections/{id}`` cuts them.

A listener opens a :class:`LiveConn` for each connection it serves (:meth:`LiveTable.open`)
and keeps it while the connection lives, also once a callback relay goes on without the
handler (adopted connections). The handler's greenlet is the key to the connection it
serves: :func:`current` gives the handler's record, so the code that knows a connection's
target (the forward proxy, ``[stream]``, ``[http]``) notes it there, and :func:`relay`
(net.relay) attaches its byte counters, read live while the relay runs.

The cost per connection is one small object (about 100 bytes: nothing is formatted unless it is
listed) and two dict entries, one of them only while its handler runs.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any, Callable, Optional

import gevent

from .conn import Address

#: the greenlet serving a connection -> its record (while the handler runs)
RUNNING: dict[Any, "LiveConn"] = {}
_ids = itertools.count(1)
_NUMBER = re.compile(r"[0-9]{1,18}")  # an id's number (ASCII digits: str.isdigit takes '²' too)
_prefix = [""]  # a worker's number and "-": ids are unique over a master's workers


def set_worker(worker: int) -> None:
    """This process is worker ``worker``: its connection ids start with ``worker-``."""
    _prefix[0] = f"{worker}-"


class LiveConn:
    """One live connection: who, to what, since when, bytes so far, and how to cut it."""

    __slots__ = ("id", "ip", "port", "started", "target", "bytes_in", "bytes_out", "relay", "info", "greenlet", "stop",
                 "owner")

    def __init__(self, address: Address) -> None:
        self.id = next(_ids)
        # (the accepted address's own objects, formatted only when listed)
        self.ip, self.port = (address[0], address[1]) if isinstance(address, tuple) else (str(address), -1)  # (unix)
        self.started = time.time()
        # what it goes to, as its handler says (host:port, an upstream), or a function that says it
        # when asked (a request in progress: nothing formatted per request unless listed)
        self.target: str | Callable[[], str] = ""
        self.bytes_in = 0  # from the client, counted so far by its handler (requests done)
        self.bytes_out = 0  # to the client
        self.relay: Any = None  # a running relay's RelayStats: its counts add to the above
        self.info: Any = None  # the forward proxy's ConnInfo: its target and counts are the connection's
        self.greenlet: Any = gevent.getcurrent()
        self.stop: Optional[Callable[[], None]] = None  # an adopted connection's: ends its relay
        self.owner: Any = None  # an adopted connection's listener (release_conn)

    @property
    def peer(self) -> str:
        ip, port = self.ip, self.port
        return ip if port < 0 else f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

    def __call__(self) -> None:
        """Its relay ended (an adopted connection): its owner releases its slot."""
        if self.owner is not None:
            self.owner.release_conn(self)

    def bytes(self) -> tuple[int, int]:
        b_in, b_out = self.bytes_in, self.bytes_out
        if self.info is not None:
            b_in, b_out = b_in + self.info.up, b_out + self.info.down
        if self.relay is not None:
            b_in, b_out = b_in + self.relay.moved[0], b_out + self.relay.moved[1]
        return b_in, b_out

    def row(self, listener: str, now: float) -> dict[str, Any]:
        b_in, b_out = self.bytes()
        target = self.target() if callable(self.target) else self.target
        if not target and self.info is not None:
            target = self.info.target if self.info.target != "-" else ""
        return {"id": f"{_prefix[0]}{self.id}", "listener": listener, "peer": self.peer, "target": target or None,
                "age_seconds": round(now - self.started, 3), "bytes_in": b_in, "bytes_out": b_out}

    def cut(self) -> None:
        """End it now (its sockets closed; the handler's cleanup and log line run as usual)."""
        if self.stop is not None:
            self.stop()
        elif self.greenlet is not None and not self.greenlet.dead:
            self.greenlet.kill(block=False)


def current() -> Optional[LiveConn]:
    """The record of the connection the calling greenlet serves, or None."""
    return RUNNING.get(gevent.getcurrent())


class LiveTable:
    """One listener's live connections."""

    def __init__(self) -> None:
        self.conns: dict[int, LiveConn] = {}

    def open(self, address: Address) -> LiveConn:
        """A connection begins, served by the calling greenlet."""
        conn = LiveConn(address)
        self.conns[conn.id] = conn
        RUNNING[conn.greenlet] = conn
        return conn

    def handler_done(self, conn: LiveConn) -> None:
        """Its handler returned: the connection ended, unless it was adopted (then :meth:`close`
        once its relay ends)."""
        RUNNING.pop(conn.greenlet, None)
        conn.greenlet = None
        if conn.stop is None:
            self.conns.pop(conn.id, None)

    def adopted(self, stop: Callable[[], None], owner: Any) -> LiveConn:
        """The calling handler's connection lives on without it (``stop`` ends it; calling the
        record has ``owner.release_conn(record)`` free its slot). A record made now if the
        caller is no handler of ours (its ``ip`` then '': no address to count)."""
        conn = RUNNING.pop(gevent.getcurrent(), None)
        if conn is None:
            conn = LiveConn(("", -1))
        else:
            conn.greenlet = None
        conn.stop, conn.owner = stop, owner
        return conn

    def close(self, conn: LiveConn) -> None:
        self.conns.pop(conn.id, None)

    def find(self, conn_id: str) -> Optional[LiveConn]:
        """The connection of that id (as :meth:`rows` gives it), if it is still open."""
        number = conn_id[len(_prefix[0]):] if conn_id.startswith(_prefix[0]) else ""
        return self.conns.get(int(number)) if _NUMBER.fullmatch(number) else None

    def rows(self, listener: str) -> list[dict[str, Any]]:
        now = time.time()
        return [c.row(listener, now) for c in list(self.conns.values())]


def top(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The ``limit`` rows that moved the most bytes (both ways), the most first."""
    rows.sort(key=lambda r: r["bytes_in"] + r["bytes_out"], reverse=True)
    return rows[:limit]
