"""The running process: the listeners a config asks for, reloads applied as a diff, stop.

Reload (SIGHUP, ``POST /reload``, ``wmproxy-server reload``, or a change of the file with
``watch = true``): the file is loaded and validated completely, and new listening sockets are
bound, before anything changes; any failure leaves the old configuration serving. Then
listeners whose spec is unchanged keep running untouched, removed ones drain (stop accepting,
live connections get ``grace``), changed ones take the new settings for new connections, and
added ones start. A listening socket is never closed and reopened for an unchanged address.

Stop (SIGTERM, SIGINT, ``POST /stop``): every listener stops accepting at once, live
connections get ``grace`` seconds, the rest are closed; the process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import gevent
import psutil
from gevent.event import Event
from gevent.lock import Semaphore

from . import __version__, config
from .config import Addr, CenterConfig, Config, ProxyConfig
from .errors import ConfigError
from .acme.types import Directory
from .acme.manager import AcmeManager, AcmeSettings
from .center.client import CenterClient, default_client_id
from .center.mapping import MappingRegistry
from .center.server import CenterServer
from .listener import ConnStats, Listener, ListenerSpec, StatusSource, drain_all
from .services import Handler, ProcessControl, Services
from .net import live
from .net.certstore import CertStore
from .net.dns import Resolver
from .net.listen import BindError, open_listener, open_udp
from .net.tls import client_context
from . import logs
from .logs import LogSettings
from .metrics import merge_servers
from .service import notify, notify_reloading

log = logging.getLogger("wmproxy")

WATCH_EVERY = 1.0  # seconds between looks at the config file
WATCH_SETTLE = 0.3  # a change must hold this long before it is loaded (editors write in steps)


def open_socket(spec: ListenerSpec) -> socket.socket:
    """A listener's socket, bound here (TCP listening, or UDP)."""
    return open_udp(spec.bind, spec.label) if spec.transport == "udp" else open_listener(spec.bind, spec.label)


@dataclass(frozen=True)
class Role:
    """What of a configuration this process serves (workers.py makes the roles of a master
    and its workers; the default is all of it, alone).

    ``serves`` picks the listeners (by spec, and the configuration being applied); ``bind``
    gives a listener's socket (bound here, or one the master bound); ``center_client`` says
    whether the center client runs here; ``watch_file`` whether this process follows the file
    (``watch``); ``process`` is what the control API drives (None: this App); ``worker`` the
    worker's number (None: not a worker); ``max_accept`` the connections a TCP listener takes
    per wake-up (None: gevent's 100)."""

    serves: Callable[[ListenerSpec, Config], bool] = lambda spec, cfg: True
    bind: Callable[[ListenerSpec], socket.socket] = open_socket
    center_client: bool = True
    watch_file: bool = True
    process: Optional[ProcessControl] = None
    worker: Optional[int] = None
    max_accept: Optional[int] = None


STARTS_NOTHING = "this configuration starts nothing: no [proxy], [stream], [http], [center] or control listener"


def listener_specs(cfg: Config) -> dict[tuple[str, str], ListenerSpec]:
    """Every listener the config asks for, by key. Each kind declares its own. Raises
    ConfigError for two on one port, and for a config that starts nothing (no listener and
    no center client)."""
    from . import control
    from .center import maphttp
    from .center import server as center_server
    from .proxy import server as proxy_server
    from .stream import tcp as stream_tcp
    from .stream import udp as stream_udp
    from .web import server as web_server

    specs: dict[tuple[str, str], ListenerSpec] = {}
    for kind in (proxy_server, stream_tcp, stream_udp, center_server, maphttp, web_server, control):
        for spec in kind.listener_specs(cfg):
            for other in specs.values():
                if _same_port(spec, other):
                    raise ConfigError("", spec.label, f"{spec.bind} is also where {other.label} listens "
                                                      f"({other.bind}): one address and port, one listener")
            specs[spec.key] = spec
    if not specs and _center_client_cfg(cfg) is None:
        raise ConfigError("", "", STARTS_NOTHING)
    return specs


