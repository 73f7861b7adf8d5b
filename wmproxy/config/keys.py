"""The building blocks of the configuration: addresses and the value converters (each raises
Invalid with what is accepted), ``key``/``section`` to declare a field, and :func:`build`, which
walks a dict against a section's dataclass (unknown keys are errors, with "did you mean")."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import ConfigError
from ..prot.frame import HeaderOp, HeaderRule

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


_NAMESERVER_HELP = "an IP address, with a port if not 53: '192.0.2.53', '192.0.2.53:5353', '::1' or '[::1]:5353'"


def nameserver_address(text: str) -> tuple[str, int]:
    """A name server's (IP, port) from '192.0.2.53', '192.0.2.53:5353', '::1' or '[::1]:5353'
    (port 53 unless given). Raises ValueError."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, sep, port = host[1:].partition("]:")
        if not sep:
            raise ValueError(text)
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(text)
    return str(ipaddress.ip_address(host)), int(port)


def to_nameserver(value: Any) -> str:
    """A name server's address (a resolver's address is an IP: no name to resolve first)."""
    if not isinstance(value, str):
        raise Invalid(f"expected {_NAMESERVER_HELP}, got {type(value).__name__} {value!r}")
    try:
        nameserver_address(value)
    except ValueError:
        raise Invalid(f"expected {_NAMESERVER_HELP}, got {value!r}") from None
    return value.strip()


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


MAX_WORKERS = 256


def to_workers(value: Any) -> int:
    """A number of worker processes: 1 to MAX_WORKERS, or "auto" (0): one per core this
    process may run on."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    try:
        return int_range(1, MAX_WORKERS)(value)
    except Invalid:
        raise Invalid(f'expected a whole number from 1 to {MAX_WORKERS}, or "auto", got {value!r}') from None


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


_BANDWIDTH_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?\s*$",
                           re.IGNORECASE)


def to_bandwidth(value: Any) -> float:
    """Bytes a second from '4m/s' (MiB), '512k/s', '1g/s', '10m/2s' or a number; 0 or '' for no limit."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if value == "":
        return 0.0
    if isinstance(value, str):
        m = _BANDWIDTH_RE.match(value)
        if m:
            size = float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
            per = float(m.group(3) or 1) * _DURATION_UNITS[(m.group(4) or "s").lower()]
            if per > 0:
                return size / per
    raise Invalid(f"expected a bandwidth like '4m/s', '512k/s' or '1g/s' (bytes a second; 0: no limit), got {value!r}")


def rate_limit_key(what: str) -> Any:
    """``rate_limit``: bytes a second ``what`` may move, each way."""
    return key(to_bandwidth, 0.0, f"bandwidth of {what}, each way, as a token bucket: '4m/s', '512k/s' (0: no limit)")


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

    def matches(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
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


def proxy_protocol_key(where: str) -> Any:
    """``proxy_protocol``: the listener(s) ``where`` read a PROXY protocol header first."""
    return key(to_bool, False, f"{where}: each connection starts with a PROXY protocol header (v1 or v2, "
                               f"from an L4 balancer); its client address stands for the peer's")


def proxy_protocol_from_key(name: str) -> Any:
    """``proxy_protocol_from``: the peers trusted to send that header (``name``: the switch)."""
    return key(list_of(to_network), (), f"the balancers allowed to send it (required with {name}); any other peer "
                                        f"is refused")


def check_proxy_protocol(on: bool, sources: tuple, name: str) -> None:
    """Invalid when the switch ``name`` is on without the ``<name>_from`` list that says whom to believe."""
    if on and not sources:
        raise Invalid(f"{name} = true needs {name}_from: the networks of the balancers that send the header "
                      f"(a header from anyone else would let them choose their address)", f".{name}_from")


def section(cls: type, doc: str) -> Any:
    """Declare an optional sub-table; None when absent."""
    return field(default=None, metadata={"section": cls, "doc": doc, "aliases": ()})


def _unique_names(items: tuple, what: str, path: str) -> list[str]:
    """The ``name`` of each item; Invalid at the first one used twice."""
    names = [item.name for item in items]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise Invalid(f"{what} name {name!r} is used twice", f"{path}[{i}].name")
    return names


def to_port_range(value: Any) -> tuple[int, int]:
    """'2000-2999' or a single port (number or string) -> (low, high)."""
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    low, _, high = text.partition("-")
    if low.isdigit() and (high.isdigit() or not high):
        lo, hi = int(low), int(high or low)
        if 1 <= lo <= hi <= 65535:
            return lo, hi
    raise Invalid(f"expected a port or a range like 2000-2999, got {value!r}")

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


YAML_SUFFIXES = (".yaml", ".yml")


def read_yaml(path: str) -> dict:
    """Read a YAML file with PyYAML's safe loader (no tags that build objects); raises
    ConfigError naming the file (and the line) on any read or syntax error, or when the
    document is not a mapping of keys."""
    import yaml  # type: ignore[import-untyped]  # (only a YAML config needs it; PyYAML has no type hints)

    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(path, "", f"not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a mapping of keys at the top, got a {type(data).__name__}")
    return _string_keys(data, path, "")


def _string_keys(node: Any, path: str, where: str) -> Any:
    """YAML allows keys that are numbers, booleans or null; a config's keys are names."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            sub = f"{where}.{k}" if where else str(k)
            if not isinstance(k, str):
                raise ConfigError(path, sub, f"a key must be a name, got {k!r}")
            out[k] = _string_keys(v, path, sub)
        return out
    if isinstance(node, list):
        return [_string_keys(v, path, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def read_config_file(path: str) -> dict:
    """A config file's keys: YAML for a .yaml/.yml name, TOML for any other."""
    return read_yaml(path) if path.lower().endswith(YAML_SUFFIXES) else read_toml(path)
