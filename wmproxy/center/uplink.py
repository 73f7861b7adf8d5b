"""One center server of a center client: its link, dialled again with exponential backoff and
jitter (1 s doubling to 30 s) whenever it drops, one log line per attempt. A client keeps one
ServerLink per server in its config: all of them linked at once (``servers_mode = "all"``), or
one at a time in order (``"failover"``, driven by the client)."""

from __future__ import annotations

import logging
import random
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import gevent

from ..config import Addr
from ..errors import ProtocolError, UpstreamError
from ..net.dial import dial
from ..net.reader import PeerClosed, Reader
from ..prot import frame as fr
from ..prot.frame import Flag, Kind
from . import handshake
from .trust import PinMismatch
from .link import CenterLink

if TYPE_CHECKING:
    from .client import CenterClient

log = logging.getLogger("wmproxy.center")

HANDSHAKE_TIMEOUT = 10.0
FIRST_DELAY, MAX_DELAY = 1.0, 30.0
STABLE_AFTER = 10.0  # a link that lived this long resets the backoff


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` short-lived attempts in a row (jittered)."""
    delay = min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, failures - 1)) * random.uniform(0.75, 1.0)
    return max(FIRST_DELAY * 0.75, delay)


class ServerLink:
    """The link to one center server (``addr``, its certificate name ``server_name``)."""

    def __init__(self, client: "CenterClient", addr: Addr, server_name: str, label: str) -> None:
        self.client = client
        self.addr = addr
        self.server_name = server_name
        self.label = label  # "to host:port" in log lines
        self.link: Optional[CenterLink] = None
        self.attempts = 0
        self.last_error = ""
        self.reads_groups = False  # its HELLO said ID: MAPPING carries each mapping's group
        self.answers: dict[str, fr.MappingAnswer] = {}
        self._greenlet: Optional[gevent.Greenlet] = None
        # with cert = "auto": present it in TLS (once the server pinned it; before, it is offered on TOKEN)
        self.present = False

    @property
    def up(self) -> Optional[CenterLink]:
        link = self.link
        return link if link is not None and not link.closed else None

    def start(self) -> None:
        """Keep linked to this server, forever (``servers_mode = "all"``)."""
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        if self.link is not None:
            self.link.close("center client stopped")

    def _run(self) -> None:
        failures = 0
        while True:
            stable = self.attempt()
            if self.last_error == "enrolled":
                continue  # (at once: the same server, now presenting the certificate it pinned)
            failures = 0 if stable else failures + 1
            delay = backoff(failures)
            log.warning("center link %s: attempt %d: %s; next attempt in %.1fs", self.label, self.attempts,
                        self.last_error, delay)
            gevent.sleep(delay)

    def attempt(self) -> bool:
        """Link, serve until the link ends, and say why in ``last_error``. Returns whether the
        link lived STABLE_AFTER seconds (the backoff starts again). Blocks; never raises for
        what the server or the network does."""
        self.attempts += 1
        started = time.monotonic()
        try:
            self._connect_and_serve()
        except handshake.Enrolled:
            self.present = True  # (this install's certificate is pinned there: link again, presenting it)
            self.last_error = "enrolled"
            log.info("center link %s: the server pinned this client's certificate; linking again with it", self.label)
            return True
        except handshake.AuthFailed as e:
            self.last_error = f"refused by the server: {e}"
        except ssl.SSLError as e:
            self.present = False  # (a server that no longer knows our certificate: enroll again)
            self.last_error = str(e) or type(e).__name__
        except (UpstreamError, OSError, ProtocolError, PeerClosed, PinMismatch) as e:
            self.last_error = str(e) or type(e).__name__
        else:
            self.last_error = "link lost"
        self.link = None
        return time.monotonic() - started > STABLE_AFTER

    def _connect_and_serve(self) -> None:
        client, cfg = self.client, self.client.cfg
        sock = dial(client.services.resolver, self.addr.host, self.addr.port, HANDSHAKE_TIMEOUT)
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            trust = client.trust
            if trust is not None:
                sock = trust.wrap(sock, self.server_name or self.addr.host, str(self.addr), self.present)
            reader = Reader(sock)
            enroll = trust.der if trust is not None and not self.present else None
            answers, peer_aware, ids = handshake.client_side(sock, reader, cfg.username, cfg.password,
                                                             client.specs(), client.client_id, enroll)
        except BaseException:
            sock.close()
            raise
        # (no max_streams here: the streams a server opens carry the public connections to our mappings,
        # which the server bounds: a bound here would let the public deny every mapping by filling it)
        link = CenterLink(sock, reader, is_client=True, window=cfg.window, max_window=cfg.max_window,
                          max_streams=0, max_frame=cfg.max_frame, heartbeat=cfg.heartbeat,
                          on_create=client.serve_stream, name=self.label, on_mapping_answer=self.answered)
        link.peer_aware = peer_aware
        self.reads_groups = ids
        self.link = link
        log.info("center link %s is up (attempt %d)", self.label, self.attempts)
        self.answered(answers)
        self.last_error = ""
        reason = link.run()
        self.link = None
        log.warning("center link %s lost: %s", self.label, reason)

    def answered(self, answers: list[fr.MappingAnswer]) -> None:
        """The server's answer to our mappings (at the handshake, or to a later MAPPING)."""
        mine = self.client.mappings
        answers = [a for a in answers if a.name in mine]  # (a server's answer for a mapping we never sent: none)
        self.answers = {a.name: a for a in answers}
        where_server = f" ({self.label})" if len(self.client.servers) > 1 else ""
        for a in answers:
            if a.accepted:
                m = mine[a.name]
                where = str(m.remote_bind) if m.remote_bind else f"Host {m.domain}" if m.domain \
                    else f"its map_{m.mode}_bind"
                log.info("mapping %r published by the server on %s%s", a.name, where, where_server)
            else:
                log.warning("mapping %r refused by the server%s: %s", a.name, where_server, a.reason)

    def send_mappings(self, specs: Callable[[], list[fr.MappingSpec]]) -> None:
        """Our mappings again, over the live link (none: with the next handshake)."""
        link = self.up
        if link is not None:
            groups = self.reads_groups
            link.send_frame(Kind.MAPPING, Flag.ID if groups else 0, 0, fr.encode_mappings(specs(), groups),
                            quiet=True)

    def status(self) -> dict[str, Any]:
        link = self.up
        return {"role": "client", "server": str(self.addr), "state": "up" if link else "down",
                "since": link.started_at if link else None, "streams": link.stream_count if link else 0,
                "rtt": link.rtt if link else None, "attempts": self.attempts, "last_error": self.last_error,
                "bytes_in": link.bytes_in if link else 0, "bytes_out": link.bytes_out if link else 0}
