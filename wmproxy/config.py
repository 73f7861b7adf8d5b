"""Configuration: TOML (plus command-line and environment overrides) into frozen dataclasses.

Pure: no gevent, no sockets. Each section is a frozen dataclass whose fields carry their
converter in ``metadata``; :func:`build` walks a dict against it, so an unknown key, a wrong
type or a bad address raises a :class:`ConfigError` naming the source (file, command line or
environment variable), the key path (``proxy.allow[2]``) and what is accepted.

Key names follow the Rust wmproxy where one exists (``[proxy] bind_addr`` is accepted as an
alias of ``bind``; ``flag = "http https socks5"``; top-level ``control``).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .errors import ConfigError
from .prot.frame import HeaderOp, HeaderRule

DEFAULT_PROXY_BIND = "127.0.0.1:8090"


class Invalid(ValueError):
    """A converter's complaint; ``subpath`` is appended to the key path (``[2]``, ``.x``)."""

    def __init__(self, message: str, subpath: str = ""):
        self.subpath = subpath
        super().__init__(message)


# ---------------------------------------------------------------------------------------
# Value types and converters. Each converter takes the raw TOML/flag value and returns the
# typed value or raises Invalid with a message that says what is accepted.


@dataclass(frozen=True)
class Addr:
    """A host and port to bind or dial. ``host`` is an IP literal or a name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


_ADDR_HELP = "an address 'host:port', e.g. '127.0.0.1:8090', '[::1]:8090' or '0.0.0.0:8090'"
_HOST_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


def to_addr(value: Any) -> Addr:
    if not isinstance(value, str):
        raise Invalid(f"expected {_ADDR_HELP}, got {type(value).__name__} {value!r}")
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise Invalid(f"expected {_ADDR_HELP}, got {value!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise Invalid(f"expected {_ADDR_HELP}, got {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_RE.match(host):
            raise Invalid(f"{host!r} is neither an IP address nor a host name; expected {_ADDR_HELP}") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise Invalid(f"port {port!r} is not a number from 0 to 65535; expected {_ADDR_HELP}")
    return Addr(host, int(port))


def to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise Invalid(f"expected true or false, got {value!r}")


def int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise Invalid(f"expected a whole number from {lo} to {hi}, got {value!r}")
        return value

    return conv


_DURATION_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|sec|s|min|m|h|d)?\s*$")


def to_duration(value: Any) -> float:
    """Seconds from a number or a string like '10s', '500ms', '2min', '1h'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    raise Invalid(f"expected a duration like 30, '10s', '500ms', '2min' or '1h', got {value!r}")


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def to_size(value: Any) -> int:
    """Bytes from a number or a string like '64k', '1m', '8KiB'."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    raise Invalid(f"expected a size like 65536, '64k' or '1m', got {value!r}")


def to_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            pass
    raise Invalid(f"expected an IP address or CIDR like '10.0.0.0/8', '127.0.0.1' or '::1/128', got {value!r}")


@dataclass(frozen=True)
class TargetRule:
    """A deny_targets / allow_targets entry: a network and a port range (any port: 1-65535)."""

    network: Optional[ipaddress.IPv4Network | ipaddress.IPv6Network]  # None: any address
    low: int = 1
    high: int = 65535

    def matches(self, addr, port: int) -> bool:
        return self.low <= port <= self.high and (self.network is None or (
            addr.version == self.network.version and addr in self.network))

    def __str__(self) -> str:
        net = "*" if self.network is None else str(self.network)
        if self.network is not None and self.network.version == 6 and (self.low, self.high) != (1, 65535):
            net = f"[{net}]"
        ports = "" if (self.low, self.high) == (1, 65535) else f":{self.low}" + (
            f"-{self.high}" if self.high != self.low else "")
        return net + ports


_TARGET_HELP = ("expected a target rule: an address or network ('10.0.0.0/8', '::1'), optionally with a port or "
                "range ('127.0.0.1:8080', '[::1]:22', '10.0.0.0/8:1-1023', '*:25' for any address)")


def to_target_rule(value: Any) -> TargetRule:
    if isinstance(value, str):
        text = value.strip()
        net_text, ports = text, ""
        if text.startswith("["):
            net_text, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise Invalid(f"{_TARGET_HELP}, got {value!r}")
            ports = rest[1:]
        elif text.count(":") == 1:  # IPv4 or * with a port (a bare IPv6 address has several colons)
            net_text, _, ports = text.partition(":")
        try:
            network = None if net_text == "*" else ipaddress.ip_network(net_text, strict=False)
            low, high = to_port_range(ports) if ports else (1, 65535)
            return TargetRule(network, low, high)
        except (ValueError, Invalid):
            pass
    raise Invalid(f"{_TARGET_HELP}, got {value!r}")


def list_of(conv: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    """A list converter; a single value is taken as a list of one (handy for flags)."""

    def convert(value: Any) -> tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        out = []
        for i, item in enumerate(items):
            try:
                out.append(conv(item))
            except Invalid as e:
                raise Invalid(str(e), f"[{i}]{e.subpath}") from None
        return tuple(out)

    return convert


def choice_set(choices: tuple[str, ...]) -> Callable[[Any], frozenset]:
    """A set of words from a string ('http https socks5', '|' and ',' also split) or a list."""

    def convert(value: Any) -> frozenset:
        words = re.split(r"[\s|,]+", value.strip()) if isinstance(value, str) else value
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
            raise Invalid(f"expected words from {' '.join(choices)}, got {value!r}")
        words = [w.lower() for w in words if w]
        bad = [w for w in words if w not in choices]
        if bad or not words:
            raise Invalid(f"expected one or more of {' '.join(choices)}, got {value!r}")
        return frozenset(words)

    return convert


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}, got {value!r}")
        return value.lower()

    return convert


def optional_addr(value: Any) -> Optional[Addr]:
    """An address, or None for '' (disabled)."""
    return None if value == "" else to_addr(value)


def table_list(cls: type) -> Callable[[Any], tuple]:
    """A TOML array of tables (``[[stream.server]]``), each built into ``cls``."""

    def convert(value: Any) -> tuple:
        if not isinstance(value, list):
            raise Invalid(f"expected an array of tables ([[...]]), got {type(value).__name__} {value!r}")
        return tuple(build(cls, item, f"[{i}]") for i, item in enumerate(value))

    convert.table = cls  # type: ignore[attr-defined]  # (for the generated reference, docs/CONFIG.md)
    return convert


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def key(conv: Callable[[Any], Any], default: Any, doc: str, aliases: tuple[str, ...] = ()) -> Any:
    """Declare a config key: its converter, default (REQUIRED if none) and one-line meaning."""
    return field(default=default, metadata={"conv": conv, "doc": doc, "aliases": aliases})


def section(cls: type, doc: str) -> Any:
    """Declare an optional sub-table; None when absent."""
    return field(default=None, metadata={"section": cls, "doc": doc, "aliases": ()})


# ---------------------------------------------------------------------------------------
# The sections.

PROXY_PROTOCOLS = ("http", "https", "socks5", "socks4")


@dataclass(frozen=True)
class ProxyConfig:
    """``[proxy]``: the forward proxy on one port (HTTP, CONNECT, SOCKS5, SOCKS4/4a)."""

    bind: Addr = key(to_addr, to_addr(DEFAULT_PROXY_BIND), "listening address", aliases=("bind_addr",))
    flag: frozenset = key(choice_set(PROXY_PROTOCOLS), frozenset(PROXY_PROTOCOLS), "protocols served")
    username: str = key(to_str, "", "user required from clients (with password)")
    password: str = key(to_str, "", "password required from clients (with username)")
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

    def validate(self) -> None:
        if bool(self.username) != bool(self.password):
            which = "password" if self.username else "username"
            raise Invalid(f"username and password go together; {which} is missing", "." + which)
        if self.udp_bind is not None and self.udp_bind.port != 0:
            raise Invalid(f"expected port 0, got {self.udp_bind}: every UDP association gets its own relay "
                          f"port on this address (write \"{self.udp_bind.host}:0\")", ".udp_bind")

    @property
    def auth(self) -> bool:
        return bool(self.username)


@dataclass(frozen=True)
class DnsConfig:
    """``[dns]``: how target names are resolved (dnspython, TTL cache, hosts file)."""

    nameservers: tuple = key(list_of(to_str), (), "resolver addresses (empty: /etc/resolv.conf)")
    hosts_file: str = key(to_str, "/etc/hosts", "hosts file consulted first ('' to skip)")
    timeout: float = key(to_duration, 5.0, "time for one lookup")
    cache_size: int = key(int_range(0, 1_000_000), 4096, "names kept in the cache")
    min_ttl: float = key(to_duration, 0.0, "shortest time an answer is cached")
    max_ttl: float = key(to_duration, 3600.0, "longest time an answer is cached")
    negative_ttl: float = key(to_duration, 5.0, "time a failed lookup is remembered")


def _unique_names(items: tuple, what: str, path: str) -> list[str]:
    """The ``name`` of each item; Invalid at the first one used twice."""
    names = [item.name for item in items]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise Invalid(f"{what} name {name!r} is used twice", f"{path}[{i}].name")
    return names


@dataclass(frozen=True)
class UpstreamServerConfig:
    """One server of an upstream: ``{ addr = "127.0.0.1:8080", weight = 2 }``."""

    addr: Addr = key(to_addr, REQUIRED, "server address")
    weight: int = key(int_range(1, 1000), 1, "share of connections (round robin by weight)")


@dataclass(frozen=True)
class StreamUpstreamConfig:
    """``[[stream.upstream]]``: a named group of servers."""

    name: str = key(to_str, REQUIRED, "the name servers refer to with up_name")
    server: tuple = key(table_list(UpstreamServerConfig), REQUIRED, "the servers")
    method: str = key(one_of(("round_robin", "ip_hash")), "round_robin",
                      "how a connection or UDP session picks its server")

    def validate(self) -> None:
        if not self.server:
            raise Invalid("an upstream needs at least one server", ".server")


STREAM_MODES = ("tcp", "udp", "ws2tcp", "tcp2ws", "tcp2wss")


@dataclass(frozen=True)
class StreamServerConfig:
    """``[[stream.server]]``: a layer-4 listener forwarding to an upstream."""

    bind: Addr = key(to_addr, REQUIRED, "listening address", aliases=("bind_addr",))
    bind_mode: str = key(one_of(STREAM_MODES), "tcp", "what is forwarded")
    up_name: str = key(to_str, REQUIRED, "name of a [[stream.upstream]]")
    connect_timeout: float = key(to_duration, 10.0, "time to connect to an upstream server")
    idle_timeout: float = key(to_duration, 300.0, "close a connection silent this long")
    max_connections: int = key(int_range(1, 1_000_000), 10000, "concurrent client connections")
    max_connections_per_ip: int = key(int_range(0, 1_000_000), 1000, "concurrent connections of one client address "
                                                                     "(0: no limit)")
    client_timeout: float = key(to_duration, 60.0, "udp: a client's session ends after this long without a datagram")
    max_sessions: int = key(int_range(1, 1_000_000), 10000, "udp: sessions kept (beyond: the oldest idle goes)")
    ws_path: str = key(to_str, "/", "tcp2ws(s): the path asked of the websocket server")
    ws_host: str = key(to_str, "", "tcp2ws(s): its Host (and TLS name); default: the server's host")
    ws_ca: str = key(to_str, "", "tcp2wss: CA file to verify the websocket server with ('' = the system store)")


@dataclass(frozen=True)
class StreamConfig:
    """``[stream]``: layer-4 forwarding (names as in the Rust wmproxy)."""

    upstream: tuple = key(table_list(StreamUpstreamConfig), (), "upstream groups")
    server: tuple = key(table_list(StreamServerConfig), (), "listeners")

    def validate(self) -> None:
        names = _unique_names(self.upstream, "upstream", ".upstream")
        binds: list[str] = []
        for i, srv in enumerate(self.server):
            if srv.up_name not in names:
                known = ", ".join(repr(n) for n in names) or "none defined"
                raise Invalid(f"no [[stream.upstream]] named {srv.up_name!r} (known: {known})",
                              f".server[{i}].up_name")
            where = f"{srv.bind}/udp" if srv.bind_mode == "udp" else str(srv.bind)  # TCP and UDP ports are apart
            if where in binds:
                raise Invalid(f"{where} is bound twice", f".server[{i}].bind")
            binds.append(where)

    def upstream_named(self, name: str) -> StreamUpstreamConfig:
        return next(u for u in self.upstream if u.name == name)


def to_port_range(value: Any) -> tuple[int, int]:
    """'2000-2999' or a single port (number or string) -> (low, high)."""
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    low, _, high = text.partition("-")
    if low.isdigit() and (high.isdigit() or not high):
        lo, hi = int(low), int(high or low)
        if 1 <= lo <= hi <= 65535:
            return lo, hi
    raise Invalid(f"expected a port or a range like 2000-2999, got {value!r}")


@dataclass(frozen=True)
class CenterUser:
    """``[[center.users]]``: one account a center client may log in with."""

    username: str = key(to_str, REQUIRED, "the client's name")
    password: str = key(to_str, REQUIRED, "its password (never sent: the client proves it with HMAC)")


@dataclass(frozen=True)
class CenterConfig:
    """``[center]``: the center link. ``bind`` makes this end the server, ``server`` the client."""

    bind: Optional[Addr] = key(optional_addr, None, "server: address the center clients connect to")
    server: Optional[Addr] = key(optional_addr, None, "client: the center server to connect to")
    tls: bool = key(to_bool, True, "TLS on the link (plain TCP only with tls = false, with a warning)")
    cert: str = key(to_str, "", "PEM certificate (server; client too for mutual TLS)")
    client_ca: str = key(to_str, "", "server: require client certificates signed by this CA")
    ca: str = key(to_str, "", "client: CA file to verify the server with ('' = the system store)")
    server_name: str = key(to_str, "", "client: name the server certificate must carry (default: server host)")
    username: str = key(to_str, "", "client: who to log in as; server: the single account")
    password: str = key(to_str, "", "client: its password; server: the single account's")
    users: tuple = key(table_list(CenterUser), (), "server: several accounts")
    heartbeat: float = key(to_duration, 15.0, "PING an idle link this often; 3 x without a frame = dead")
    window: int = key(to_size, 262144, "per-stream flow-control window to start with (the same on both ends)")
    max_window: int = key(to_size, 4 << 20, "a busy stream's window grows up to this (= window: never grows); "
                                             "the same on both ends: more credit is a protocol error")
    max_frame: int = key(to_size, 1 << 20, "largest frame body accepted")
    allow_ports: tuple = key(list_of(to_port_range), (), "server: ports a client's tcp, udp and proxy mappings "
                                                          "may open (empty: any)")
    udp_timeout: float = key(to_duration, 60.0, "server: a udp mapping's session with one public peer ends after "
                                                "this long without a datagram")
    map_http_bind: Optional[Addr] = key(optional_addr, None, "server: the shared listener of http mappings "
                                                             "(routed by Host)")
    map_https_bind: Optional[Addr] = key(optional_addr, None, "server: the shared TLS listener of https mappings "
                                                              "(routed by SNI, then by Host)")
    map_cert: tuple = key(list_of(to_str), (), "server: PEM certificates for map_https_bind (chosen by SNI; none: "
                                               "only tls_passthrough mappings)")
    map_key: tuple = key(list_of(to_str), (), "server: their keys, in the same order")
    auth_fail_limit: int = key(int_range(0, 1_000_000), 10, "server: failed link logins from one address within "
                                                            "auth_fail_window before it is refused (0: never)")
    auth_fail_window: float = key(to_duration, 60.0, "server: the window of auth_fail_limit, and how long an "
                                                     "address is refused after it")
    max_connections_per_ip: int = key(int_range(0, 1_000_000), 1000, "server: concurrent connections of one client "
                                                                     "address on bind, map_http_bind, map_https_bind "
                                                                     "and each mapping port (0: no limit)")
    # last: from here on, 'key' in this class body names this field, not the declaring function
    key: str = key(to_str, "", "PEM private key for cert")

    def validate(self) -> None:
        if (self.bind is None) == (self.server is None):
            raise Invalid("set bind (this end is the center server) or server (this end is a center client), "
                          "not both and not neither", ".bind")
        if self.tls and self.bind is not None and not (self.cert and self.key):
            raise Invalid("a TLS center server needs cert and key (or tls = false, plain TCP)", ".cert")
        if bool(self.cert) != bool(self.key):
            raise Invalid("cert and key go together", ".key")
        if len(self.map_cert) != len(self.map_key):
            raise Invalid("map_cert and map_key need one key per certificate", ".map_key")
        if bool(self.username) != bool(self.password):
            raise Invalid("username and password go together", ".password")
        if self.heartbeat <= 0:
            raise Invalid("heartbeat must be more than 0", ".heartbeat")
        if not 16384 <= self.window <= 1 << 30:
            raise Invalid("window must be from 16k to 1g", ".window")
        if not self.window <= self.max_window <= 1 << 30:
            raise Invalid("max_window must be from window to 1g", ".max_window")
        if not 65536 <= self.max_frame <= (1 << 24) - 1:
            raise Invalid("max_frame must be from 64k to 16m - 1", ".max_frame")

    @property
    def is_server(self) -> bool:
        return self.bind is not None

    def accounts(self) -> dict[str, str]:
        """username -> password; empty when the server takes anyone (no credentials set)."""
        out = {u.username: u.password for u in self.users}
        if self.username:
            out[self.username] = self.password
        return out


MAPPING_MODES = ("tcp", "http", "https", "proxy", "udp")
_HEADER_OPS = {"+": HeaderOp.ADD, "-": HeaderOp.DELETE, "?": HeaderOp.SET_IF_ABSENT}
_HEADER_HELP = ("expected a header rule like 'proxy + X-Real-IP {client_ip}', '- Server', '? X-A b' or "
                "'X-A b' ('proxy' first: on the request to the service, else on the response)")


def to_header_rule(value: Any) -> HeaderRule:
    """'[proxy] [+|-|?] Name [value]' -> HeaderRule. No op: replace. Values may be quoted and
    use {client_ip}, {host} and {url}."""
    if not isinstance(value, str):
        raise Invalid(f"{_HEADER_HELP}, got {value!r}")
    try:
        words = shlex.split(value)
    except ValueError:
        raise Invalid(f"{_HEADER_HELP}, got {value!r}") from None
    is_proxy = bool(words) and words[0].lower() == "proxy"
    words = words[1:] if is_proxy else words
    op = _HEADER_OPS.get(words[0]) if words else None
    words = words[1:] if op is not None else words
    op = op or HeaderOp.REPLACE
    if not words or not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", words[0]) or \
            (op == HeaderOp.DELETE) != (len(words) == 1):
        raise Invalid(f"{_HEADER_HELP}, got {value!r}")
    return HeaderRule(is_proxy, op, words[0], " ".join(words[1:]))
_DOMAIN_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def to_domain(value: Any) -> str:
    """A host name, or a wildcard '*.example.com' (any name ending in .example.com)."""
    if isinstance(value, str) and _DOMAIN_RE.match(value.strip().lower()):
        return value.strip().lower()
    raise Invalid(f"expected a domain like 'app.example.com' or '*.example.com', got {value!r}")


@dataclass(frozen=True)
class MappingConfig:
    """``[[mappings]]`` (center client): a private service the center server publishes."""

    name: str = key(to_str, REQUIRED, "the mapping's name (unique on this client)")
    mode: str = key(one_of(MAPPING_MODES), REQUIRED, "how it is published")
    local_addr: Optional[Addr] = key(optional_addr, None, "tcp, udp, http, https: the private service, as this "
                                                          "client reaches it")
    remote_bind: Optional[Addr] = key(optional_addr, None, "tcp, udp, proxy: the public address the center server "
                                                           "opens")
    domain: str = key(to_domain, "", "http, https: the Host it answers on the server's map_http(s)_bind")
    headers: tuple = key(list_of(to_header_rule), (), "http: header rules on requests and responses")
    username: str = key(to_str, "", "proxy: user its forward proxy asks for (with password)")
    password: str = key(to_str, "", "proxy: password its forward proxy asks for")
    tls_passthrough: bool = key(to_bool, False, "https: route by SNI and pass the TLS bytes through to local_addr "
                                                "(the service terminates TLS) instead of terminating on the server")

    @property
    def wire_mode(self) -> str:
        """The mode named in MAPPING: 'tls' for an https mapping passed through by SNI."""
        return "tls" if self.tls_passthrough else self.mode

    def validate(self) -> None:
        if self.tls_passthrough and self.mode != "https":
            raise Invalid("tls_passthrough is for mode = \"https\" mappings", ".tls_passthrough")
        if self.mode in ("tcp", "udp", "http", "https") and self.local_addr is None:
            raise Invalid(f"a {self.mode} mapping needs local_addr (the private service)", ".local_addr")
        if self.mode == "https" and not self.domain:
            raise Invalid("an https mapping needs domain (the name it answers)", ".domain")
        if self.mode in ("tcp", "udp", "proxy") and self.remote_bind is None:
            raise Invalid(f"a {self.mode} mapping needs remote_bind (the public address to open)", ".remote_bind")
        if bool(self.username) != bool(self.password):
            raise Invalid("username and password go together", ".password")
        if self.mode == "http" and not self.domain:
            raise Invalid("an http mapping needs domain (the Host it answers)", ".domain")


# -- [http]: reverse proxy, static files ------------------------------------------------


@dataclass(frozen=True)
class LocationRule:
    """How a location matches a path, as nginx: ``= /x`` exact, ``^~ /x`` prefix that stops
    the regex search, ``~ re`` / ``~* re`` regex (case-insensitive), ``/x`` prefix."""

    kind: str  # "exact", "prefix", "prefix-stop", "regex"
    text: str
    regex: Optional[re.Pattern] = None

    def __str__(self) -> str:
        regex = "~* " if self.regex is not None and self.regex.flags & re.IGNORECASE else "~ "
        return {"exact": "= ", "prefix-stop": "^~ ", "regex": regex}.get(self.kind, "") + self.text


def to_location_rule(value: Any) -> LocationRule:
    if isinstance(value, str):
        op, _, rest = value.strip().partition(" ")
        rest = rest.strip()
        if op in ("~", "~*") and rest:
            try:
                return LocationRule("regex", rest, re.compile(rest, re.IGNORECASE if op == "~*" else 0))
            except re.error as e:
                raise Invalid(f"bad regular expression {rest!r}: {e}") from None
        if op in ("=", "^~") and rest.startswith("/"):
            return LocationRule("exact" if op == "=" else "prefix-stop", rest)
        if op.startswith("/") and not rest:
            return LocationRule("prefix", op)
    raise Invalid(f"expected a location rule: a path prefix '/api/', '= /exact', '^~ /prefix' or '~ regex' "
                  f"('~*' ignores case), got {value!r}")


def to_server_name(value: Any) -> str:
    """A host name, '*.example.com' or 'example.*'."""
    if isinstance(value, str):
        name = value.strip().lower().rstrip(".")
        plain = name[2:] if name.startswith("*.") else name[:-2] if name.endswith(".*") else name
        if plain and re.match(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$", plain):
            return name
    raise Invalid(f"expected a server name like 'example.com', '*.example.com' or 'example.*', got {value!r}")


def to_proxy_url(value: Any) -> str:
    if isinstance(value, str) and re.match(r"^https?://[^/\s?#]+(/\S*)?$", value.strip()):
        return value.strip()
    raise Invalid(f"expected 'http://upstream-name', 'http://host:port', https:// for TLS, or any of them with a "
                  f"path, got {value!r}")


@dataclass(frozen=True)
class FileServerConfig:
    """``file_server = { root = "...", ... }``: static files of a location."""

    root: str = key(to_str, REQUIRED, "directory served")
    index: tuple = key(list_of(to_str), ("index.html",), "files tried for a directory, in order")
    browse: bool = key(to_bool, False, "list a directory without an index file (else 403)")
    cache_time: float = key(to_duration, 0.0, "Cache-Control max-age sent with files (0: none)")
    path404: str = key(to_str, "", "file under root answered, with status 404, for a missing path")
    try_paths: tuple = key(list_of(to_str), (), "fallbacks tried when a path is missing, with {path}, e.g. "
                                                "['{path}.html', '/index.html']")
    precompressed: bool = key(to_bool, True, "serve a .br or .gz sibling to a client that accepts it")
    follow_symlinks: bool = key(to_bool, False, "serve symlinks that point outside root (else 403)")

    def validate(self) -> None:
        if not os.path.isdir(self.root):
            raise Invalid(f"no such directory: {self.root}", ".root")


def to_rate(value: Any) -> float:
    """Requests per second from '10r/s', '600r/m' or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*r/(s|m)\s*$", value)
        if m and float(m.group(1)) > 0:
            return float(m.group(1)) / (60 if m.group(2) == "m" else 1)
    raise Invalid(f"expected a rate like '10r/s', '600r/m' or 5, got {value!r}")


