"""The Rust wmproxy's config files, read into this project's keys (one place for all of it).

A file is read as the original's when it uses a key or a value shape that only the original
has (``[proxy] server``, ``ts``, ``mode``, ``[[proxy.mappings]]``, ``flag = 7``, ``limit_req =
"zone=.."``, a location ``rule = "@ws"``...). It is then translated whole, with the original's
meanings: :func:`translate` gives the native dict (built and validated by :func:`build` as any
config), what was read how (``Reading.notes``, printed by ``--check``) and the keys that only
mean something in the Rust program (``Reading.warnings``, one line each at start and reload).
Keys of neither program stay errors, named by their path in the file.

The translation, in short (docs/MIGRATING.md has the table):

- ``[proxy]`` (or the same keys at the top, the 0.1 shape): with ``server`` (or ``mode =
  "client"``) a center client: ``server``, ``ts`` -> ``[center] tls``, ``two_way_tls`` -> its
  certificate, ``username``/``password`` -> its account, ``domain`` -> ``server_name``,
  ``bind_addr`` -> the local ``[proxy]`` (its traffic exits at the server), ``mappings`` ->
  ``[[mappings]]``. With ``mode = "server"`` (or ``center_addr``, or a ``map_*_bind``) a center
  server: ``bind_addr`` (or ``center_addr``) -> ``[center] bind``, ``tc`` -> ``tls``,
  ``two_way_tls`` -> ``client_ca``, ``map_*`` as they are, ``username``/``password`` -> the
  account and the forward proxy's login. Otherwise a forward proxy.
- ``[http]``: the keys every level may carry in the original (timeouts, ``limit_req``,
  ``allow_ip``, ``proxy_url``...) are inherited down to each location; locations keep the
  original's first-match order (each rule becomes an anchored regex, tried in file order);
  ``bind_ssl`` becomes a TLS twin of the server; nested upstreams are hoisted.
- ``[stream]``: ``bind_addr`` lists and ranges become one server each, ``proxy_url`` of the
  websocket modes an upstream of its own, ``timeout`` the idle time.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from .keys import Invalid, to_addr

# The original's keys, per table (src/option.rs, src/reverse/*.rs, src/mapping/config.rs,
# src/plugins/file_server.rs). ``bind_addr``/``mode``/``center`` are the 0.1 names its
# example files still use.
PROXY_KEYS = frozenset((
    "server_id", "bind", "bind_addr", "center_addr", "flag", "server", "username", "password", "udp_bind",
    "map_http_bind", "map_https_bind", "map_tcp_bind", "map_proxy_bind", "map_cert", "map_key", "ts", "tc",
    "two_way_tls", "domain", "cert", "key", "mappings", "mode", "center"))
TOP_KEYS = frozenset(("proxy", "http", "stream", "control", "disable_stdout", "disable_control", "pidfile",
                      "default_level", "reverse")) | PROXY_KEYS
MAPPING_KEYS = frozenset(("name", "mode", "local_addr", "domain", "headers"))
COMMON_KEYS = frozenset((
    "max_read_buf", "rate_limit", "client_read_timeout", "client_write_timeout", "client_timeout",
    "client_ka_timeout", "proxy_connect_timeout", "proxy_read_timeout", "proxy_write_timeout", "proxy_timeout",
    "log_format", "log_names", "access_log", "error_log", "limit_req", "allow_ip", "deny_ip", "domain", "proxy_url",
    "match_names"))
HTTP_KEYS = frozenset(("server", "upstream", "limit_req_zone")) | COMMON_KEYS
SERVER_KEYS = frozenset(("bind_addr", "bind_ssl", "up_name", "root", "cert", "key", "bind_mode", "headers",
                         "location", "upstream", "server_name", "timeout")) | COMMON_KEYS
LOCATION_KEYS = frozenset(("rule", "file_server", "static_response", "headers", "method", "up_name", "is_ws",
                           "root", "upstream", "try_paths", "reverse_proxy", "proxy_pass")) | COMMON_KEYS
UPSTREAM_KEYS = frozenset(("name", "bind", "server"))
UPSTREAM_SERVER_KEYS = frozenset(("addr", "weight", "fail_timeout", "fall_times", "rise_times"))
FILE_SERVER_KEYS = frozenset(("root", "prefix", "default_mimetype", "ext_mimetype", "cache_time", "robots",
                              "path404", "hide", "index", "status", "precompressed", "disable_compress", "browse",
                              "cors", "comm"))
RULE_KEYS = frozenset(("path", "client_ip", "remote_ip", "host", "method", "scheme"))

# keys without an equivalent here: accepted, with this reason in the warning
RUST_ONLY = {
    "server_id": "the Rust program's proxy id",
    "max_read_buf": "a read buffer size of the Rust program",
    "client_write_timeout": "each write here is bounded by the connection's idle time",
    "proxy_write_timeout": "each write here is bounded by proxy_read_timeout's idle time",
    "match_names": "named matchers of the Rust program",
    "default_mimetype": "files of unknown type are application/octet-stream",
    "comm": "a file server's own copy of the common keys",
    "up_name": "the Rust program's name of the location's upstream",
    "is_ws": "a websocket upgrade passes through every proxy_url location",
    "bind_mode": "[http] servers speak HTTP",
    "fall_times": "passive checks take a server out after max_fails failures",
    "rise_times": "a server taken out comes back after fail_timeout",
    "center": "the 0.1 switch; [proxy] mode or center_addr says it",
}

DEFAULT_CONTROL = "127.0.0.1:8837"  # the original's control port, on unless disable_control
LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warning", "warning": "warning",
          "error": "error", "off": "error"}


@dataclass
class Reading:
    """A file read as the original's: the native keys, and what was done with each."""

    data: dict
    notes: list[str] = field(default_factory=list)  # "proxy.server -> center.server"
    warnings: list[str] = field(default_factory=list)  # keys accepted without effect here
    formats_seen: set[str] = field(default_factory=set)  # log formats warned about

    def note(self, text: str) -> None:
        self.notes.append(text)

    def warn(self, path: str, key: str, reason: str = "") -> None:
        self.warnings.append(f"{path}: accepted, no effect here ({reason or RUST_ONLY.get(key, 'Rust wmproxy only')})")


