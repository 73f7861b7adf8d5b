"""Keep a certificate for every name that wants one: obtain, renew, back off, report.

One manager per process tree (the process that runs alone, or worker 0), one greenlet. The
names come from the configuration (``[[http.server]] acme = true``: its server_name) and, with
``[center] map_acme``, from the https mappings whose clients are linked. Each name gets its
own certificate, so a name the directory refuses costs only itself.

Schedule of a name:

- no certificate yet: now (orders one at a time; at most ORDERS_PER_HOUR orders an hour);
- a certificate: a third of its lifetime before it expires (90 days: 30 days before);
- after a failure: BACKOFF doubling from 5 minutes up to a day; the old certificate keeps
  serving meanwhile. A refusal (a wildcard, a rejected identifier, CAA, no such challenge)
  waits REFUSED_WAIT; a reload tries failed names again at once (the operator fixed something).

Failures and their next attempt are kept in acme_dir (a restart does not hammer the directory).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import gevent
from gevent.event import Event
from cryptography import x509

from ..net.certstore import CertStore, safe_name
from .types import AcmeFailure, Directory

log = logging.getLogger("wmproxy.acme")

BACKOFF_FIRST = 300.0  # seconds after a first failure (Let's Encrypt: 5 failed validations a name an hour)
BACKOFF_MAX = 86400.0
REFUSED_WAIT = 86400.0  # a refusal: a day, or until the next reload
ORDERS_PER_HOUR = 30  # all names together (Let's Encrypt allows 300 new orders in 3 hours)
TICK = 2.0  # seconds between two looks at the names wanted (mappings come and go)


@dataclass(frozen=True)
class AcmeSettings:
    """What the manager works from (compared on reload)."""

    directory: Directory
    acme_dir: str
    challenge: str  # "http-01" or "tls-alpn-01"
    names: tuple  # ((name, source), ...) from the configuration
    mappings: bool  # [center] map_acme: the https mappings' domains too
    mapping_domains: tuple = ()  # [center] map_acme_domains: the mappings' domains allowed ('': any)


@dataclass
class Entry:
    """One name's certificate and how obtaining it goes."""

    name: str
    source: str
    state: str = "pending"  # pending, obtaining, valid, failed, refused
    issuer: str = ""
    not_before: float = 0.0
    not_after: float = 0.0
    failures: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    refused: bool = False
    obtained_at: float = 0.0

    @property
    def renew_at(self) -> float:
        """A third of the lifetime before expiry (0: no certificate)."""
        if not self.not_after:
            return 0.0
        return self.not_after - (self.not_after - self.not_before) / 3.0

    def due(self) -> float:
        if self.failures or self.refused:
            return self.next_attempt
        return self.renew_at

    def row(self) -> dict[str, Any]:
        now = time.time()
        return {"name": self.name, "source": self.source, "state": self.state, "issuer": self.issuer,
                "not_before": self.not_before or None, "not_after": self.not_after or None,
                "expires_in_seconds": round(self.not_after - now) if self.not_after else None,
                "next_renewal": self.renew_at or None, "failures": self.failures,
                "next_attempt": self.next_attempt if (self.failures or self.refused) and self.next_attempt != float("inf")
                else None,  # (None for a refused name: never, as the state says)
                "last_error": self.last_error}


