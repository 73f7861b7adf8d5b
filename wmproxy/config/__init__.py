"""Configuration: TOML (plus command-line and environment overrides) into frozen dataclasses.

Pure: no gevent, no sockets. Each section is a frozen dataclass whose fields carry their
converter in ``metadata``; :func:`build` walks a dict against it, so an unknown key, a wrong
type or a bad address raises a :class:`ConfigError` naming the source (file, command line or
environment variable), the key path (``proxy.allow[2]``) and what is accepted.

Key names follow the Rust wmproxy where one exists (``[proxy] bind_addr`` is accepted as an
alias of ``bind``; ``flag = "http https socks5"``; top-level ``control``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..errors import ConfigError
from . import compat

# the sections, one module each; their names are this package's (``from ..config import X``)
from .center import CenterConfig, CenterUser, MappingConfig
from .http import (
    FileServerConfig, HealthCheckConfig, HttpConfig, HttpLocationConfig, HttpServerConfig, HttpUpstreamConfig,
    HttpUpstreamServerConfig, LimitReqConfig,
)
from .keys import (
    REQUIRED, Addr, Invalid, TargetRule, _unique_names, accepted_keys, build, key, list_of, one_of, optional_addr,
    read_config_file, read_toml, section, table_list, to_addr, to_bool, to_duration, to_header_rule, to_network, to_size, to_str,
    to_workers,
)
from .proxy import DnsConfig, ProxyConfig
from .stream import StreamConfig, StreamServerConfig, StreamUpstreamConfig, UpstreamServerConfig

__all__ = [
    "Addr", "CenterConfig", "CenterUser", "Config", "ConfigError", "DnsConfig", "FileServerConfig", "HealthCheckConfig",
    "HttpConfig", "HttpLocationConfig", "HttpServerConfig", "HttpUpstreamConfig", "HttpUpstreamServerConfig",
    "Invalid", "LimitReqConfig", "MappingConfig", "Override", "ProxyConfig", "REQUIRED", "StreamConfig",
    "StreamServerConfig", "StreamUpstreamConfig", "TargetRule", "UpstreamServerConfig", "accepted_keys", "build",
    "list_of", "load", "read_config_file", "read_toml", "to_addr", "to_duration", "to_header_rule", "to_network", "to_size",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ACCESS_FORMATS = ("wmproxy", "combined")
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


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
    workers: int = key(to_workers, 1, "worker processes: 1 serves in this process; more (or \"auto\": one per "
                       "core) start a master that forks that many workers sharing the listeners")
    user: str = key(to_str, "", "started as root: bind, then serve as this user (name or uid); the config "
                    "and the files it names must be readable by it, for reloads")
    group: str = key(to_str, "", "with user: serve with this group (default: the user's own)")
    control: Optional[Addr] = key(optional_addr, None, "control API address ('' disables)")
    control_token: str = key(to_str, "", "bearer token the control API requires")
    watch: bool = key(to_bool, False, "reload when the config file changes")
    acme_directory: str = key(to_str, LETS_ENCRYPT, "the ACME directory ([[http.server]] acme, [center] map_acme) "
                              "certificates are asked from (an https URL; Let's Encrypt's by default)")
    acme_email: str = key(to_str, "", "contact address of the ACME account (the directory's expiry notices)")
    acme_dir: str = key(to_str, "", "where the ACME account key, the certificates (keys 0600) and the challenge "
                        "answers live (default: acme/ in the state directory: [center] state_dir, else "
                        "$STATE_DIRECTORY, /var/lib/wmproxy or ~/.local/state/wmproxy)")
    acme_ca: str = key(to_str, "", "CA file the directory's TLS is verified with ('' = the system store): a private "
                       "ACME CA's")
    acme_eab_kid: str = key(to_str, "", "the key id of an External Account Binding, for a directory that asks for "
                            "one (ZeroSSL, Google Trust Services, a company CA)")
    acme_eab_hmac_key: str = key(to_str, "", "its MAC key (base64url, as the CA gives it)")
    acme_challenge: str = key(one_of(("auto", "http-01", "tls-alpn-01")), "auto", "how names are proven: http-01 "
                              "answered by the plain [http] listeners and map_http_bind (the directory asks on port "
                              "80), tls-alpn-01 answered on the TLS listener itself (port 443); auto: http-01 when "
                              "one of those listens on port 80, else tls-alpn-01")
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
                          "forward proxy: set username/password in the server's [proxy]",
                          ".proxy.username" if self.proxy.username else ".proxy.users")
        self._validate_acme()
        if self.control is not None and not self.control.is_loopback and not self.control_token:
            raise Invalid(f"{self.control} is reachable from other hosts: set control_token, or bind the "
                          "control API to a loopback address", ".control")

    def _validate_acme(self) -> None:
        if not re.match(r"^https://[^/\s]+(/\S*)?$", self.acme_directory):
            raise Invalid(f"expected the https URL of an ACME directory like {LETS_ENCRYPT!r}, got "
                          f"{self.acme_directory!r}", ".acme_directory")
        if self.acme_email and not re.match(r"^[^@\s:/]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$", self.acme_email):
            raise Invalid(f"expected an e-mail address like 'ops@example.com', got {self.acme_email!r}", ".acme_email")
        if bool(self.acme_eab_kid) != bool(self.acme_eab_hmac_key):
            raise Invalid("acme_eab_kid and acme_eab_hmac_key go together", ".acme_eab_hmac_key")
        if self.acme_eab_hmac_key and not re.match(r"^[A-Za-z0-9_-]+=*$", self.acme_eab_hmac_key):
            raise Invalid("expected the base64url MAC key the CA gave with the key id", ".acme_eab_hmac_key")
        if self.acme_ca and not os.path.isfile(self.acme_ca):
            raise Invalid(f"no such file: {self.acme_ca}", ".acme_ca")
        if self.acme_challenge == "http-01" and self.uses_acme and not self.plain_http_binds:
            raise Invalid("http-01 is answered on plain HTTP: add an [[http.server]] without TLS (on port 80) or "
                          "[center] map_http_bind, or use tls-alpn-01", ".acme_challenge")

    @property
    def uses_acme(self) -> bool:
        """Whether some certificate comes from ACME (an [http] server's acme, [center] map_acme)."""
        return (self.http is not None and any(s.acme for s in self.http.server)) or \
            (self.center is not None and self.center.map_acme)

    @property
    def plain_http_binds(self) -> list[Addr]:
        """The plain HTTP listeners that answer http-01: [http] binds without TLS, map_http_bind."""
        binds = [b for s in self.http.server if not s.tls for b in s.bind] if self.http is not None else []
        if self.center is not None and self.center.is_server and self.center.map_http_bind is not None:
            binds.append(self.center.map_http_bind)
        return binds

    @property
    def acme_challenge_type(self) -> str:
        """acme_challenge with auto decided: http-01 when a plain listener takes port 80."""
        if self.acme_challenge != "auto":
            return self.acme_challenge
        return "http-01" if any(b.port == 80 for b in self.plain_http_binds) else "tls-alpn-01"

    @property
    def acme_path(self) -> str:
        """acme_dir, or its default."""
        if self.acme_dir:
            return self.acme_dir
        from ..center.trust import default_state_dir

        return os.path.join(self.center.state_path if self.center is not None else default_state_dir(), "acme")

    @property
    def worker_count(self) -> int:
        """How many workers serve: ``workers``, with "auto" (0) as the cores this process may use."""
        return self.workers or max(1, len(os.sched_getaffinity(0)))

    @property
    def dns_or_default(self) -> DnsConfig:
        return self.dns or DnsConfig()


@dataclass(frozen=True)
class Override:
    """A value from the command line or the environment, placed at a key path."""

    path: tuple[str, ...]
    value: Any
    origin: str  # 'command line --bind' or 'environment WMPROXY_BIND'


def load(file: Optional[str], overrides: Sequence[Override] = (), default: Optional[dict] = None) -> Config:
    """Load a config: the TOML or YAML ``file`` (or ``default`` when no file), then ``overrides``.
    A file of the Rust wmproxy is translated first (config.compat); its warnings are logged.

    Blocks on file I/O only. Raises ConfigError naming the source and key path.
    """
    cfg, reading = load_reading(file, overrides, default)
    if reading is not None:
        for line in reading.warnings:
            logging.getLogger("wmproxy").warning("%s: %s", file, line)
    return cfg


def _translate(data: dict, source: str, mark: str = "") -> compat.Reading:
    try:
        return compat.translate(data)
    except Invalid as e:
        why = f", for its {mark}" if mark else ""
        raise ConfigError(source, e.subpath, f"{e} (read as a Rust wmproxy config{why})") from None


def from_original(data: dict, source: str) -> tuple[Config, compat.Reading]:
    """A config in the Rust wmproxy's keys (the ``wmproxy`` command line builds one), read as a
    file of it would be. Raises ConfigError naming ``source``."""
    reading = _translate(data, source)
    try:
        return build(Config, reading.data), reading
    except Invalid as e:
        raise ConfigError(source, e.subpath, str(e)) from None


def load_reading(file: Optional[str], overrides: Sequence[Override] = (),
                 default: Optional[dict] = None) -> tuple[Config, Optional[compat.Reading]]:
    """:func:`load`, and how a file of the Rust wmproxy was read (None for this project's own)."""
    data = read_config_file(file) if file else dict(default or {})
    reading = None
    mark = compat.original_mark(data) if file else ""
    if mark:
        reading = _translate(data, file or "", mark)
        data = reading.data
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
        return build(Config, data), reading
    except Invalid as e:
        source = next((src for p, src in origins.items() if e.subpath == p or e.subpath.startswith(p + "[")), None)
        fallback = file or ("command line / environment" if origins else "built-in default")
        how = f" (read as a Rust wmproxy config, for its {mark}; translated: see --check)" \
            if reading is not None and not source else ""
        raise ConfigError(source or fallback, e.subpath, f"{e}{how}") from None