def _dict(node: Any) -> dict:
    return node if isinstance(node, dict) else {}


def _tables(node: Any) -> list:
    return [t for t in node if isinstance(t, dict)] if isinstance(node, list) else []


def _fields(cls: type) -> frozenset:
    """A native table's keys and their aliases."""
    import dataclasses

    return frozenset(n for f in dataclasses.fields(cls) for n in (f.name, *f.metadata["aliases"]))


def _only_theirs(table: Any, theirs: frozenset, cls: type, path: str) -> str:
    """The path of the first key of ``table`` that only the Rust wmproxy has there, or ""."""
    keys = sorted(set(table) & (theirs - _fields(cls))) if isinstance(table, dict) else []
    return f"{path}{keys[0]}" if keys else ""


def original_mark(data: dict) -> str:
    """What in the file only the Rust wmproxy has, "" when nothing: a key at a place where
    this project has no such key (its path), or a value shape (its path and what it is). A
    file with one is read as the Rust wmproxy's; the errors then name it, so that one key put
    in the wrong table of one of our files is found from the error alone."""
    from . import (Config, FileServerConfig, HttpConfig, HttpLocationConfig, HttpServerConfig, ProxyConfig,
                   StreamServerConfig, StreamUpstreamConfig)

    mark = _only_theirs(data, TOP_KEYS, Config, "")
    if mark or ("mappings" in data and "center" not in data):
        return mark or "mappings without a [center] table"
    proxy = data.get("proxy")
    mark = _only_theirs(proxy, PROXY_KEYS, ProxyConfig, "proxy.")
    if mark:
        return mark
    if isinstance(proxy, dict) and isinstance(proxy.get("flag"), int):
        return "proxy.flag as a number"
    if isinstance(proxy, dict) and "udp_bind" in proxy and ":" not in str(proxy["udp_bind"]):
        return "proxy.udp_bind without a port"
    http = data.get("http")
    mark = _only_theirs(http, HTTP_KEYS, HttpConfig, "http.")
    if mark:
        return mark
    for i, srv in enumerate(_tables(_dict(http).get("server"))):
        where = f"http.server[{i}]."
        mark = _only_theirs(srv, SERVER_KEYS, HttpServerConfig, where)
        if mark:
            return mark
        if isinstance(srv.get("bind_addr"), str) and re.search(r"[\s,-]|^:", srv["bind_addr"].strip()):
            return f"{where}bind_addr as a list or range"
        for j, loc in enumerate(_tables(srv.get("location"))):
            at = f"{where}location[{j}]."
            rule = loc.get("rule")
            mark = _only_theirs(loc, LOCATION_KEYS, HttpLocationConfig, at) or _only_theirs(
                loc.get("file_server"), FILE_SERVER_KEYS, FileServerConfig, f"{at}file_server.")
            if mark:
                return mark
            if isinstance(rule, dict) or isinstance(rule, str) and "*" in rule and not rule.startswith("~"):
                return f"{at}rule as a table or a glob"
            if isinstance(loc.get("limit_req"), str):
                return f"{at}limit_req as a string"
            if isinstance(loc.get("method"), str) and " " in loc["method"].strip():
                return f"{at}method as a list of words"
    stream = _dict(data.get("stream"))
    for i, u in enumerate(_tables(stream.get("upstream"))):
        mark = _only_theirs(u, UPSTREAM_KEYS, StreamUpstreamConfig, f"stream.upstream[{i}].")
        if mark:
            return mark
    for i, srv in enumerate(_tables(stream.get("server"))):
        mark = _only_theirs(srv, SERVER_KEYS, StreamServerConfig, f"stream.server[{i}].")
        if mark:
            return mark
    return ""


def translate(data: dict) -> Reading:
    """The original's config ``data`` as this project's keys. Raises Invalid (with the key
    path in the file) for a key neither program knows or a value the original would refuse."""
    r = Reading({})
    out = r.data
    top = dict(data)
    proxy_tables = [("proxy", _dict(top.pop("proxy", None)))] if isinstance(data.get("proxy"), dict) else []
    flat = {k: top.pop(k) for k in list(top) if k in PROXY_KEYS}  # the 0.1 shape: [proxy]'s keys at the top
    if flat:
        proxy_tables.append(("", flat))
    for where, table in proxy_tables:
        _proxy(r, table, where)
    if "reverse" in top:
        _reverse(r, top.pop("reverse"), flat)
    level = top.pop("default_level", None)
    if level is not None:
        if str(level).lower() not in LEVELS:
            raise Invalid(f"expected one of {', '.join(LEVELS)}, got {level!r}", "default_level")
        out["log_level"] = LEVELS[str(level).lower()]
        r.note(f"default_level = {level!r} -> log_level = {out['log_level']!r}")
    quiet = top.pop("disable_stdout", False) is True
    disabled = top.pop("disable_control", False) is True
    if disabled:
        out["control"] = ""
        r.note("disable_control = true -> control = '' (no control API)")
    elif "control" not in top:
        out["control"] = DEFAULT_CONTROL
        r.note(f"control: the Rust wmproxy's default, {DEFAULT_CONTROL}")
    if "http" in top:
        _http(r, top.pop("http"))
    if "stream" in top:
        _stream(r, top.pop("stream"))
    for k, v in top.items():  # this project's own keys, as they are
        out[k] = v
    if quiet and "log_file" not in out:
        out["log_file"] = os.devnull
        r.note("disable_stdout = true -> log_file = /dev/null (no log: set log_file or [http] error_log to keep one)")
    return r