def _same_port(a: ListenerSpec, b: ListenerSpec) -> bool:
    """Whether two listeners would take the same port: same transport and port (0 never
    clashes), and the same host, or a wildcard (0.0.0.0, ::) beside any host of its family."""
    if a.transport != b.transport or a.bind.port != b.bind.port or not a.bind.port:
        return False
    ha, hb = a.bind.host, b.bind.host
    if ha == hb:
        return True
    wild = {"0.0.0.0": False, "::": True}  # wildcard -> is IPv6
    for w, other in ((ha, hb), (hb, ha)):
        if w in wild:
            return (":" in other) == wild[w]
    return False


def check_files(cfg: Config, config_file: str | None) -> None:
    """Read what the config names (certificates, keys, CAs) as starting would; raises
    ConfigError naming the file and key. For --check."""
    try:
        for spec in listener_specs(cfg).values():
            if spec.check is not None:
                spec.check()
        client_cfg = _center_client_cfg(cfg)
        if client_cfg is not None and client_cfg.tls:
            auto = client_cfg.cert == "auto"  # (made at start, not by --check)
            client_context("" if client_cfg.ca == "pin" else client_cfg.ca, "" if auto else client_cfg.cert,
                           "" if auto else client_cfg.key)
    except ConfigError as e:
        raise ConfigError(config_file or "", e.path, e.message) from None


