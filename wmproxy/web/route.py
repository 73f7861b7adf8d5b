"""Which server and which location serve a request. Pure: names and paths in, config out.

Server: among the servers on the address the request came to, an exact ``server_name`` first,
then the longest ``*.suffix`` wildcard, then the longest ``prefix.*`` one, else the default
server (the first one without names, or else the first one), as nginx does.

Location, as nginx: an ``= exact`` match wins at once; otherwise the longest matching prefix
is remembered; if it is a ``^~`` prefix it wins, else the regexes (``~``, ``~*``) are tried in
their order and the first that matches wins; when none does, the longest prefix wins. A
location with conditions (``method``, ``host``, ``client_ip``, ``scheme``, as the Rust wmproxy
has) is passed over by a request that does not meet them: the next in that order is tried.
"""

from __future__ import annotations

import functools
import posixpath
from typing import Optional
from urllib.parse import unquote

from ..config import HttpLocationConfig, HttpServerConfig


def pick_server(servers: tuple[HttpServerConfig, ...], host: str) -> HttpServerConfig:
    name = host.lower().rstrip(".")
    best, best_len = None, -1
    for srv in servers:
        if name in srv.server_name:
            return srv
    for srv in servers:
        for pattern in srv.server_name:
            if pattern.startswith("*.") and name.endswith(pattern[1:]) and len(pattern) > best_len:
                best, best_len = srv, len(pattern)
    if best is not None:
        return best
    for srv in servers:
        for pattern in srv.server_name:
            if pattern.endswith(".*") and name.startswith(pattern[:-1]) and len(pattern) > best_len:
                best, best_len = srv, len(pattern)
    if best is not None:
        return best
    return next((srv for srv in servers if not srv.server_name), servers[0])


def name_matches(patterns: tuple[str, ...], host: str) -> bool:
    """``host`` (lower case, port off) is one of ``patterns``: 'a.test', '*.a.test' or 'a.*'."""
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) or
               (p.endswith(".*") and host.startswith(p[:-1])) for p in patterns)


def pick_location(server: HttpServerConfig, path: str) -> Optional[HttpLocationConfig]:
    """The location nginx would pick for ``path`` (conditions aside: :func:`candidates`)."""
    found = candidates(server, path)
    return found[0] if found else None


def candidates(server: HttpServerConfig, path: str) -> tuple[HttpLocationConfig, ...]:
    """Every location whose rule matches ``path``, in nginx's order of preference: exact
    matches, then (unless the longest matching prefix is ``^~``) the regexes in their order,
    then the prefixes longest first. A request takes the first whose conditions (method, host,
    client_ip, scheme) it meets."""
    exact = [loc for loc in server.location if loc.rule.kind == "exact" and path == loc.rule.text]
    prefixes = sorted((loc for loc in server.location if loc.rule.kind in ("prefix", "prefix-stop")
                       and path.startswith(loc.rule.text)), key=lambda loc: -len(loc.rule.text))
    if prefixes and prefixes[0].rule.kind == "prefix-stop":
        return (*exact, *prefixes)
    regexes = [loc for loc in server.location if loc.rule.kind == "regex" and loc.rule.regex.search(path)]
    return (*exact, *regexes, *prefixes)


@functools.lru_cache(maxsize=4096)
def normalize_path(target: str) -> Optional[str]:
    """The decoded, normalized path of a request target ('/a/../b' -> '/b'), or None when it
    climbs above the root. Raises ValueError when it is no origin-form path, holds a NUL or
    is not UTF-8 once decoded."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise ValueError("not a path")
    try:
        decoded = unquote(path, errors="strict") if "%" in path else path
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if "\0" in decoded:
        raise ValueError("NUL in the path")
    depth = 0
    for part in decoded.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return None
        elif part not in ("", "."):
            depth += 1
    clean = posixpath.normpath(decoded)
    if decoded.endswith("/") and clean != "/":
        clean += "/"
    return clean.replace("//", "/") if clean.startswith("//") else clean