# ---------------------------------------------------------------------------------------
# [proxy]: forward proxy, center server or center client


def _flag(value: Any, path: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 8:
        return " ".join(name for bit, name in ((1, "http"), (2, "https"), (4, "socks5")) if value & bit)
    if isinstance(value, str) and value.strip().isdigit():
        return _flag(int(value.strip()), path)
    if isinstance(value, str):
        return value
    raise Invalid(f"expected a number from 1 to 7 (1 http, 2 https, 4 socks5) or words like 'http https socks5', "
                  f"got {value!r}", path)


def _udp_bind(value: Any) -> str:
    """The original's bare IP ('0.0.0.0', '::') -> 'IP:0' (a relay port per association)."""
    text = str(value).strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return text  # (an address with a port, read as this project's)
    return f"[{text}]:0" if ":" in text else f"{text}:0"


def _join(path: str, k: str) -> str:
    return f"{path}.{k}" if path else k


def _proxy(r: Reading, p: dict, where: str) -> None:
    from .keys import accepted_keys
    from .proxy import ProxyConfig

    native = set(accepted_keys(ProxyConfig)) - PROXY_KEYS  # this project's own [proxy] keys pass through
    for k in p:
        if k not in PROXY_KEYS and not (where and k in native):
            raise Invalid(f"unknown key {k!r}; the Rust wmproxy's [proxy] keys: {', '.join(sorted(PROXY_KEYS))} "
                          f"(and this project's: {', '.join(sorted(native))})", _join(where, k))
    path = lambda k: _join(where, k)  # noqa: E731
    if "bind" in p and "bind_addr" in p:
        raise Invalid("given twice (as bind and bind_addr)", path("bind_addr"))
    bind_key = "bind_addr" if "bind_addr" in p else "bind"
    bind = p.get(bind_key)
    mode = str(p.get("mode", "")).lower()
    if mode not in ("", "server", "client"):
        raise Invalid(f"expected 'server' or 'client', got {p['mode']!r}", path("mode"))
    maps = [k for k in ("map_http_bind", "map_https_bind", "map_tcp_bind", "map_proxy_bind") if p.get(k)]
    is_server = mode == "server" or (mode == "" and not p.get("server") and bool(p.get("center_addr") or maps))
    is_client = not is_server and (mode == "client" or bool(p.get("server")))
    if mode == "client" and not p.get("server"):
        raise Invalid("a client (mode = \"client\") needs server: the center server's address", path("server"))
    _warn_rust_only(r, p, where, skip=("key",))
    proxy: dict = {k: v for k, v in p.items() if k in native}
    if "flag" in p:
        proxy["flag"] = _flag(p["flag"], path("flag"))
        if proxy["flag"] != p["flag"]:
            r.note(f"{path('flag')} = {p['flag']!r} -> proxy.flag = {proxy['flag']!r}")
    if p.get("udp_bind") not in (None, ""):
        proxy["udp_bind"] = _udp_bind(p["udp_bind"])
        r.note(f"{path('udp_bind')} = {p['udp_bind']!r} -> proxy.udp_bind = {proxy['udp_bind']!r}")
    user, password = p.get("username"), p.get("password")
    cert, key = p.get("cert") or "", p.get("key") or ""
    center: dict = {}
    if is_server:
        center_bind = p.get("center_addr") or bind
        if not center_bind:
            raise Invalid("a center server needs bind_addr (or center_addr): the address its clients link to",
                          path("bind_addr"))
        center["bind"] = center_bind
        if p.get("center_addr"):
            proxy["bind"] = bind or "127.0.0.1:8090"
            r.note(f"{path('center_addr')} -> center.bind; {path(bind_key)} -> proxy.bind (the forward proxy)")
        else:
            proxy["bind"] = ""
            r.note(f"{path(bind_key)} -> center.bind (mode = server: the center clients link here; the forward "
                   f"proxy serves only their proxy traffic, [proxy] bind = '')")
        center["tls"] = bool(p.get("tc", False))
        if center["tls"]:
            center["cert"], center["key"] = _own_pair(cert, key, path)
            r.note(f"{path('tc')} = true -> center.tls with cert {cert!r}" if cert else
                   f"{path('tc')} = true without cert -> cert = \"auto\": this install's own pair, made on first "
                   f"start (the original's built-in pair, private key included, is not shipped)")
            if p.get("two_way_tls"):
                center["client_ca"] = cert or "pin"
                r.note(f"{path('two_way_tls')} = true -> center.client_ca = {cert!r} (clients present a "
                       f"certificate signed by it, as the original)" if cert else
                       f"{path('two_way_tls')} = true without cert -> client_ca = \"pin\": each client's "
                       f"certificate pinned on first use, then required (weaker than a CA)")
        else:
            r.note(f"{path('tc')} is off -> center.tls = false (plain TCP: a warning at start)")
            if p.get("two_way_tls"):
                raise Invalid("two_way_tls needs tc = true (the TLS it authenticates)", path("two_way_tls"))
        for k in ("map_http_bind", "map_https_bind", "map_tcp_bind", "map_proxy_bind"):
            if p.get(k):
                center[k] = p[k]
        for k in ("map_cert", "map_key"):
            if p.get(k):
                center[k] = [p[k]]
        if p.get("map_https_bind") and not p.get("map_cert"):
            r.note("map_https_bind without map_cert: https mappings are passed through by SNI only (the original's "
                   "built-in certificate is not shipped)")
        if user is not None or password is not None:
            center["username"], center["password"] = user or "", password or ""
            proxy["username"], proxy["password"] = user or "", password or ""
            r.note(f"{path('username')}/password -> center account and proxy login")
        if p.get("mappings"):
            r.warn(path("mappings"), "mappings", "a server publishes its clients' mappings")
        if p.get("server"):
            raise Invalid("mode = \"server\" and server (the address of a center server to link to) contradict",
                          path("server"))
    elif is_client:
        servers = p["server"]
        center["server"] = servers
        center["tls"] = bool(p.get("ts", False))
        if center["tls"]:
            center["ca"] = cert or "pin"
            if p.get("domain"):
                center["server_name"] = p["domain"]
            r.note(f"{path('ts')} = true -> center.tls, the server verified with {cert!r}" if cert else
                   f"{path('ts')} = true without cert -> ca = \"pin\": the server's certificate pinned on first use "
                   f"(weaker than a CA)")
            if p.get("two_way_tls"):
                center["cert"], center["key"] = _own_pair(cert, key, path)
                r.note(f"{path('two_way_tls')} = true -> center.cert/key (this client's certificate)" if cert else
                       f"{path('two_way_tls')} = true without cert -> cert = \"auto\": this install's own pair, "
                       f"pinned by the server on first use")
        else:
            r.note(f"{path('ts')} is off -> center.tls = false (plain TCP: a warning at start)")
        if user is not None or password is not None:
            center["username"], center["password"] = user or "", password or ""
            r.note(f"{path('username')}/password -> center account (proved with HMAC, never sent)")
        proxy["bind"] = bind or "127.0.0.1:8090"
        r.note(f"{path(bind_key)} -> proxy.bind (a local proxy whose traffic exits at the center server)")
        if p.get("mappings") is not None:
            r.data["mappings"] = _mappings(r, p["mappings"], path("mappings"))
    else:
        proxy["bind"] = bind or "127.0.0.1:8090"
        if user is not None or password is not None:
            proxy["username"], proxy["password"] = user or "", password or ""
        for k in ("ts", "tc", "two_way_tls", "cert", "key", "domain"):
            if p.get(k):
                r.warn(path(k), k, "TLS to or from a center: this file has no server and no mode = \"server\"")
    if center:
        r.data["center"] = center
    r.data["proxy"] = proxy


def _own_pair(cert: str, key: str, path: Callable[[str], str]) -> tuple[str, str]:
    """This end's certificate and key: the files given, or, with neither, the install's own
    pair (cert = key = "auto"). Invalid with one of them only."""
    if bool(cert) != bool(key):
        raise Invalid("cert and key go together", path("key" if cert else "cert"))
    return (cert, key) if cert else ("auto", "auto")


def _mappings(r: Reading, items: Any, path: str) -> list:
    if not isinstance(items, list):
        raise Invalid(f"expected an array of tables ([[proxy.mappings]]), got {items!r}", path)
    out = []
    for i, m in enumerate(items):
        sub = f"{path}[{i}]"
        if not isinstance(m, dict):
            raise Invalid(f"expected a table, got {m!r}", sub)
        mapping = dict(m)
        if not mapping.get("domain"):
            mapping.pop("domain", None)
        if "headers" in mapping:
            mapping["headers"] = _headers(mapping["headers"], f"{sub}.headers")
        if mapping.get("mode") in ("tcp", "proxy") and "remote_bind" not in mapping:
            r.note(f"{sub} ({mapping.get('mode')} {mapping.get('name')!r}) -> published on the server's "
                   f"map_{mapping['mode']}_bind")
        out.append(mapping)
    return out


# ---------------------------------------------------------------------------------------
# header rules, the 0.1 file server


_VAR = re.compile(r"\$(\w+)")


def _header(value: Any, path: str) -> str:
    """'proxy + from $url' or ["proxy", "+", "from", "$url"] -> 'proxy + from {url}'."""
    if isinstance(value, list) and all(isinstance(w, str) for w in value):
        words = [w if re.match(r"^[^\s'\"]+$", w) else "'" + w.replace("'", "") + "'" for w in value]
        value = " ".join(words)
    if not isinstance(value, str):
        raise Invalid(f"expected a header rule as a string ('proxy + from {{url}}') or a list ([\"proxy\", \"+\", "
                      f"\"from\", \"$url\"]), got {value!r}", path)
    return _VAR.sub(r"{\1}", value)


def _headers(value: Any, path: str) -> list:
    items = value if isinstance(value, list) and not (value and all(isinstance(w, str) for w in value)
                                                      and value[0] in ("proxy", "+", "-", "?")
                                                      and not any(" " in w for w in value)) else [value]
    return [_header(v, f"{path}[{i}]") for i, v in enumerate(items)]


def _reverse(r: Reading, value: Any, flat: dict) -> None:
    """0.1's ``reverse.file_server`` served on the top-level bind_addr."""
    rev = _dict(value)
    for k in rev:
        if k != "file_server":
            raise Invalid(f"unknown key {k!r}; the 0.1 reverse table has file_server", f"reverse.{k}")
    fs = _dict(rev.get("file_server"))
    bind = flat.get("bind_addr") or flat.get("bind") or "127.0.0.1:8090"
    served = _file_server(r, fs, "reverse.file_server", None)
    r.data.setdefault("http", {}).setdefault("server", []).append(
        {"bind": bind, "location": [{"rule": "/", "file_server": served}]})
    r.data.pop("proxy", None)
    r.note(f"reverse.file_server -> an [[http.server]] on {bind} serving {served['root']!r}")


# ---------------------------------------------------------------------------------------
# [http]


@dataclass
class _Inherited:
    """The original's CommonConfig, as it flows from [http] to a server to a location."""

    values: dict = field(default_factory=dict)

    def under(self, table: dict) -> "_Inherited":
        return _Inherited({**self.values, **{k: v for k, v in table.items() if k in COMMON_KEYS}})


def _warn_rust_only(r: Reading, table: dict, path: str, skip: tuple = ()) -> None:
    """One warning per key of ``table`` that only means something in the Rust program."""
    for k in table:
        if k in RUST_ONLY and k not in skip:
            r.warn(_join(path, k), k)


def _check_keys(table: dict, allowed: frozenset, path: str, what: str) -> None:
    for k in table:
        if k not in allowed:
            raise Invalid(f"unknown key {k!r}; the Rust wmproxy's {what} keys: {', '.join(sorted(allowed))}",
                          _join(path, k))


def _log_target(spec: Any, names: dict, path: str) -> tuple[str, str]:
    """'access main trace' -> (file of log_names['access'], its level)."""
    words = str(spec).split()
    if not words:
        return "", ""
    target = str(names.get(words[0], "")).split()
    if not target:
        raise Invalid(f"{words[0]!r} is not in log_names (known: {', '.join(names) or 'none'})", path)
    return target[0], (words[2] if len(words) > 2 else target[1] if len(target) > 1 else "")


def _http(r: Reading, value: Any) -> None:
    http = _dict(value)
    if not isinstance(value, dict):
        raise Invalid(f"expected a table, got {value!r}", "http")
    _check_keys(http, HTTP_KEYS | {"real_ip_from", "real_ip_header"}, "http", "[http]")
    out: dict = {k: http[k] for k in ("real_ip_from", "real_ip_header") if k in http}
    base = _Inherited().under(http)
    names = _dict(http.get("log_names"))
    for key in ("access_log", "error_log"):
        if key in http:
            file, lvl = _log_target(http[key], names, f"http.{key}")
            native = "access_log_file" if key == "access_log" else "log_file"
            if file and native not in r.data:
                r.data[native] = file
                r.note(f"http.{key} = {http[key]!r} -> {native} = {file!r}")
            if key == "error_log" and lvl and "log_level" not in r.data and lvl.lower() in LEVELS:
                r.data["log_level"] = LEVELS[lvl.lower()]
    _warn_rust_only(r, http, "http")
    zones: dict[str, dict] = {}
    for name, spec in _dict(http.get("limit_req_zone")).items():
        zones[name] = _zone(spec, f"http.limit_req_zone.{name}")
    upstreams = [_upstream(r, u, f"http.upstream[{i}]") for i, u in enumerate(_list(http.get("upstream"),
                                                                                     "http.upstream"))]
    servers: list = []
    for i, srv in enumerate(_list(http.get("server"), "http.server")):
        servers += _server(r, srv, f"http.server[{i}]", base, zones, upstreams)
    out["server"] = servers
    out["upstream"] = upstreams
    r.data["http"] = out


def _list(value: Any, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise Invalid(f"expected an array of tables, got {value!r}", path)
    return value


def _zone(spec: Any, path: str) -> dict:
    """'{client_ip} limit=10m rate=1000r/s' -> {rate: 1000.0}."""
    words = str(spec).split()
    if not words or words[0] != "{client_ip}":
        raise Invalid(f"expected a zone like '{{client_ip}} limit=10m rate=10r/s' (requests are counted per client "
                      f"address here), got {spec!r}", path)
    rate = None
    for w in words[1:]:
        k, _, v = w.partition("=")
        if k == "rate":
            rate = _rate(v, path)
        elif k != "limit":
            raise Invalid(f"expected limit= and rate=, got {w!r}", path)
    if rate is None:
        raise Invalid(f"a zone needs rate=, like rate=10r/s; got {spec!r}", path)
    return {"rate": rate}


def _rate(text: str, path: str) -> float:
    m = re.match(r"^(\d+(?:\.\d+)?)r?/(\d*)(ms|s|min|m|h)?$", text.strip())
    if not m:
        raise Invalid(f"expected a rate like 10r/s or 600r/min, got {text!r}", path)
    per = float(m.group(2) or 1) * {"ms": 0.001, "s": 1, "min": 60, "m": 60, "h": 3600, None: 1}[m.group(3)]
    return float(m.group(1)) / per


def _limit_req(spec: Any, zones: dict, path: str) -> dict:
    """'zone=limit brust=1' (the original's spelling; burst too) -> {rate, burst}."""
    zone, burst = "", 0
    for w in str(spec).split():
        k, _, v = w.partition("=")
        if k == "zone":
            zone = v
        elif k in ("brust", "burst") and v.isdigit():
            burst = int(v)
        else:
            raise Invalid(f"expected 'zone=NAME brust=N', got {spec!r}", path)
    if zone not in zones:
        raise Invalid(f"no limit_req_zone named {zone!r} (known: {', '.join(zones) or 'none'})", path)
    return {**zones[zone], "burst": burst}


def _upstream(r: Reading, u: dict, path: str) -> dict:
    _check_keys(u, UPSTREAM_KEYS | {"method", "keepalive", "health_check", "send_proxy_protocol"}, path, "upstream")
    out = {k: v for k, v in u.items() if k not in ("bind", "server")}
    servers = []
    for i, s in enumerate(_list(u.get("server", []), f"{path}.server")):
        sub = f"{path}.server[{i}]"
        _check_keys(s, UPSTREAM_SERVER_KEYS | {"max_fails"}, sub, "upstream server")
        servers.append({k: v for k, v in s.items() if k not in ("fall_times", "rise_times")})
        for k in ("fall_times", "rise_times"):
            if k in s:
                r.warn(f"{sub}.{k}", k)
    out["server"] = servers
    if "bind" in u and u["bind"] not in ("", "tcp", "udp"):
        raise Invalid(f"expected 'tcp' or 'udp', got {u['bind']!r}", f"{path}.bind")
    return out


def _addrs(value: Any, path: str) -> list[str]:
    """The original's address lists: 'a:1 b:2', 'a:1,b:2', '127.0.0.1:8869-:8871' (a range), ':80'."""
    if isinstance(value, list):
        return [a for v in value for a in _addrs(v, path)]
    text = str(value).strip()
    if "-" in text:
        start, _, end = text.partition("-")
        host, _, low = start.rpartition(":")
        _, _, high = end.rpartition(":")
        if not (low.isdigit() and high.isdigit() and int(low) <= int(high) <= 65535 and int(high) - int(low) < 1024):
            raise Invalid(f"expected a range like '127.0.0.1:8869-:8871', got {value!r}", path)
        return [f"{host or '0.0.0.0'}:{port}" for port in range(int(low), int(high) + 1)]
    out = []
    for a in re.split(r"[\s,]+", text):
        if a:
            out.append(f"0.0.0.0{a}" if a.startswith(":") else a)
    return out


def _server(r: Reading, srv: dict, path: str, base: _Inherited, zones: dict, upstreams: list) -> list:
    _check_keys(srv, SERVER_KEYS | {"bind", "client_header_timeout", "client_body_timeout", "max_header_size",
                                    "max_headers", "max_connections_per_ip", "proxy_protocol",
                                    "proxy_protocol_from"}, path, "[[http.server]]")
    inherit = base.under(srv)
    out: dict = {k: srv[k] for k in ("client_header_timeout", "client_body_timeout", "max_header_size", "max_headers",
                                     "max_connections_per_ip", "proxy_protocol", "proxy_protocol_from") if k in srv}
    out["client_max_body_size"] = 0  # (the original takes a body of any size: so does its config here)
    names = [n for n in _name_list(srv.get("server_name")) + _name_list(inherit.values.get("domain"))]
    up_name = srv.get("up_name", "")
    if up_name and re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.*-]*[A-Za-z0-9*])?$", up_name) and "." in up_name:
        names.append(up_name)
        r.note(f"{path}.up_name = {up_name!r} -> server_name (the Host it answers)")
    if names:
        out["server_name"] = names
    if "headers" in srv:
        out["headers"] = _headers(srv["headers"], f"{path}.headers")
    for k in ("client_read_timeout", "client_timeout", "client_ka_timeout"):
        if k in inherit.values:
            out["client_read_timeout"] = inherit.values[k]
    if "timeout" in srv:
        r.warn(f"{path}.timeout", "timeout", "[http] servers have client_read_timeout")
    _warn_rust_only(r, srv, path, skip=("up_name",))
    locations = []
    for i, loc in enumerate(_list(srv.get("location", []), f"{path}.location")):
        got = _location(r, loc, f"{path}.location[{i}]", inherit, srv, zones, upstreams)
        if got is not None:
            locations.append(got)
    if not locations:
        raise Invalid("a server needs at least one location (named ones aside)", f"{path}.location")
    out["location"] = locations
    plain = _addrs(srv.get("bind_addr", srv.get("bind", [])), f"{path}.bind_addr")
    tls = _addrs(srv.get("bind_ssl", []), f"{path}.bind_ssl")
    cert, key = srv.get("cert", ""), srv.get("key", "")
    made = []
    if plain:
        made.append({**out, "bind": plain, **({"cert": cert, "key": key} if cert and not tls else {})})
    if tls:
        if not (cert and key):
            raise Invalid("bind_ssl needs cert and key", f"{path}.cert")
        made.append({**out, "bind": tls, "cert": cert, "key": key})
        r.note(f"{path}.bind_ssl -> a TLS twin of the server on {', '.join(tls)}")
    if not made:
        raise Invalid("a server needs bind_addr or bind_ssl", f"{path}.bind_addr")
    return made