@dataclass(frozen=True)
class LimitReqConfig:
    """``limit_req = { rate = "10r/s", burst = 20 }``: requests per client address."""

    rate: float = key(to_rate, REQUIRED, "requests per second a client address may make")
    burst: int = key(int_range(0, 1_000_000), 0, "requests beyond the rate allowed at once")


HTTP_ACTIONS = ("proxy_url", "file_server", "static_response", "redirect")


@dataclass(frozen=True)
class HttpLocationConfig:
    """``[[http.server.location]]``: what a path of a server does (exactly one action)."""

    rule: LocationRule = key(to_location_rule, LocationRule("prefix", "/"), "the paths it matches")
    proxy_url: str = key(to_proxy_url, "", "reverse proxy to 'http://upstream-name' or a URL")
    file_server: Optional[FileServerConfig] = section(FileServerConfig, "static files")
    static_response: str = key(to_str, "", "answer with this text ({client_ip}, {host}, {url} filled in)")
    redirect: str = key(to_str, "", "redirect to this URL ({host}, {url} filled in)")
    status: int = key(int_range(0, 599), 0, "status of static_response (200) or redirect (302)")
    headers: tuple = key(list_of(to_header_rule), (), "header rules: 'proxy ...' on the request upstream, "
                                                      "the others on the response")
    allow_ip: tuple = key(list_of(to_network), (), "client networks allowed (empty: all)")
    deny_ip: tuple = key(list_of(to_network), (), "client networks refused with 403 (checked first)")
    limit_req: Optional[LimitReqConfig] = section(LimitReqConfig, "rate limit per client address (429 beyond)")
    access_log: str = key(to_str, "", "access log line format with {client_ip}, {host}, {url}, {method}, {status}, "
                                      "{bytes}, {time}, {upstream}; 'off' for none ('': the default line)")
    proxy_connect_timeout: float = key(to_duration, 10.0, "proxy_url: time to connect to a server")
    proxy_read_timeout: float = key(to_duration, 60.0, "proxy_url: time a server may be silent")
    proxy_ssl_ca: str = key(to_str, "", "https proxy_url: CA file the servers are verified with ('' = system store)")
    proxy_ssl_name: str = key(to_str, "", "https proxy_url: the name their certificates must carry (and SNI); "
                                          "default: proxy_url's host")

    def validate(self) -> None:
        if self.proxy_ssl_ca and not os.path.isfile(self.proxy_ssl_ca):
            raise Invalid(f"no such file: {self.proxy_ssl_ca}", ".proxy_ssl_ca")
        actions = [a for a in HTTP_ACTIONS if getattr(self, a)]
        if len(actions) != 1:
            raise Invalid(f"a location does exactly one of {', '.join(HTTP_ACTIONS)}; "
                          f"got {', '.join(actions) or 'none'}", "")


