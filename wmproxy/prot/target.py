"""Where a request goes: the CONNECT authority and the absolute-form URL a forward proxy is
asked for, checked and normalised (RFC 9112 3.2), and the name part of a Host value. Pure:
text in, values out."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from ..errors import ProtocolError


@dataclass(frozen=True)
class Target:
    """Where an absolute-form request or a CONNECT goes."""

    host: str
    port: int
    path: str = "/"  # origin-form to send upstream

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"

    @functools.cached_property
    def line_tail(self) -> bytes:
        """The end of a request line for this target in origin-form: b" /path HTTP/1.1"."""
        return f" {self.path} HTTP/1.1".encode("latin-1")

    @functools.cached_property
    def host_header(self) -> bytes:
        text = self.authority
        return text.encode("ascii") if text.isascii() else text.encode("idna")


@functools.lru_cache(maxsize=4096)
def _check_host(host: str, what: str) -> str:
    """A host from a request, normalised (IP literal canonical, name lower-case). Cached:
    the same few hosts come back request after request."""
    if not host:
        raise ProtocolError(f"{what} has no host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or any(c in host for c in " /\\@?#%[]\0") or host.startswith("."):
        raise ProtocolError(f"{what} has an invalid host {host[:60]!r}")
    return host.lower()


def _host_port(authority: str, default_port: int | None, what: str) -> tuple[str, int]:
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ProtocolError(f"{what} {authority[:80]!r} is not host:port")
        port = rest[1:]
    else:
        host, sep, port = authority.rpartition(":")
        if not sep:
            host, port = authority, ""
    if not port:
        if default_port is None:
            raise ProtocolError(f"{what} {authority[:80]!r} is not host:port")
        return _check_host(host, what), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ProtocolError(f"{what} {authority[:80]!r} has an invalid port")
    return _check_host(host, what), int(port)


def parse_authority(text: str) -> Target:
    """CONNECT target 'host:port' or '[v6]:port'. Raises ProtocolError."""
    host, port = _host_port(text, None, "CONNECT target")
    return Target(host, port, "")


@functools.lru_cache(maxsize=4096)
def parse_absolute(url: str) -> Target:
    """Absolute-form target 'http://host[:port]/path?q'. Raises ProtocolError (400, or 501
    for another scheme). Cached: a Target is immutable and clients ask for the same URLs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ProtocolError("this is a proxy: the request target must be absolute (http://host/path)")
    if scheme.lower() != "http":
        if scheme.isalpha():
            raise ProtocolError(f"scheme {scheme[:20]!r} is not served; use CONNECT for https", 501)
        raise ProtocolError(f"request target {url[:80]!r} is not a valid URL")
    end = len(rest)
    for c in "/?#":
        i = rest.find(c, 0, end)
        if i >= 0:
            end = i
    authority, path = rest[:end], rest[end:].partition("#")[0]
    if "@" in authority:
        raise ProtocolError("user information in the request URL is not allowed")
    host, port = _host_port(authority, 80, "request URL")
    if not path.startswith("/"):
        path = "/" + path
    return Target(host, port, path)


def host_name(host: str) -> str:
    """The name of a Host header value, its port dropped: 'a.test:8080' -> 'a.test', '[::1]:80' -> '::1'."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] or host