def _name_list(value: Any) -> list:
    if not value:
        return []
    return [n for n in (value if isinstance(value, list) else str(value).split()) if n]


_REGEX_CHARS = set("\\^$+?()[]{}|")


def _rule(value: Any, path: str) -> tuple[str, dict]:
    """The original's matcher -> (a rule tried in file order, conditions). A path with '*' is
    a glob (prefix, then suffix); one with regex characters a regex searched; else a prefix."""
    cond: dict = {}
    if isinstance(value, dict):
        _check_keys(value, RULE_KEYS, path, "rule")
        text = value.get("path", "*")
        if value.get("method"):
            cond["method"] = str(value["method"]).split()
        if value.get("host"):
            cond["host"] = [value["host"]]
        ips = value.get("client_ip") or value.get("remote_ip")
        if ips:
            cond["client_ip"] = str(ips).split()
        if value.get("scheme"):
            schemes = str(value["scheme"]).lower().split()
            if len(schemes) == 1:
                cond["scheme"] = schemes[0]
    elif isinstance(value, str):
        text = value
    else:
        raise Invalid(f"expected a path rule like '/api' or a table {{ path = '/api', method = 'GET' }}, got "
                      f"{value!r}", path)
    text = text.strip()
    if any(c in _REGEX_CHARS for c in text):
        try:
            re.compile(text)
        except re.error as e:
            raise Invalid(f"bad regular expression {text!r}: {e}", path) from None
        return f"~ {text}", cond
    parts = text.split("*")
    if len(parts) == 1:
        pattern = "^" + re.escape(text)
    else:
        pattern = "^" + ".*".join(re.escape(p) for p in parts) + ("$" if parts[-1] else "")
    return f"~ {pattern}", cond