class AcmeManager:
    """Obtains and renews; ``status()`` for /status. Start once, ``update`` on reload, ``stop``."""

    def __init__(self, settings: AcmeSettings, mapping_names: Callable[[], list[tuple[str, str]]]) -> None:
        self.settings = settings
        self.store = CertStore(settings.acme_dir)
        self.mapping_names = mapping_names  # [(domain, source)] of the https mappings linked now
        self.entries: dict[str, Entry] = {}
        self._orders: deque[float] = deque()  # when the orders of the last hour began
        self._wake = Event()
        self._greenlet: Optional[gevent.Greenlet] = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def update(self, settings: AcmeSettings) -> None:
        """A reload: the new names, directory and rules; names that failed or were refused by
        the directory are tried again now (the operator may have fixed what failed)."""
        for entry in self.entries.values():
            if entry.failures:
                self.store.forget_state(entry.name)
        self.settings = settings
        self.store = CertStore(settings.acme_dir)
        self.entries.clear()  # (read again from acme_dir on the next turn, under the new rules)
        self._wake.set()

    def status(self) -> list[dict[str, Any]]:
        wanted = self._wanted()
        return [self._entry(name, source).row() for name, source in sorted(wanted.items())]

    # -- the loop ------------------------------------------------------------------------------
    def _wanted(self) -> dict[str, str]:
        names = dict(self.settings.names)
        if self.settings.mappings:
            try:
                for name, source in self.mapping_names():
                    names.setdefault(name, source)
            except Exception:  # (a bug there must not stop renewals)
                log.exception("ACME: cannot list the https mappings")
        return names

    def _entry(self, name: str, source: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries[name] = self._load(name, source)
        entry.source = source
        return entry

    def _load(self, name: str, source: str) -> Entry:
        entry = Entry(name, source)
        why = ""
        if not safe_name(name):
            why = ("a wildcard certificate needs the dns-01 challenge, which wmproxy does not answer" if "*" in name
                   else f"{name!r} is not a host name a certificate can be asked for")
        elif source.startswith("mapping ") and not domain_allowed(name, self.settings.mapping_domains):
            why = "not in [center] map_acme_domains"
        if why:
            entry.state, entry.refused, entry.next_attempt, entry.last_error = "refused", True, float("inf"), why
            log.error("ACME: no certificate for %s (%s): %s", name, source, why)
            return entry
        self._read_cert(entry)
        saved = self.store.load_state(name)
        if saved.get("failures") or saved.get("refused"):
            entry.failures = int(saved.get("failures", 0))
            entry.refused = bool(saved.get("refused", False))
            entry.next_attempt = float(saved.get("next_attempt", 0.0))
            entry.last_error = str(saved.get("last_error", ""))
            entry.state = "refused" if entry.refused else "failed"
        return entry

    def _read_cert(self, entry: Entry) -> None:
        chain, _ = self.store.cert_paths(entry.name)
        try:
            with open(chain, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError):
            return
        entry.not_before = cert.not_valid_before_utc.timestamp()
        entry.not_after = cert.not_valid_after_utc.timestamp()
        names = [a.value for a in cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        entry.issuer = str(names[0]) if names else cert.issuer.rfc4514_string()
        entry.state = "valid" if entry.not_after > time.time() else "expired"

    def _run(self) -> None:
        while True:
            try:
                wait = self._turn()
            except Exception:  # a bug: logged, the loop goes on
                log.exception("ACME: internal error")
                wait = 60.0
            self._wake.clear()
            self._wake.wait(timeout=max(0.05, min(wait, TICK)))

    def _turn(self) -> float:
        """Obtain the most overdue name's certificate, if one is due; returns the time to wait."""
        wanted = self._wanted()
        now = time.time()
        for name in [n for n in self.entries if n not in wanted]:  # (a mapping gone: its state stays on disk)
            del self.entries[name]
        entries = [self._entry(name, source) for name, source in wanted.items()]
        due = sorted((e for e in entries if e.due() <= now), key=lambda e: e.due())
        if not due:
            return min((e.due() - now for e in entries), default=TICK)
        while self._orders and self._orders[0] < now - 3600:
            self._orders.popleft()
        if len(self._orders) >= ORDERS_PER_HOUR:
            return self._orders[0] + 3600 - now
        self._orders.append(now)
        self._obtain(due[0])
        return 0.0

    def _obtain(self, entry: Entry) -> None:
        settings = self.settings
        renewal = bool(entry.not_after)
        entry.state = "obtaining"
        log.info("ACME: %s a certificate for %s (%s) from %s by %s", "renewing" if renewal else "obtaining",
                 entry.name, entry.source, settings.directory.url, settings.challenge)
        try:
            from .client import obtain  # (the acme library: imported when the first order is placed)

            issued = obtain(settings.directory, self.store, entry.name, settings.challenge)
        except AcmeFailure as e:
            self._failed(entry, e)
            return
        try:
            self.store.save_cert(entry.name, issued.fullchain, issued.key)
            self.store.save_state(entry.name, {})
        except OSError as e:  # (obtained but not kept: backed off as a failure, not ordered again at once)
            self._failed(entry, AcmeFailure(f"cannot write the certificate to {self.store.root}: {e}"))
            return
        entry.failures, entry.refused, entry.next_attempt, entry.last_error = 0, False, 0.0, ""
        entry.obtained_at = time.time()
        self._read_cert(entry)
        log.info("ACME: certificate for %s obtained from %s, valid until %s; renewal from %s", entry.name,
                 entry.issuer, _when(entry.not_after), _when(entry.renew_at))

    def _failed(self, entry: Entry, e: AcmeFailure) -> None:
        entry.failures += 1
        entry.refused = e.refused
        wait = REFUSED_WAIT if e.refused else min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (entry.failures - 1))
        entry.next_attempt = time.time() + max(wait, e.retry_after)
        entry.last_error = str(e)
        entry.state = "refused" if e.refused else "failed"
        try:
            self.store.save_state(entry.name, {"failures": entry.failures, "refused": entry.refused,
                                               "next_attempt": entry.next_attempt, "last_error": entry.last_error})
        except OSError as why:
            log.error("ACME: cannot keep the state of %s in %s: %s", entry.name, self.store.root, why)
        kept = f"; the certificate valid until {_when(entry.not_after)} keeps serving" if entry.not_after else ""
        log.error("ACME: no certificate for %s (%s): %s; %s %s%s", entry.name, entry.source, e,
                  "refused: not asked again before" if e.refused else "next attempt at", _when(entry.next_attempt), kept)


def domain_allowed(name: str, allowed: tuple) -> bool:
    """Whether ``name`` is one of ``allowed`` ('app.example.com', or '*.example.com' for any
    name below it); an empty list allows any."""
    return not allowed or any(name == d or (d.startswith("*.") and name.endswith(d[1:])) for d in allowed)


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