@dataclass(frozen=True)
class HttpServerConfig:
    """``[[http.server]]``: a virtual server, picked by the request's Host among those on its bind."""

    bind: tuple = key(list_of(to_addr), REQUIRED, "listening address or addresses", aliases=("bind_addr",))
    server_name: tuple = key(list_of(to_server_name), (), "names it answers (empty: the default server)")
    location: tuple = key(table_list(HttpLocationConfig), REQUIRED, "its locations")
    headers: tuple = key(list_of(to_header_rule), (), "header rules for every location (before the location's)")
    client_read_timeout: float = key(to_duration, 60.0, "the keep-alive wait between requests, and the longest "
                                                        "silence while a client sends")
    client_header_timeout: float = key(to_duration, 60.0, "deadline for a whole request head (and TLS handshake) "
                                                          "from its first byte (408 beyond)")
    client_body_timeout: float = key(to_duration, 60.0, "the longest silence while a request body arrives, and its "
                                                        "deadline: this plus its length at client_body_min_rate (408)")
    client_body_min_rate: int = key(to_size, 1024, "bytes a second a request body must arrive at, at least")
    max_header_size: int = key(to_size, 65536, "largest request head (431 beyond)")
    max_headers: int = key(int_range(1, 10000), 100, "most header lines in a request (431 beyond)")
    max_connections_per_ip: int = key(int_range(0, 1_000_000), 1000, "concurrent connections of one client address "
                                                                     "on its binds (0: no limit)")
    cert: str = key(to_str, "", "PEM certificate: TLS on this server's binds")
    # last: from here on, 'key' in this class body names this field, not the declaring function
    key: str = key(to_str, "", "PEM private key for cert")

    def validate(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise Invalid("cert and key go together", ".key")
        if not self.location:
            raise Invalid("a server needs at least one location", ".location")


@dataclass(frozen=True)
class HttpUpstreamServerConfig:
    """One server of an http upstream: ``{ addr = "127.0.0.1:8080", weight = 2 }``."""

    addr: Addr = key(to_addr, REQUIRED, "server address")
    weight: int = key(int_range(1, 1000), 1, "share of requests (round robin by weight)")
    max_fails: int = key(int_range(0, 1000), 1, "failures within fail_timeout that take it out (0: never)")
    fail_timeout: float = key(to_duration, 10.0, "the window for max_fails, and how long it stays out")


@dataclass(frozen=True)
class HealthCheckConfig:
    """``health_check = { path = "/health", interval = "5s" }``: active checks of each server."""

    path: str = key(to_str, "/", "path asked with GET; a 2xx or 3xx answer is healthy")
    interval: float = key(to_duration, 5.0, "time between two checks of a server")
    timeout: float = key(to_duration, 2.0, "time a check may take")
    rise: int = key(int_range(1, 100), 2, "healthy checks in a row that bring a server back")
    fall: int = key(int_range(1, 100), 3, "failed checks in a row that take a server out")

    def validate(self) -> None:
        if not self.path.startswith("/"):
            raise Invalid("expected a path starting with /", ".path")
        if self.interval <= 0:
            raise Invalid("interval must be more than 0", ".interval")


@dataclass(frozen=True)
class HttpUpstreamConfig:
    """``[[http.upstream]]``: servers a ``proxy_url = "http://name"`` balances over."""

    name: str = key(to_str, REQUIRED, "the name proxy_url refers to")
    server: tuple = key(table_list(HttpUpstreamServerConfig), REQUIRED, "the servers")
    method: str = key(one_of(("round_robin", "least_conn", "ip_hash")), "round_robin", "how a request picks "
                                                                                       "its server")
    keepalive: int = key(int_range(0, 10000), 128, "idle connections kept open to each server")
    health_check: Optional[HealthCheckConfig] = section(HealthCheckConfig, "active health checks")

    def validate(self) -> None:
        if not self.server:
            raise Invalid("an upstream needs at least one server", ".server")


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: reverse proxy, static files (names as in the Rust wmproxy)."""

    server: tuple = key(table_list(HttpServerConfig), (), "virtual servers")
    upstream: tuple = key(table_list(HttpUpstreamConfig), (), "upstream groups")

    def validate(self) -> None:
        _unique_names(self.upstream, "upstream", ".upstream")
        tls: dict[str, tuple[int, bool]] = {}
        for i, srv in enumerate(self.server):
            for bind in srv.bind:
                first = tls.setdefault(str(bind), (i, bool(srv.cert)))
                if first[1] != bool(srv.cert):
                    raise Invalid(f"{bind} is shared with server[{first[0]}]: servers on one address are all TLS "
                                  f"(cert and key) or none", f".server[{i}].cert")

    def upstream_named(self, name: str) -> Optional[HttpUpstreamConfig]:
        return next((u for u in self.upstream if u.name == name), None)


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ACCESS_FORMATS = ("wmproxy", "combined")


@dataclass(frozen=True)
class Config:
    """The whole file. Sections absent from the file are None and start nothing."""

    log_level: str = key(one_of(LOG_LEVELS), "info", "log verbosity")
    log_file: str = key(to_str, "", "log to this file instead of stderr (reopened on SIGUSR1)")
    log_format: str = key(one_of(LOG_FORMATS), "text", "text, or json (one object per line); under systemd "
                          "text lines carry no time of their own (the journal stamps them)")
    access_log_file: str = key(to_str, "", "HTTP access lines to this file of their own, bare (default: in the "
                               "main log)")
    access_log_format: str = key(one_of(ACCESS_FORMATS), "wmproxy", "combined: exactly the NCSA combined format "
                                 "(goaccess, awstats); wmproxy: combined plus the time taken and a note")
    pidfile: str = key(to_str, "", "write the process id here; refuse to start if it is alive")
    grace: float = key(to_duration, 10.0, "on stop, time live connections get to finish")
    user: str = key(to_str, "", "started as root: bind, then serve as this user (name or uid); the config "
                    "and the files it names must be readable by it, for reloads")
    group: str = key(to_str, "", "with user: serve with this group (default: the user's own)")
    control: Optional[Addr] = key(optional_addr, None, "control API address ('' disables)")
    control_token: str = key(to_str, "", "bearer token the control API requires")
    watch: bool = key(to_bool, False, "reload when the config file changes")
    dns: Optional[DnsConfig] = section(DnsConfig, "name resolution")
    proxy: Optional[ProxyConfig] = section(ProxyConfig, "forward proxy")
    stream: Optional[StreamConfig] = section(StreamConfig, "layer-4 forwarding")
    center: Optional[CenterConfig] = section(CenterConfig, "the center link (tunnel)")
    mappings: tuple = key(table_list(MappingConfig), (), "center client: services the server publishes")
    http: Optional[HttpConfig] = section(HttpConfig, "reverse proxy and static files")

    def validate(self) -> None:
        if self.group and not self.user:
            raise Invalid("group is used with user: set user too", ".group")
        _unique_names(self.mappings, "mapping", "mappings")
        if self.mappings and (self.center is None or self.center.is_server):
            raise Invalid("mappings are published through a center server: set [center] server", "mappings")
        if self.center is not None and not self.center.is_server and self.proxy is not None and self.proxy.auth:
            raise Invalid("in a center client the local proxy's traffic is served by the center server's "
                          "forward proxy: set username/password in the server's [proxy]", ".proxy.username")
        if self.control is not None and not self.control.is_loopback and not self.control_token:
            raise Invalid(f"{self.control} is reachable from other hosts: set control_token, or bind the "
                          "control API to a loopback address", ".control")

    @property
    def dns_or_default(self) -> DnsConfig:
        return self.dns or DnsConfig()


# ---------------------------------------------------------------------------------------
# Building.


def accepted_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build(cls: type, data: Any, path: str = "") -> Any:
    """Turn a dict into the frozen dataclass ``cls``. Raises Invalid with a sub-path."""
    if not isinstance(data, dict):
        raise Invalid(f"expected a table of keys ({', '.join(accepted_keys(cls))}), got {data!r}", path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = {alias: f.name for f in fields.values() for alias in f.metadata["aliases"]}
    names.update({name: name for name in fields})
    values: dict[str, Any] = {}
    for raw_key, raw in data.items():
        name = names.get(raw_key)
        sub = f"{path}.{raw_key}" if path else raw_key
        if name is None:
            close = difflib.get_close_matches(raw_key, [*fields, *names], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise Invalid(f"unknown key {raw_key!r}; {hint}accepted keys: {', '.join(sorted(fields))}", sub)
        if name in values:
            raise Invalid(f"given twice (as {name!r} and an alias)", sub)
        f = fields[name]
        try:
            if "section" in f.metadata:
                values[name] = build(f.metadata["section"], raw, sub)
            else:
                values[name] = f.metadata["conv"](raw)
        except Invalid as e:
            if "section" in f.metadata:
                raise
            raise Invalid(str(e), sub + e.subpath) from None
    missing = [n for n, f in fields.items() if f.default is REQUIRED and n not in values]
    if missing:
        sub = f"{path}.{missing[0]}" if path else missing[0]
        raise Invalid(f"missing key {missing[0]!r} ({fields[missing[0]].metadata['doc']})", sub)
    obj = cls(**values)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except Invalid as e:
            raise Invalid(str(e), (path + e.subpath) if path else e.subpath.lstrip(".")) from None
    return obj


def read_toml(path: str) -> dict:
    """Read a TOML file; raises ConfigError naming the file on any read or syntax error."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None


@dataclass(frozen=True)
class Override:
    """A value from the command line or the environment, placed at a key path."""

    path: tuple[str, ...]
    value: Any
    origin: str  # 'command line --bind' or 'environment WMPROXY_BIND'


def load(file: Optional[str], overrides: list[Override] = (), default: Optional[dict] = None) -> Config:
    """Load a config: the TOML ``file`` (or ``default`` when no file), then ``overrides``.

    Blocks on file I/O only. Raises ConfigError naming the source and key path.
    """
    data = read_toml(file) if file else dict(default or {})
    origins: dict[str, str] = {}
    for o in overrides:
        node = data
        for part in o.path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(file or "", ".".join(o.path[:-1]), "expected a table")
        node[o.path[-1]] = o.value
        origins[".".join(o.path)] = o.origin
    try:
        return build(Config, data)
    except Invalid as e:
        source = next((src for p, src in origins.items() if e.subpath == p or e.subpath.startswith(p + "[")), None)
        fallback = file or ("command line / environment" if origins else "built-in default")
        raise ConfigError(source or fallback, e.subpath, str(e)) from None