def _location(r: Reading, loc: dict, path: str, base: _Inherited, srv: dict, zones: dict,
              upstreams: list) -> Optional[dict]:
    _check_keys(loc, LOCATION_KEYS | {"redirect", "status", "access_log", "proxy_ssl_ca", "proxy_ssl_name", "host",
                                      "client_ip", "scheme"}, path, "[[http.server.location]]")
    inherit = base.under(loc)
    rule = loc.get("rule", "*")
    if isinstance(rule, str) and rule.startswith("@"):
        text, cond = rule, dict[str, Any]()  # a named location: try_paths and error pages reach it, no path does
    else:
        text, cond = _rule(rule, f"{path}.rule")
    out: dict = {"rule": text, **cond}
    for k in ("host", "client_ip", "scheme", "redirect", "status", "proxy_ssl_ca", "proxy_ssl_name"):
        if k in loc:
            out[k] = loc[k]
    if loc.get("method"):
        out["method"] = str(loc["method"]).split() if isinstance(loc["method"], str) else loc["method"]
    for sub in _list(loc.get("upstream"), f"{path}.upstream"):
        hoisted = _upstream(r, sub, f"{path}.upstream")
        if any(u["name"] == hoisted["name"] for u in upstreams):
            raise Invalid(f"upstream name {hoisted['name']!r} is used twice", f"{path}.upstream")
        upstreams.append(hoisted)
        r.note(f"{path}.upstream {hoisted['name']!r} -> http.upstream")
    action = ""
    if loc.get("file_server") is not None:
        root = loc.get("root") or srv.get("root")
        out["file_server"] = _file_server(r, _dict(loc["file_server"]), f"{path}.file_server", root)
        action = "file_server"
    if "static_response" in loc and not action:
        out["static_response"] = loc["static_response"]
        action = "static_response"
    url = next((v for v in (loc.get("proxy_url"), loc.get("reverse_proxy"), loc.get("proxy_pass"),
                            inherit.values.get("proxy_url")) if v), "")
    if url and not action and "redirect" not in loc:
        out["proxy_url"] = url
        action = "proxy_url"
    if not action and "redirect" not in loc:
        raise Invalid("a location needs file_server, static_response or proxy_url", path)
    if "headers" in loc:
        out["headers"] = _headers(loc["headers"], f"{path}.headers")
    if "try_paths" in loc:
        _try_paths(r, loc["try_paths"], out, f"{path}.try_paths")
    for k in ("allow_ip", "deny_ip"):
        if k in inherit.values:
            out[k] = str(inherit.values[k]).split()
    if "limit_req" in inherit.values:
        out["limit_req"] = _limit_req(inherit.values["limit_req"], zones, f"{path}.limit_req")
    if "proxy_connect_timeout" in inherit.values and action == "proxy_url":
        out["proxy_connect_timeout"] = inherit.values["proxy_connect_timeout"]
    for k in ("proxy_read_timeout", "proxy_timeout"):
        if k in inherit.values and action == "proxy_url":
            out["proxy_read_timeout"] = inherit.values[k]
    if "rate_limit" in inherit.values:
        out["rate_limit"] = inherit.values["rate_limit"]
    if "access_log" in inherit.values and str(inherit.values["access_log"]).strip() != "off":
        line = _log_line(r, inherit, f"{path}.access_log")
        if line:
            out["access_log"] = line
    if "access_log" in loc and str(loc["access_log"]).strip() == "off":
        out["access_log"] = "off"
    _warn_rust_only(r, loc, path)
    return out