class App:
    """Owns the listeners of one process and applies configurations to them."""

    def __init__(self, cfg: Config, config_file: str | None = None, overrides: Sequence[config.Override] = (),
                 prog: str = "wmproxy", role: Role = Role()) -> None:
        self.cfg = cfg
        self.role = role
        self.config_file = config_file
        self.overrides = list(overrides)
        self.prog = prog
        self.resolver = Resolver(cfg.dns_or_default)
        self.listeners: dict[tuple[str, str], Listener] = {}
        self.center_client: Optional[CenterClient] = None  # a CenterClient when [center] server is set
        self.http_groups: dict = {}  # [http] upstream groups (pools, health), shared by the http listeners
        self.stream_health: dict = {}  # [stream] upstreams' health checkers, shared by the stream listeners
        self.http_limits: dict = {}  # [http] limit_req token buckets, shared by them too
        self.proxy_quotas: dict = {}  # [[proxy.users]] counts and buckets of the streams served as a forward proxy
        self.draining: list[Listener] = []
        self._registry: Optional[MappingRegistry] = None  # the center server's, once listening (_apply)
        self.acme: Optional[AcmeManager] = None  # obtains and renews ACME certificates (in one process)
        self.started_at = time.time()
        self.loaded_at = time.time()
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_error = ""
        self._reload_lock = Semaphore()
        self._stopped = Event()
        self._stopping = False
        self._watcher: gevent.Greenlet | None = None
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first reading primes the counter
        # all that listeners and the center client get of the process
        self.services = Services(self.resolver, self.http_groups, self.http_limits, self.proxy_handler,
                                 lambda: self.center_client.entry if self.center_client else None,
                                 self._mapping_registry, role.process or self, self.stream_health)

    # -- applying a configuration -------------------------------------------------------------
    def start(self) -> None:
        """Open every listener; raises BindError or ConfigError (and opens nothing) on failure,
        ConfigError too for a configuration that would start nothing."""
        self._apply(self.cfg)
        self._follow_watch_setting()

    def _apply(self, new: Config) -> dict:
        try:
            specs = {k: spec for k, spec in listener_specs(new).items() if self.role.serves(spec, new)}
        except ConfigError as e:
            raise ConfigError(self.config_file or "", e.path, e.message) from None
        added = [k for k in specs if k not in self.listeners]
        removed = [k for k in self.listeners if k not in specs]
        resolver_changed = new.dns_or_default != self.cfg.dns_or_default
        changed = [k for k in specs if k in self.listeners
                   and (resolver_changed or self.listeners[k].spec != specs[k])]
        client_cfg = _center_client_cfg(new) if self.role.center_client else None
        new_client: CenterClient | bool | None = None  # False: no client any more
        try:  # certificate files and the like are read before anything changes
            for k in [*added, *changed]:
                check = specs[k].check
                if check is not None:
                    check()
            if self.role.center_client and new.uses_acme:
                check_acme_dir(new.acme_path)
            if client_cfg != self._client_cfg() or (client_cfg and self.center_client is None):
                new_client = CenterClient(client_cfg, self.services, new.mappings,
                                          client_cfg.client_id or default_client_id(self.config_file)) \
                    if client_cfg else False
        except ConfigError as e:
            raise ConfigError(self.config_file or "", e.path, e.message) from None
        sockets: dict = {}
        try:  # bind everything new first: a failure here changes nothing
            for k in added:
                sockets[k] = self.role.bind(specs[k])
        except BindError:
            for sock in sockets.values():
                sock.close()
            raise
        if resolver_changed:
            self.resolver = Resolver(new.dns_or_default)
        if new.log_level != self.cfg.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
        mappings_changed = new.mappings != self.cfg.mappings
        self.cfg = new
        if new_client is None and mappings_changed and self.center_client is not None:
            self.center_client.update_mappings(new.mappings)  # same link, new MAPPING
        if new_client is not None:  # before the listeners: a proxy's new context picks it up
            if self.center_client is not None:
                self.center_client.stop()
            self.center_client = new_client or None  # type: ignore[assignment]  # (False: none)
            if self.center_client is not None:
                self.center_client.start()
        for k in removed:
            listener = self.listeners.pop(k)
            listener.close()  # stops accepting now; its live connections drain in the background
            self.draining.append(listener)
            gevent.spawn(self._drain_removed, listener)
        self._forget_upstreams(new)
        for k in changed:
            self.listeners[k].update(specs[k], self.services)
        for k in added:
            listener = specs[k].factory(sockets[k], specs[k], self.services)
            if self.role.max_accept and specs[k].transport == "tcp":
                listener.max_accept = self.role.max_accept
            listener.start()
            self.listeners[k] = listener
            log.info("%s listening on %s", specs[k].kind, _bound(sockets[k]))
            if specs[k].kind == "proxy":
                _warn_if_open(specs[k].settings.proxy)
        self._registry = self._find_registry()
        self._follow_acme(new)
        names = lambda keys: [f"{kind} {bind}" for kind, bind in keys]  # noqa: E731
        return {"added": names(added), "removed": names(removed), "changed": names(changed),
                "unchanged": len(specs) - len(added) - len(changed)}

    def _follow_acme(self, new: Config) -> None:
        """Start, update or stop the ACME manager (in the process that runs the center client:
        alone, or worker 0; the others serve its certificates from acme_dir)."""
        settings = acme_settings(new) if self.role.center_client else None
        if settings is None:
            if self.acme is not None:
                self.acme.stop()
                self.acme = None
        elif self.acme is None:
            self.acme = AcmeManager(settings, self._mapping_domains)
            self.acme.start()
        else:
            self.acme.update(settings)

    def _mapping_domains(self) -> list[tuple[str, str]]:
        """(domain, source) of the https mappings whose TLS ends here, while their client is linked."""
        registry = self._registry
        if registry is None:
            return []
        return [(route.domain, f"mapping {route.name} of {route.owner}") for routes in list(registry.routes.values())
                for route in routes if route.mode == "https" and not route.passthrough and route.online]

    def _client_cfg(self) -> Optional[CenterConfig]:
        return _center_client_cfg(self.cfg) if self.role.center_client else None

    def _forget_upstreams(self, new: Config) -> None:
        """[http] upstreams gone from the config (or changed: a new group replaces them) close
        their idle connections; the ones unchanged keep their pools and health. Rate limits
        start afresh."""
        self.http_limits.clear()  # rate limits start afresh
        kept = set(new.http.upstream) if new.http is not None else set()
        for key in list(self.http_groups):
            upstream = key[0] if isinstance(key, tuple) else key  # (upstream or "addr", netloc, tls) for TLS ones
            if upstream != "addr" and upstream not in kept:
                self.http_groups.pop(key).close()
        kept_stream = set(new.stream.upstream) if new.stream is not None else set()
        for upstream in [u for u in self.stream_health if u not in kept_stream]:
            self.stream_health.pop(upstream).close()

    def _drain_removed(self, listener: Listener) -> None:
        left = listener.drain(self.cfg.grace)
        self.draining.remove(listener)
        log.info("%s %s removed%s", listener.kind, listener.spec.bind,
                 f"; closed {left} connection(s) still open after the grace period" if left else "")

    def upgrade(self, trigger: str) -> dict:
        """A process serving alone has no workers to replace (ProcessControl.upgrade)."""
        return {"ok": False, "alone": True, "error": "an upgrade replaces worker processes: this process serves "
                                                      "alone (workers = 1); restart it instead"}

    def act(self, action: str, **args: Any) -> dict:
        """An operator's action on what this process serves (ProcessControl.act): "kick" a
        center client (``id``), "disable" or "enable" a mapping (``name``, ``client`` if several
        have it). Never raises: ``{"ok": ...}``, with ``status`` when refused."""
        centers = [listener for listener in self.listeners.values() if listener.kind == "center"]
        if action in ("disable", "enable"):
            if not centers:
                return {"ok": False, "status": 404, "error": "this process has no center server ([center] bind)"}
            return getattr(centers[0], "set_mapping")(str(args.get("name", "")), str(args.get("client", "")),
                                                      action == "enable")
        if action == "kick":
            if not centers:
                return {"ok": False, "status": 404, "error": "this process has no center server ([center] bind)"}
            who = str(args.get("id", ""))
            if any(getattr(c, "kick")(who, str(args.get("why", "control API"))) for c in centers):
                return {"ok": True, "kicked": who, "note": "its link is closed and its mappings withdrawn; it may "
                                                           "link again"}
            return {"ok": False, "status": 404, "error": f"no center client {who!r} is linked (GET /api/clients "
                                                        f"lists their ids)"}
        if action == "connections":
            return self._connections(str(args.get("listener", "")), int(args.get("limit", 100)))
        if action == "cut":
            return self._cut(str(args.get("id", "")), str(args.get("why", "control API")))
        return {"ok": False, "status": 400, "error": f"unknown action {action!r}"}

    def _tables(self) -> list[tuple[str, Listener]]:
        """The listeners whose connections GET /api/connections lists ("kind bind", listener)."""
        return [(f"{listener.kind} {listener.spec.bind}", listener) for listener in
                [*self.listeners.values(), *self.draining]
                if listener.kind not in ("control", "center") and hasattr(listener, "live")]  # (links: /api/clients)

    def _connections(self, want: str, limit: int) -> dict:
        rows = [row for label, listener in self._tables()
                if not want or want in (label, str(listener.spec.bind), listener.kind, listener.spec.label)
                for row in listener.live.rows(label)]
        return {"ok": True, "total": len(rows), "connections": live.top(rows, limit)}

    def _cut(self, conn_id: str, why: str) -> dict:
        for label, listener in self._tables():
            conn = listener.live.find(conn_id)
            if conn is not None:
                b_in, b_out = conn.bytes()
                log.info("%s %s: connection %s cut (%s) in=%d out=%d", conn.peer, label, conn_id, why, b_in, b_out)
                conn.cut()
                return {"ok": True, "cut": conn_id}
        return {"ok": False, "status": 404, "error": f"no live connection {conn_id!r} (GET /api/connections lists "
                                                    f"their ids)"}

    def reload(self, trigger: str) -> dict:
        """Load the config file again and apply it as a diff. Never raises: returns
        ``{"ok": True, added, removed, changed, unchanged}`` or ``{"ok": False, "error"}``."""
        with self._reload_lock:
            notify_reloading(trigger)
            try:
                return self._reload(trigger)
            finally:
                notify("READY=1", "STATUS=serving")

    def apply(self, new: Config, trigger: str) -> dict:
        """Apply ``new``, loaded elsewhere (a worker's master loaded and checked it), as
        :meth:`reload` applies the file's. Never raises: returns as reload."""
        with self._reload_lock:
            return self._reload(trigger, new)

    def _reload(self, trigger: str, new: Optional[Config] = None) -> dict:
        try:
            if new is None:
                new = self.load_again()
            changes = self._apply(new)
        except (ConfigError, BindError) as e:
            return self.reload_failed(trigger, str(e))
        self.reloads += 1
        self.loaded_at = time.time()
        self.last_reload_error = ""
        new_logs = LogSettings.of(new)
        if new_logs != logs.current():
            try:
                logs.setup_logging(new_logs)
            except OSError as e:
                log.error("reload (%s): cannot open log file %s: %s; the old log settings stay", trigger,
                          e.filename, e.strerror)
        log.info("reloaded %s (%s): added %s, removed %s, changed %s, %d unchanged", self.config_file, trigger,
                 changes["added"] or "none", changes["removed"] or "none", changes["changed"] or "none",
                 changes["unchanged"])
        self._follow_watch_setting()
        for listener in self.listeners.values():  # (what the control API disabled ends with a reload)
            reloaded = getattr(listener, "config_reloaded", None)
            if reloaded is not None:
                reloaded()
        return {"ok": True, **changes}

    def load_again(self) -> Config:
        """The config file loaded again (with the same command-line overrides), for a reload.
        Raises ConfigError."""
        if not self.config_file:
            raise ConfigError("", "", "started without a config file (-c): nothing to reload")
        new = config.load(self.config_file, self.overrides)
        if (new.user, new.group) != (self.cfg.user, self.cfg.group):
            raise ConfigError(self.config_file, "user", "user and group take effect at start: restart to "
                              "change them (the process gave up root when it started)")
        if new.worker_count > 1 and self.role.process is None and self.role.worker is None:
            raise ConfigError(self.config_file, "workers", "this process was started with workers = 1 and serves "
                              "alone: restart it to start a master with workers (a master takes any number, "
                              "1 included, on reload)")
        return new

    def reload_failed(self, trigger: str, error: str) -> dict:
        self.reload_failures += 1
        self.last_reload_error = error
        log.error("reload (%s) failed, the old configuration keeps serving: %s", trigger, error)
        return {"ok": False, "error": error}

    # -- watching the file ---------------------------------------------------------------------
    def _follow_watch_setting(self) -> None:
        want = bool(self.cfg.watch and self.config_file and self.role.watch_file)
        if want and self._watcher is None:
            self._watcher = gevent.spawn(self._watch_file)
        elif not want and self._watcher is not None:
            self._watcher.kill(block=False)
            self._watcher = None

    def _file_state(self) -> Optional[tuple[int, int, int]]:
        if self.config_file is None:
            return None
        try:
            st = os.stat(self.config_file)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def _watch_file(self) -> None:
        """Poll the file's mtime, size and inode; reload once a change has settled."""
        seen = self._file_state()
        while True:
            gevent.sleep(WATCH_EVERY)
            now = self._file_state()
            if now == seen or now is None:
                continue
            gevent.sleep(WATCH_SETTLE)
            if self._file_state() != now:
                continue  # still being written: look again next round
            seen = now
            gevent.spawn(self.reload, "file changed")

    @property
    def grace(self) -> float:
        return self.cfg.grace

    def _mapping_registry(self) -> Optional[MappingRegistry]:
        """The center server's mapping registry, for the shared http(s) mapping listeners (asked
        per request: found once per configuration applied)."""
        return self._registry

    def _find_registry(self) -> Optional[MappingRegistry]:
        return next((listener.mappings for listener in self.listeners.values() if isinstance(listener, CenterServer)),
                    None)

    def proxy_handler(self, proxy_cfg: ProxyConfig, stats: ConnStats, exposed: bool) -> Handler:
        """The forward proxy as a function of (connection, client address[, the address of the
        client it serves on that client's behalf, for its log]), for features that hand it
        connections of their own (the center server's PROXY streams, proxy mappings);
        ``exposed``: other hosts can reach them (loopback targets are then refused by default)."""
        from .net.relay import link_owned
        from .proxy.server import ProxyContext, serve_connection

        ctx = ProxyContext(proxy_cfg, self.resolver, link_owned, stats, local=False, exposed=exposed,
                           quotas=self.proxy_quotas)
        return lambda conn, address, behalf=None: serve_connection(ctx, conn, address, behalf)

    # -- status --------------------------------------------------------------------------------
    def status(self) -> dict:
        """Everything /status and /metrics show. Cheap: no I/O but psutil's /proc reads."""
        rows = []
        for listener in [*self.listeners.values(), *self.draining]:
            st = listener.stats
            live = getattr(listener, "live_bytes", None)  # (a UDP listener has no connections)
            live_in, live_out = live() if live is not None else (0, 0)
            rows.append({
                "kind": listener.kind,
                "bind": str(listener.spec.bind),
                "config_key": listener.spec.label,
                "state": "draining" if listener.draining else "serving",
                "connections": st.active,
                "connections_total": st.total,
                "bytes_in": st.bytes_in + live_in,
                "bytes_out": st.bytes_out + live_out,
                "requests": {str(code): n for code, n in sorted(st.statuses.items())},
                **({"request_seconds": st.request_seconds.as_dict()} if listener.answers_http else {}),
            })
        proc = self._process
        with proc.oneshot():
            cpu = proc.cpu_times()
            process = {
                "rss_bytes": proc.memory_info().rss,
                "cpu_percent": proc.cpu_percent(None),
                "cpu_seconds": round(cpu.user + cpu.system, 3),
                "open_fds": proc.num_fds(),
                "threads": proc.num_threads(),
            }
        sources: list[StatusSource] = [*self.listeners.values(),
                                       *([self.center_client] if self.center_client is not None else [])]
        return {
            "program": self.prog,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "config_file": self.config_file,
            "config_loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "last_reload_error": self.last_reload_error,
            "watch": bool(self.cfg.watch and self.config_file),
            "listeners": rows,
            "connections": sum(r["connections"] for r in rows),
            "bytes_in": sum(r["bytes_in"] for r in rows),
            "bytes_out": sum(r["bytes_out"] for r in rows),
            "center_links": [row for source in sources for row in source.link_status()],
            "mappings": [row for source in sources for row in source.mapping_status()],
            "upstreams": merge_servers([*(row for group in self.http_groups.values() for row in group.status()),
                                        *(row for source in sources for row in source.upstream_status())]),
            "certificates": self.acme.status() if self.acme is not None else [],
            "process": process,
            "recent_errors": logs.recent(),
        }

    # -- stopping -------------------------------------------------------------------------------
    def request_stop(self, why: str) -> None:
        """Begin a graceful stop (once); returns at once."""
        if not self._stopping:
            self._stopping = True
            notify("STOPPING=1", f"STATUS=stopping ({why})")
            log.info("%s: stopping (grace %.1fs)", why, self.cfg.grace)
            gevent.spawn(self.stop)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let connections finish up to ``grace`` seconds, close the rest."""
        grace = self.cfg.grace if grace is None else grace
        if self._watcher is not None:
            self._watcher.kill(block=False)
        if self.center_client is not None:
            self.center_client.stop()
        if self.acme is not None:
            self.acme.stop()
        everything = [*self.listeners.values(), *self.draining]
        left = drain_all(everything, grace)
        if left:
            log.info("closed %d connection(s) still open after the %.1fs grace period", left, grace)
        self._stopped.set()

    def serve_forever(self, on_sigusr1: Optional[Callable[[], None]] = None,
                      on_ready: Optional[Callable[[], None]] = None, reload_on_hup: bool = True) -> None:
        """Block until stopped: SIGTERM/SIGINT stop gracefully, SIGHUP reloads (unless not
        ``reload_on_hup``: a worker, whose master reloads), SIGUSR1 calls ``on_sigusr1`` (log
        reopening). ``on_ready()`` is called once the handlers are in place (a SIGHUP before
        that is ignored, not fatal)."""
        actions: dict[signal.Signals, Callable[[], object]] = {
            signal.SIGTERM: lambda: self.request_stop("SIGTERM"), signal.SIGINT: lambda: self.request_stop("SIGINT")}
        if reload_on_hup:
            actions[signal.SIGHUP] = lambda: gevent.spawn(self.reload, "SIGHUP")
            actions[signal.SIGUSR2] = lambda: log.warning(
                "SIGUSR2 upgrades a master and its workers; this process serves alone (workers = 1): ignored, "
                "restart it to run the installed code")
        if on_sigusr1 is not None:
            actions[signal.SIGUSR1] = on_sigusr1
        serve_until(self._stopped, actions, on_ready)


def serve_until(stopped: Event, actions: dict[signal.Signals, Callable[[], object]],
                on_ready: Optional[Callable[[], None]]) -> None:
    """Run ``actions[sig]()`` on each of those signals, call ``on_ready()`` once they are in
    place, and block until ``stopped`` is set (then the handlers go)."""
    handlers = [gevent.signal_handler(sig, action) for sig, action in actions.items()]
    try:
        if on_ready is not None:
            on_ready()
        stopped.wait()
    finally:
        for h in handlers:
            h.cancel()
    log.info("stopped")


def acme_settings(cfg: Config) -> Optional[AcmeSettings]:
    """What the ACME manager works from, or None when no certificate comes from ACME."""
    if not cfg.uses_acme:
        return None
    names = tuple((name, f"http.server[{i}]") for i, srv in enumerate(cfg.http.server if cfg.http else ())
                  if srv.acme for name in srv.server_name)
    center = cfg.center
    mappings = center is not None and center.map_acme
    return AcmeSettings(Directory(cfg.acme_directory, cfg.acme_email, cfg.acme_ca, cfg.acme_eab_kid,
                                  cfg.acme_eab_hmac_key), cfg.acme_path,
                        cfg.acme_challenge_type, names, mappings,
                        center.map_acme_domains if center is not None and mappings else ())


def check_acme_dir(path: str) -> None:
    """acme_dir made if missing, and writable by this process; raises ConfigError naming it."""
    try:
        CertStore(path).made()
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("not writable by this user")
    except OSError as e:
        raise ConfigError("", "acme_dir", f"cannot use {path} for the ACME account and certificates: "
                                          f"{e.strerror or e}; set acme_dir to a directory this user may write") from None


def _center_client_cfg(cfg: Config) -> Optional[CenterConfig]:
    return cfg.center if cfg.center is not None and not cfg.center.is_server else None


def _bound(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return str(Addr(host, port))


def _warn_if_open(pc: ProxyConfig) -> None:
    if pc.bind is not None and not pc.bind.is_loopback and not pc.auth and not pc.allow:
        log.warning("proxy.bind %s is reachable from other hosts with no username/password and no "
                    "allow list: this is an open proxy", pc.bind)
