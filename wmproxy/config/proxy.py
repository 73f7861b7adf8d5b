"""``[proxy]`` (the forward proxy) and ``[dns]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .keys import (
    Addr, DEFAULT_PROXY_BIND, Invalid, REQUIRED, choice_set, int_range, key, list_of, optional_addr, table_list,
    to_addr, to_bandwidth, to_bool, to_duration, to_nameserver, to_network, to_size, to_str, to_target_rule,
    proxy_protocol_key, proxy_protocol_from_key, check_proxy_protocol, rate_limit_key,
)


PROXY_PROTOCOLS = ("http", "https", "socks5", "socks4")


@dataclass(frozen=True)
class ProxyUser:
    """``[[proxy.users]]``: one account of the forward proxy, with limits of its own."""

    username: str = key(to_str, REQUIRED, "the user's name (HTTP Proxy-Authorization, SOCKS5 login)")
    password: str = key(to_str, REQUIRED, "its password")
    disabled: bool = key(to_bool, False, "refuse its logins (its connections open at a reload keep going)")
    max_connections: int = key(int_range(0, 1_000_000), 0, "connections it may have open at once, over every "
                                                           "address (0: no limit)")
    bandwidth: float = key(to_bandwidth, 0.0, "bytes a second its connections may move all together, each way "
                                              "('10m/s'; 0: no limit): a token bucket they share")

    def validate(self) -> None:
        if not self.username:
            raise Invalid("expected a user name, got ''", ".username")


@dataclass(frozen=True)
class ProxyConfig:
    """``[proxy]``: the forward proxy on one port (HTTP, CONNECT, SOCKS5, SOCKS4/4a)."""

    bind: Optional[Addr] = key(optional_addr, to_addr(DEFAULT_PROXY_BIND), "listening address ('': none; in a center "
                               "server, [proxy] then only serves its clients' proxy traffic)", aliases=("bind_addr",))
    flag: frozenset = key(choice_set(PROXY_PROTOCOLS), frozenset(PROXY_PROTOCOLS), "protocols served")
    username: str = key(to_str, "", "user required from clients (with password)")
    password: str = key(to_str, "", "password required from clients (with username)")
    users: tuple = key(table_list(ProxyUser), (), "several accounts, each with its own limits (beside username, "
                                                  "if set)")
    allow: tuple = key(list_of(to_network), (), "client networks allowed (empty: all)")
    deny: tuple = key(list_of(to_network), (), "client networks refused (checked first)")
    connect_timeout: float = key(to_duration, 10.0, "time to open the upstream connection")
    handshake_timeout: float = key(to_duration, 30.0, "time for a client to send its request head")
    idle_timeout: float = key(to_duration, 300.0, "close a connection silent this long")
    max_connections: int = key(int_range(1, 1_000_000), 10000, "concurrent client connections")
    max_connections_per_ip: int = key(int_range(0, 1_000_000), 1000, "concurrent connections of one client address "
                                                                     "(0: no limit)")
    max_header_size: int = key(to_size, 65536, "largest HTTP request or response head")
    max_headers: int = key(int_range(1, 10000), 100, "most header lines in an HTTP request (431 beyond)")
    auth_fail_limit: int = key(int_range(0, 1_000_000), 10, "failed logins from one address within auth_fail_window "
                                                            "before its attempts are refused (0: never)")
    auth_fail_window: float = key(to_duration, 60.0, "the window of auth_fail_limit, and how long an address is "
                                                     "refused after it")
    deny_targets: tuple = key(list_of(to_target_rule), (), "targets refused (networks, with ports: '10.0.0.0/8', "
                                                           "'*:25'); checked after DNS")
    allow_targets: tuple = key(list_of(to_target_rule), (), "targets allowed although loopback or link-local (a "
                                                            "proxy bound to a non-loopback address refuses those)")
    udp_bind: Optional[Addr] = key(optional_addr, None, "SOCKS5 UDP ASSOCIATE: the address each association's "
                                   "relay socket binds to, port 0 (one port per association); '' disables")
    rate_limit: float = rate_limit_key("each connection (CONNECT and SOCKS tunnels; plain HTTP: the server's side)")
    proxy_protocol: bool = proxy_protocol_key("bind")
    proxy_protocol_from: tuple = proxy_protocol_from_key("proxy_protocol")

    def validate(self) -> None:
        check_proxy_protocol(self.proxy_protocol, self.proxy_protocol_from, "proxy_protocol")
        if bool(self.username) != bool(self.password):
            which = "password" if self.username else "username"
            raise Invalid(f"username and password go together; {which} is missing", "." + which)
        names = [u.username for u in self.users] + ([self.username] if self.username else [])
        for i, user in enumerate(self.users):
            if names.count(user.username) > 1:
                raise Invalid(f"user {user.username!r} is named twice ([proxy] username and [[proxy.users]] "
                              f"are one list of accounts)", f".users[{i}].username")
        if self.udp_bind is not None and self.udp_bind.port != 0:
            raise Invalid(f"expected port 0, got {self.udp_bind}: every UDP association gets its own relay "
                          f"port on this address (write \"{self.udp_bind.host}:0\")", ".udp_bind")

    @property
    def auth(self) -> bool:
        return bool(self.username or self.users)

    def accounts(self) -> dict[str, ProxyUser]:
        """Every account by name: [[proxy.users]], and username/password as one without limits."""
        out = {u.username: u for u in self.users}
        if self.username:
            out[self.username] = ProxyUser(self.username, self.password)
        return out


@dataclass(frozen=True)
class DnsConfig:
    """``[dns]``: how target names are resolved (dnspython, TTL cache, hosts file)."""

    nameservers: tuple = key(list_of(to_nameserver), (), "resolver addresses: IP addresses, with a port if not 53 "
                             "('192.0.2.53', '[::1]:5353'; empty: /etc/resolv.conf)")
    hosts_file: str = key(to_str, "/etc/hosts", "hosts file consulted first ('' to skip)")
    timeout: float = key(to_duration, 5.0, "time for one lookup")
    cache_size: int = key(int_range(0, 1_000_000), 4096, "names kept in the cache")
    min_ttl: float = key(to_duration, 0.0, "shortest time an answer is cached")
    max_ttl: float = key(to_duration, 3600.0, "longest time an answer is cached")
    negative_ttl: float = key(to_duration, 5.0, "time a failed lookup is remembered")