_LOG_FIELDS = {"client_ip", "host", "url", "path", "query", "method", "status", "bytes", "time", "upstream", "date",
               "referer", "user_agent", "cookie"}


def _log_line(r: Reading, inherit: _Inherited, path: str) -> str:
    """The location's access line from the original's ``access_log = "NAME FORMAT LEVEL"`` and
    ``log_format.FORMAT``: {d(...)} is {date} (%Y-%m-%d %H:%M:%S), {l} the level, {up_status}
    the status; '' for the default line (no FORMAT, or one not in log_format)."""
    words = str(inherit.values["access_log"]).split()
    formats = _dict(inherit.values.get("log_format"))
    if len(words) < 2 or words[1] not in formats:
        return ""
    line = re.sub(r"\{d\([^)]*\)\}", "{date}", str(formats[words[1]]))
    line = line.replace("{l}", "INFO").replace("{up_status}", "{status}")
    unknown = sorted(set(re.findall(r"\{(\w+)\}", line)) - _LOG_FIELDS)
    if unknown and words[1] not in r.formats_seen:
        r.formats_seen.add(words[1])
        r.warnings.append(f"{path}: {', '.join('{' + u + '}' for u in unknown)} of log_format.{words[1]} have no "
                          f"value here (written as they are)")
    return line


