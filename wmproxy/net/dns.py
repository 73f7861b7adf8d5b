"""Name resolution through dnspython with a TTL cache; the hosts file answers first.

Blocking-style and cooperative: run in a gevent-patched process, dnspython's sockets yield.
A and AAAA are asked at once; concurrent lookups of one name share a single query.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections import OrderedDict
from typing import Optional, Union

import dns.exception
import dns.nameserver
import dns.resolver
import gevent
from gevent.event import AsyncResult

from ..config import DnsConfig
from ..config.keys import nameserver_address
from ..errors import DnsError

log = logging.getLogger("wmproxy.dns")

Address = tuple[int, str]  # (socket.AF_INET or AF_INET6, ip text)


def parse_hosts(text: str) -> dict[str, list[Address]]:
    """Hosts-file text -> {lower-case name: [(family, ip), ...]} in file order."""
    table: dict[str, list[Address]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        entry = (socket.AF_INET if ip.version == 4 else socket.AF_INET6, str(ip))
        for name in fields[1:]:
            table.setdefault(name.lower().rstrip("."), []).append(entry)
    return table


class Resolver:
    """Resolves names to addresses. One per process, shared by every listener."""

    HOSTS_CHECK_EVERY = 2.0  # seconds between stat() calls on the hosts file

    def __init__(self, cfg: DnsConfig | None = None) -> None:
        self.cfg = cfg or DnsConfig()
        self._cache: OrderedDict[str, tuple[float, list[Address] | DnsError]] = OrderedDict()
        self._inflight: dict[str, AsyncResult] = {}
        self._hosts: dict[str, list[Address]] = {}
        self._hosts_mtime: Optional[int] = None
        self._hosts_checked = 0.0
        self._dns = self._make_resolver()

    def _make_resolver(self) -> dns.resolver.Resolver:
        try:
            r = dns.resolver.Resolver(configure=not self.cfg.nameservers)
        except dns.resolver.NoResolverConfiguration:
            r = dns.resolver.Resolver(configure=False)
        if self.cfg.nameservers:
            r.nameservers = [dns.nameserver.Do53Nameserver(*nameserver_address(text)) for text in self.cfg.nameservers]
        r.lifetime = self.cfg.timeout
        r.timeout = min(self.cfg.timeout, 2.0)
        return r

    def _hosts_lookup(self, name: str) -> list[Address] | None:
        path = self.cfg.hosts_file
        if not path:
            return None
        now = time.monotonic()
        if now - self._hosts_checked > self.HOSTS_CHECK_EVERY:
            self._hosts_checked = now
            try:
                mtime = os.stat(path).st_mtime_ns
                if mtime != self._hosts_mtime:
                    with open(path, encoding="utf-8", errors="replace") as f:
                        self._hosts = parse_hosts(f.read())
                    self._hosts_mtime = mtime
            except OSError:
                self._hosts, self._hosts_mtime = {}, None
        return self._hosts.get(name)

    def resolve(self, host: str) -> list[Address]:
        """Addresses for ``host`` (IPv4 first, then IPv6). Blocks cooperatively.

        Raises DnsError when the name has no address or the lookup fails.
        """
        try:
            ip = ipaddress.ip_address(host)
            return [(socket.AF_INET if ip.version == 4 else socket.AF_INET6, str(ip))]
        except ValueError:
            pass
        name = host.lower().rstrip(".")
        found = self._hosts_lookup(name)
        if found:
            return found
        hit = self._cache.get(name)
        if hit is not None:
            expires, value = hit
            if expires > time.monotonic():
                self._cache.move_to_end(name)
                if isinstance(value, DnsError):
                    raise value
                return value
            del self._cache[name]
        pending = self._inflight.get(name)
        if pending is not None:
            shared: list[Address] = pending.get()
            return shared
        pending = self._inflight[name] = AsyncResult()
        try:
            addrs, ttl = self._query(name)
        except DnsError as e:
            self._store(name, e, self.cfg.negative_ttl)
            pending.set_exception(e)
            raise
        finally:
            del self._inflight[name]
        self._store(name, addrs, min(max(ttl, self.cfg.min_ttl), self.cfg.max_ttl))
        pending.set(addrs)
        return addrs

    def _store(self, name: str, value: Union[list[Address], DnsError], ttl: float) -> None:
        if self.cfg.cache_size <= 0 or ttl <= 0:
            return
        self._cache[name] = (time.monotonic() + ttl, value)
        self._cache.move_to_end(name)
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    def _query(self, name: str) -> tuple[list[Address], float]:
        jobs = [gevent.spawn(self._query_type, name, rdtype) for rdtype in ("A", "AAAA")]
        try:
            gevent.joinall(jobs)
        finally:
            gevent.killall(jobs)
        addrs: list[Address] = []
        ttls: list[float] = []
        errors: list[str] = []
        for job in jobs:
            if job.successful() and not isinstance(job.value, str):
                found, ttl = job.value
                addrs += found
                ttls.append(ttl)
            elif job.successful():
                errors.append(job.value)
        if not addrs:
            raise DnsError(f"cannot resolve {name!r}: {errors[0] if errors else 'no address'}")
        return addrs, min(ttls)

    def _query_type(self, name: str, rdtype: str) -> Union[tuple[list[Address], float], str]:
        """(addresses, ttl) or an error text; never raises."""
        family = socket.AF_INET if rdtype == "A" else socket.AF_INET6
        try:
            answer = self._dns.resolve(name, rdtype, search=True)
        except dns.resolver.NXDOMAIN:
            return "no such name"
        except dns.resolver.NoAnswer:
            return "no address"
        except dns.resolver.NoNameservers as e:
            return f"no name server answered ({e.kwargs.get('errors') and 'unreachable' or 'failed'})"
        except dns.exception.Timeout:
            return "lookup timed out"
        except (dns.exception.DNSException, OSError, ValueError) as e:
            return f"lookup failed: {e}"
        return [(family, r.address) for r in answer], float(answer.rrset.ttl if answer.rrset else 0)