def _try_paths(r: Reading, value: Any, out: dict, path: str) -> None:
    """'{path}/ '/ro(\\w+)/(.*) {path} /ro$1/x' /index.html @app =404' on a file server -> its
    try_paths (a quoted entry: a regex rewrite; a named location or a status last)."""
    fs = out.get("file_server")
    words = re.findall(r"'[^']*'|\"[^\"]*\"|\S+", str(value))
    paths = [w.strip("'\"") for w in words if not w.startswith(("=", "@"))]  # (a quoted one: a regex rewrite)
    last = [w for w in words if w.startswith(("@", "="))][:1]
    if fs is None:
        r.warnings.append(f"{path}: accepted, no effect here (try_paths works on a file_server location)")
        return
    fs["try_paths"] = paths + last


def _file_server(r: Reading, fs: dict, path: str, root: Optional[str]) -> dict:
    _check_keys(fs, FILE_SERVER_KEYS | {"try_paths", "follow_symlinks"}, path, "file_server")
    out: dict = {k: fs[k] for k in ("ext_mimetype", "cache_time", "robots", "path404", "hide", "index", "browse",
                                    "cors", "try_paths", "follow_symlinks") if k in fs}
    out["root"] = fs.get("root") or root or "."
    if not (fs.get("root") or root):
        r.note(f"{path}: no root -> '.', the directory wmproxy starts in (as the original)")
    if fs.get("prefix"):
        out["prefix"] = fs["prefix"]
    if "precompressed" in fs:
        out["precompressed"] = bool(fs["precompressed"])
    if "disable_compress" in fs:
        out["gzip"] = not fs["disable_compress"]
    if "status" in fs and fs["status"] != 404:
        r.warn(f"{path}.status", "status", "a missing file is 404")
    _warn_rust_only(r, fs, path)
    return out


# ---------------------------------------------------------------------------------------
# [stream]


def _stream(r: Reading, value: Any) -> None:
    stream = _dict(value)
    if not isinstance(value, dict):
        raise Invalid(f"expected a table, got {value!r}", "stream")
    _check_keys(stream, frozenset(("server", "upstream")), "stream", "[stream]")
    upstreams = []
    for i, u in enumerate(_list(stream.get("upstream"), "stream.upstream")):
        sub = f"stream.upstream[{i}]"
        _check_keys(u, UPSTREAM_KEYS | {"method", "health_check", "send_proxy_protocol"}, sub, "[[stream.upstream]]")
        servers = []
        for j, s in enumerate(_list(u.get("server", []), f"{sub}.server")):
            _check_keys(s, UPSTREAM_SERVER_KEYS, f"{sub}.server[{j}]", "upstream server")
            servers.append({k: v for k, v in s.items() if k in ("addr", "weight")})
            for k in ("fail_timeout", "fall_times", "rise_times"):
                if k in s:
                    r.warn(f"{sub}.server[{j}].{k}", k, "a [stream] server is taken out by health_check")
        upstreams.append({**{k: v for k, v in u.items() if k not in ("bind", "server")}, "server": servers})
    servers = []
    for i, s in enumerate(_list(stream.get("server"), "stream.server")):
        sub = f"stream.server[{i}]"
        _check_keys(s, SERVER_KEYS | {"bind", "connect_timeout", "idle_timeout", "max_connections",
                                      "max_connections_per_ip", "client_timeout", "max_sessions", "ws_path",
                                      "ws_host", "ws_ca", "proxy_protocol", "proxy_protocol_from"}, sub,
                    "[[stream.server]]")
        mode = str(s.get("bind_mode", "tcp")).lower()
        base = {k: v for k, v in s.items() if k in ("rate_limit", "connect_timeout", "idle_timeout", "max_connections",
                                                    "max_connections_per_ip", "client_timeout", "max_sessions",
                                                    "ws_path", "ws_host", "ws_ca", "proxy_protocol",
                                                    "proxy_protocol_from", "up_name")}
        base["bind_mode"] = mode
        if "timeout" in s or "client_timeout" in s:
            t = s.get("timeout", s.get("client_timeout"))
            base["client_timeout" if mode == "udp" else "idle_timeout"] = t
            if "timeout" in s:
                r.note(f"{sub}.timeout -> {'client_timeout' if mode == 'udp' else 'idle_timeout'}")
        if s.get("proxy_url"):
            name = f"{sub}.proxy_url"
            base["up_name"] = name
            upstreams.append({"name": name, "server": [{"addr": _url_addr(s['proxy_url'], mode, name)}]})
            if mode in ("tcp2ws", "tcp2wss"):
                parts = urlsplit(s["proxy_url"])
                base.setdefault("ws_path", parts.path or "/")
                if parts.scheme == "wss":
                    base["bind_mode"] = "tcp2wss"
            r.note(f"{name} -> an upstream of its own")
        _warn_rust_only(r, s, sub, skip=("bind_mode", "up_name"))
        for addr in _addrs(s.get("bind_addr", s.get("bind", [])), f"{sub}.bind_addr"):
            servers.append({**base, "bind": addr})
    r.data["stream"] = {"upstream": upstreams, "server": servers}


def _url_addr(url: Any, mode: str, path: str) -> str:
    """'ws://127.0.0.1:8081/' -> '127.0.0.1:8081' (the port from the scheme if none)."""
    parts = urlsplit(str(url))
    default = {"ws": 80, "http": 80, "wss": 443, "https": 443}.get(parts.scheme)
    try:
        port = parts.port or default
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise Invalid(f"expected a URL like 'ws://127.0.0.1:8081/' or 'tcp://127.0.0.1:8082', got {url!r}", path)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    addr = f"{host}:{port}"
    to_addr(addr)
    return addr
