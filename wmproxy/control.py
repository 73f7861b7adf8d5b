"""The control API: ``GET /status`` (JSON), ``GET /metrics`` (Prometheus text format),
``POST /reload``, ``POST /stop``. Also the client side used by ``wmproxy-server status``,
``reload`` and ``stop``.

With ``control_token`` set, every request needs ``Authorization: Bearer <token>``; without
one, the config refuses any but a loopback address. One request per connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import importlib.resources
import ipaddress
import json
import logging
import re
import socket
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

import gevent
import psutil

from .config import Addr, Config
from .services import ProcessControl, Services
from .errors import PhaseTimeout, ProtocolError
from .listener import Listener, ListenerSpec
from .net import httpio
from .net.conn import Address, Conn
from .net.dial import plain_ip
from .net.reader import PeerClosed, Reader
from .net.targets import host_addresses
from .prot import http1
from .prot.framing import NO_BODY, request_framing

log = logging.getLogger("wmproxy.control")

MAX_BODY = 65536
REQUEST_TIMEOUT = 10.0  # a request's head and body must be whole within this from the connection's start


class ControlContext:
    def __init__(self, token: str, process: ProcessControl) -> None:
        self.token = token
        self.process = process


def _reply(client: Conn, status: int, body: bytes, content_type: str) -> None:
    head = http1.encode_head(f"HTTP/1.1 {status} {http1.REASONS.get(status, 'OK')}", [
        (b"Date", http1.http_date()), (b"Content-Type", content_type.encode()),
        (b"Content-Length", str(len(body)).encode()),
        (b"Cache-Control", b"no-store"),
        (b"Connection", b"close"),
    ])
    client.sendall(head + body)


def _json(client: Conn, status: int, value: object) -> None:
    _reply(client, status, json.dumps(value, indent=2).encode() + b"\n", "application/json")


def relayed_by_us(address: Address, local: Address) -> bool:
    """Whether the connection from the peer ``address`` to ``local`` (the control socket's end)
    is an outgoing connection of this very process or of its workers: a forward proxy, a
    mapping or a reverse proxy dialled the control port for a client. (The forward proxy refuses its own listeners
    already; this holds whatever route.) Both ends must match: the kernel gives one local port
    to connections to different destinations, so a port alone is not ours. Only a peer with one
    of this host's addresses can be: the others cost no scan of the process's connections."""
    try:
        addr = plain_ip(address[0])
    except ValueError:
        return False
    if not (addr.is_loopback or addr in host_addresses()):
        return False
    me = psutil.Process()
    conns = []
    try:
        procs = [me, *me.children()]  # (a master's workers too)
    except (psutil.Error, OSError):
        procs = [me]
    for proc in procs:
        try:
            conns += proc.net_connections(kind="tcp")
        except (psutil.Error, OSError):  # (a worker that just exited)
            if proc is me:
                return False
    peer, ours = (address[0], address[1]), (local[0], local[1])
    return any(c.laddr and c.raddr and (c.laddr[0], c.laddr[1]) == peer and (c.raddr[0], c.raddr[1]) == ours
               for c in conns)


class ControlServer(Listener):
    """The control API listener (``control = "127.0.0.1:8837"``)."""

    kind = "control"

    def make_context(self, settings: "ControlSettings", services: Services) -> ControlContext:
        return ControlContext(settings.token, services.process)

    def max_connections(self, settings: "ControlSettings") -> int:
        return 64

    def serve(self, client: socket.socket, address: Address, ctx: ControlContext) -> None:
        client.settimeout(REQUEST_TIMEOUT)
        # a loopback peer, but one of our own connections: a proxy user's
        if relayed_by_us(address, client.getsockname()):
            _json(client, 403, {"error": "the control API does not take connections relayed by this process"})
            log.warning("control API: refused a connection from %s relayed by this process (proxy, mapping or "
                        "reverse proxy)", address[0])
            return
        reader = Reader(client)
        try:  # (a deadline for the whole request, not only a timer per recv: a dribbled head holds no slot)
            with gevent.Timeout(REQUEST_TIMEOUT, PhaseTimeout(f"request not complete within {REQUEST_TIMEOUT:g}s")):
                head = http1.parse_request_head(httpio.read_head(reader, 16384))
                framing = request_framing(head)
                if framing != NO_BODY and (framing.kind != "length" or framing.length > MAX_BODY):
                    raise ProtocolError("request body too large or chunked")
                httpio.copy_body(reader, lambda data: None, framing, False)
        except ProtocolError as e:
            _json(client, e.http_status, {"error": str(e)})
            return
        except PhaseTimeout as e:
            log.info("control API: %s cut: %s", address[0], e)
            return
        except (PeerClosed, OSError):
            return
        why = _browser_refusal(head, bool(ctx.token))
        if why:
            _json(client, 403, {"error": why})
            log.warning("control API: refused %s %s from %s: %s", head.method, head.target, address[0], why)
            return
        if head.target.split("?", 1)[0] in ("/", "/index.html") and head.method in ("GET", "HEAD"):
            return _dashboard(client)  # (the page holds no data: it asks for the token itself)
        if ctx.token:
            given = (head.get(b"authorization") or b"").partition(b" ")
            if given[0].lower() != b"bearer" or not hmac.compare_digest(given[2].strip(), ctx.token.encode()):
                _json(client, 401, {"error": "missing or wrong 'Authorization: Bearer <control_token>'"})
                log.warning("control API: refused %s %s from %s (bad token)", head.method, head.target, address[0])
                return
        self._route(client, head, ctx.process)

    def _route(self, client: Conn, head: http1.Head, process: ProcessControl) -> None:
        path = head.target.split("?", 1)[0]
        if path.startswith("/api/"):
            return _api(client, head.method, path, head.target.partition("?")[2], process)
        routes = {
            "/status": ("GET", lambda: _json(client, 200, process.status())),
            "/metrics": ("GET", lambda: _reply(client, 200, metrics_text(process.status()).encode(),
                                               "text/plain; version=0.0.4; charset=utf-8")),
            "/reload": ("POST", lambda: self._reload(client, process)),
            "/stop": ("POST", lambda: self._stop(client, process)),
            "/upgrade": ("POST", lambda: self._upgrade(client, process)),
        }
        if path not in routes:
            _json(client, 404, {"error": f"no such endpoint {path!r}", "endpoints": sorted(routes)})
            return
        method, action = routes[path]
        if head.method != method and not (method == "GET" and head.method == "HEAD"):
            _json(client, 405, {"error": f"{path} takes {method}"})
            return
        action()

    def _reload(self, client: Conn, process: ProcessControl) -> None:
        result = process.reload("control API")
        _json(client, 200 if result["ok"] else 400, result)

    def _upgrade(self, client: Conn, process: ProcessControl) -> None:
        result = process.upgrade("control API")
        _json(client, 200 if result["ok"] else 409 if result.get("alone") else 500, result)

    def _stop(self, client: Conn, process: ProcessControl) -> None:
        _json(client, 202, {"ok": True, "stopping": True, "grace_seconds": process.grace})
        gevent.spawn_later(0.05, process.request_stop, "POST /stop")


# -- the dashboard (GET /) and what a browser may not do ------------------------------------------

def _browser_refusal(head: http1.Head, has_token: bool) -> str:
    """Why a request a browser sent on another site's behalf is refused ('' to go on): a
    state-changing one whose Origin is not this API's (cross-site request forgery); and,
    without a token, one whose Host is a name, not an address (DNS rebinding: a page of
    evil.example resolved to 127.0.0.1 sends Host evil.example)."""
    host = (head.get(b"host") or b"").decode("latin-1").strip().lower()
    if not has_token:
        name = host.rsplit(":", 1)[0].strip("[]") if not host.endswith("]") else host.strip("[]")
        if name and name != "localhost" and not _is_ip(name):
            return f"Host {host!r} is a name, not this API's address: a page that rebound its name to us?"
    origin = head.get(b"origin")
    if origin is not None and head.method not in ("GET", "HEAD", "OPTIONS"):
        seen = origin.decode("latin-1").strip().lower().split("://", 1)[-1].rstrip("/")
        if seen != host:
            return f"a request from the page {origin.decode('latin-1')!r} of another site"
    return ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_PAGE: list[bytes] = []  # the dashboard, read once


def _dashboard(client: Conn) -> None:
    if not _PAGE:
        _PAGE.append(importlib.resources.files("wmproxy.dashboard").joinpath("index.html").read_bytes())
    page = _PAGE[0]
    scripts = re.findall(rb"<script>(.*?)</script>", page, re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts)
    head = http1.encode_head("HTTP/1.1 200 OK", [
        (b"Date", http1.http_date()), (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Length", str(len(page)).encode()),
        (b"Cache-Control", b"no-store"), (b"X-Frame-Options", b"DENY"), (b"Referrer-Policy", b"no-referrer"),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Content-Security-Policy", f"default-src 'none'; connect-src 'self'; img-src data:; "
                                     f"style-src 'unsafe-inline'; script-src {hashes}; frame-ancestors 'none'; "
                                     f"form-action 'none'; base-uri 'none'".encode()),
        (b"Connection", b"close")])
    client.sendall(head + page)


# -- /api: lists of what the process serves, and actions on it (docs/openapi.yaml) -----------------

def api_clients(st: dict) -> list[dict]:
    """GET /api/clients: the center clients linked to this server."""
    return [{"id": c["id"], "account": c["client"], "client_id": c["client_id"] or None, "address": c["peer"],
             "tls": c["tls"], "since": c["since"], "rtt_seconds": c["rtt"], "streams": c["streams"],
             "bytes_in": c["bytes_in"], "bytes_out": c["bytes_out"], "bytes_per_second": c["rate"]}
            for c in st["center_links"] if c["role"] == "server"]


def api_mappings(st: dict) -> list[dict]:
    """GET /api/mappings: on a center server the mappings it publishes (their public side:
    the local side stays with the client, which never tells it); on a center client its own,
    with their local side and whether its servers took them."""
    rows = []
    for m in st["mappings"]:
        public = m.get("remote_bind") or (f"Host {m['domain']}" if m.get("domain") else "")
        if "connected" not in m:  # a center client's own
            rows.append({"name": m["name"], "client": None, "account": None, "mode": m["mode"], "public": public,
                         "local": m["local_addr"] or None, "state": m["state"], "connections": None,
                         "connections_total": None, "requests": None, "bytes_in": None, "bytes_out": None,
                         "group": None})
            continue
        rows.append({"name": m["name"], "client": m.get("holder") or m["client"], "account": m["client"],
                     "mode": m["mode"], "public": public, "local": None,
                     "state": "disabled" if m.get("disabled") else "connected" if m["connected"] else "offline",
                     **{k: m.get(k) for k in ("connections", "connections_total", "requests", "bytes_in", "bytes_out",
                                              "group")}})
    return rows


def api_listeners(st: dict) -> list[dict]:
    return [{k: row[k] for k in ("kind", "bind", "config_key", "state", "connections", "connections_total",
                                 "bytes_in", "bytes_out", "requests")} for row in st["listeners"]]


def api_upstreams(st: dict) -> list[dict]:
    return [{k: u.get(k) for k in ("kind", "upstream", "server", "up", "active", "requests", "failures",
                                   "last_check", "last_check_ok")}
            for u in st["upstreams"]]


MAX_CONNECTIONS_LISTED = 10000  # GET /api/connections?limit=
STATUS_TOP = 10  # the connections `status` shows


def api_certificates(st: dict) -> list[dict]:
    """The ACME certificates: one row per name wanted."""
    return list(st.get("certificates", []))


_LISTS = {"/api/clients": api_clients, "/api/mappings": api_mappings, "/api/listeners": api_listeners,
          "/api/upstreams": api_upstreams, "/api/certificates": api_certificates}


def _api(client: Conn, method: str, path: str, query: str, process: ProcessControl) -> None:
    if path in _LISTS:
        if method not in ("GET", "HEAD"):
            return _json(client, 405, {"error": f"{path} takes GET"})
        return _json(client, 200, _LISTS[path](process.status()))
    parts = path.split("/")  # ['', 'api', 'mappings', NAME, 'disable' | 'enable']
    if len(parts) == 5 and parts[2] == "mappings" and parts[4] in ("disable", "enable"):
        if method != "POST":
            return _json(client, 405, {"error": f"/api/mappings/{{name}}/{parts[4]} takes POST"})
        who = parse_qs(query).get("client", [""])[0]
        result = process.act(parts[4], name=unquote(parts[3]), client=who)
        return _json(client, result.pop("status", 200 if result.get("ok") else 400), result)
    if path == "/api/connections":
        if method not in ("GET", "HEAD"):
            return _json(client, 405, {"error": f"{path} takes GET (DELETE /api/connections/{{id}} cuts one)"})
        q = parse_qs(query)
        limit = q.get("limit", ["100"])[0]
        if not re.fullmatch(r"[0-9]{1,6}", limit) or not 1 <= int(limit) <= MAX_CONNECTIONS_LISTED:
            return _json(client, 400, {"error": f"limit={limit!r}: a number from 1 to {MAX_CONNECTIONS_LISTED}"})
        result = process.act("connections", listener=q.get("listener", [""])[0], limit=int(limit))
        result.pop("ok", None)
        return _json(client, result.pop("status", 200), result)
    if path.startswith("/api/connections/"):
        if method != "DELETE":
            return _json(client, 405, {"error": "/api/connections/{id} takes DELETE (cut the connection)"})
        result = process.act("cut", id=unquote(path[len("/api/connections/"):]),
                             why="DELETE /api/connections (control API)")
        return _json(client, result.pop("status", 200 if result.get("ok") else 400), result)
    if path.startswith("/api/clients/"):
        who = unquote(path[len("/api/clients/"):])
        if method != "DELETE":
            return _json(client, 405, {"error": "/api/clients/{id} takes DELETE (kick the client)"})
        result = process.act("kick", id=who, why="DELETE /api/clients (control API)")
        return _json(client, result.pop("status", 200 if result.get("ok") else 400), result)
    _json(client, 404, {"error": f"no such endpoint {path!r}", "endpoints": [
        *sorted(_LISTS), "/api/clients/{id}", "/api/connections", "/api/connections/{id}",
        "/api/mappings/{name}/disable", "/api/mappings/{name}/enable"]})


def listener_specs(cfg: Config) -> list[ListenerSpec]:
    if cfg.control is None:
        return []
    return [ListenerSpec("control", cfg.control, ControlSettings(cfg.control, cfg.control_token), "control",
                         ControlServer)]


@dataclass(frozen=True)
class ControlSettings:
    """What the control API listener is made from (compared on reload)."""

    bind: Addr
    token: str


# -- Prometheus text format ------------------------------------------------------------------

def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(st: dict) -> str:
    """The status as Prometheus text exposition format 0.0.4."""
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    def histogram(name: str, help_: str, samples: list[tuple[dict, dict]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} histogram")
        for labels, h in samples:
            text = "".join(f'{k}="{_label(v)}",' for k, v in labels.items())
            out.extend(f'{name}_bucket{{{text}le="{le}"}} {n}' for le, n in h["buckets"].items())
            out.append(f"{name}_sum{{{text.rstrip(',')}}} {h['sum']}")
            out.append(f"{name}_count{{{text.rstrip(',')}}} {h['count']}")

    rows = st["listeners"]
    # labels that stay while a series lives: a listener's state is a series of its own
    per = [({"kind": r["kind"], "bind": r["bind"]}, r) for r in rows]
    metric("wmproxy_info", "gauge", "Version of the running program.",
           [({"version": st["version"], "program": st["program"]}, 1)])
    metric("wmproxy_uptime_seconds", "gauge", "Seconds since the process started.", [({}, st["uptime_seconds"])])
    metric("wmproxy_open_connections", "gauge", "Open client connections per listener.",
           [(labels, r["connections"]) for labels, r in per])
    metric("wmproxy_connections_total", "counter", "Client connections accepted per listener.",
           [(labels, r["connections_total"]) for labels, r in per])
    metric("wmproxy_received_bytes_total", "counter", "Bytes received from clients per listener.",
           [(labels, r["bytes_in"]) for labels, r in per])
    metric("wmproxy_sent_bytes_total", "counter", "Bytes sent to clients per listener.",
           [(labels, r["bytes_out"]) for labels, r in per])
    metric("wmproxy_http_requests_total", "counter", "HTTP requests answered, by status.",
           [({**labels, "status": code}, n) for labels, r in per for code, n in r["requests"].items()])
    metric("wmproxy_listener_draining", "gauge", "1 while a listener removed by a reload drains.",
           [(labels, int(r["state"] == "draining")) for labels, r in per])
    histogram("wmproxy_http_request_duration_seconds", "HTTP requests from the head read to the answer's end.",
              [(labels, r["request_seconds"]) for labels, r in per if "request_seconds" in r])
    ups = [({"kind": u["kind"], "upstream": u["upstream"], "server": u["server"]}, u) for u in st["upstreams"]]
    metric("wmproxy_upstream_up", "gauge", "1 while an upstream server is in use (not out after failures or checks).",
           [(labels, int(u["up"])) for labels, u in ups])
    metric("wmproxy_upstream_requests_total", "counter", "Requests sent to an upstream server.",
           [(labels, u["requests"]) for labels, u in ups])
    metric("wmproxy_upstream_failures_total", "counter", "Connects and requests an upstream server failed.",
           [(labels, u["failures"]) for labels, u in ups])
    histogram("wmproxy_upstream_connect_seconds", "New connections to an upstream server (DNS, TCP, TLS).",
              [(labels, u["connect_seconds"]) for labels, u in ups])
    histogram("wmproxy_upstream_first_byte_seconds", "From the request sent to the response head received.",
              [(labels, u["first_byte_seconds"]) for labels, u in ups])
    # (a server's row: the client as the server tells clients apart, by id or else by address)
    links = [({"role": "client", "server": c["server"]} if c["role"] == "client" else
               {"role": "server", "client": c["client"] + (f"#{c['client_id']}" if c.get("client_id") else
                                                           f"@{c['peer']}")}, c)
             for c in st["center_links"]]
    metric("wmproxy_center_links", "gauge", "Center links that are up.",
           [({}, sum(1 for _, c in links if c.get("state", "up") == "up"))])
    metric("wmproxy_center_link_up", "gauge", "1 while a center link is up (a client's row per server).",
           [(labels, int(c.get("state", "up") == "up")) for labels, c in links])
    metric("wmproxy_center_link_streams", "gauge", "Streams open on a center link.",
           [(labels, c["streams"]) for labels, c in links])
    metric("wmproxy_center_link_rtt_seconds", "gauge", "A center link's round trip time (its last PING).",
           [(labels, c["rtt"]) for labels, c in links if c.get("rtt") is not None])
    metric("wmproxy_center_link_bytes_total", "counter", "Bytes a center link carried (frames, both ways).",
           [({**labels, "direction": d}, c[f"bytes_{d}"]) for labels, c in links for d in ("in", "out")])
    certs = [({"name": c["name"]}, c) for c in st.get("certificates", [])]
    metric("wmproxy_certificate_expiry_timestamp_seconds", "gauge", "When an ACME certificate expires (seconds since "
           "the epoch; none while a name has no certificate).",
           [(labels, c["not_after"]) for labels, c in certs if c["not_after"]])
    metric("wmproxy_certificate_renewal_failures", "gauge", "Failed attempts in a row to obtain a name's certificate.",
           [(labels, c["failures"]) for labels, c in certs])
    metric("wmproxy_reloads_total", "counter", "Configuration reloads applied.", [({}, st["reloads"])])
    metric("wmproxy_reload_failures_total", "counter", "Configuration reloads refused (old one kept).",
           [({}, st["reload_failures"])])
    metric("wmproxy_config_loaded_timestamp_seconds", "gauge", "When the configuration in use was loaded.",
           [({}, st["config_loaded_at"])])
    if "workers" in st:  # a master: each worker's own figures beside the sums above
        ws = [({"worker": str(w["id"])}, w) for w in st["workers"]]
        metric("wmproxy_worker_up", "gauge", "1 while a worker answers the master.",
               [(labels, int(w["state"] == "serving")) for labels, w in ws])
        metric("wmproxy_worker_restarts_total", "counter", "Times the master started a worker again after it died.",
               [(labels, w["restarts"]) for labels, w in ws])
        metric("wmproxy_worker_open_connections", "gauge", "Open client connections per worker.",
               [(labels, w["connections"]) for labels, w in ws if "connections" in w])
        metric("wmproxy_worker_resident_memory_bytes", "gauge", "Resident memory of each worker.",
               [(labels, w["rss_bytes"]) for labels, w in ws if "rss_bytes" in w])
        metric("wmproxy_worker_cpu_seconds_total", "counter", "User and system CPU time of each worker.",
               [(labels, w["cpu_seconds"]) for labels, w in ws if "cpu_seconds" in w])
    p = st["process"]  # (a master: its workers' summed in, the whole tree)
    metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", [({}, p["rss_bytes"])])
    metric("process_cpu_seconds_total", "counter", "User and system CPU time in seconds.", [({}, p["cpu_seconds"])])
    metric("process_open_fds", "gauge", "Open file descriptors.", [({}, p["open_fds"])])
    metric("process_start_time_seconds", "gauge", "Start time since the epoch in seconds.", [({}, st["started_at"])])
    return "\n".join(out) + "\n"


# -- the client side (wmproxy-server status | reload | stop) ----------------------------------

class ControlClientError(Exception):
    pass


def call(cfg: Config, method: str, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """One request to the control API named in ``cfg``. Plain blocking sockets are fine here:
    the command-line tools run no gevent hub. Raises ControlClientError."""
    if cfg.control is None:
        raise ControlClientError("no control API in this configuration: set control = \"127.0.0.1:8837\"")
    host = cfg.control.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    conn = http.client.HTTPConnection(host, cfg.control.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {cfg.control_token}"} if cfg.control_token else {}
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError as e:
        raise ControlClientError(f"cannot reach the control API at {cfg.control}: {e.strerror or e}") from None
    finally:
        conn.close()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if h or d else "") + f"{m:02d}m{s:02d}s"


def format_status(st: dict) -> str:
    """The status as a readable table."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["config_loaded_at"]))
    p = st["process"]
    lines = [
        f"{st['program']} {st['version']}  pid {st['pid']}  up {_duration(st['uptime_seconds'])}",
        f"config   {st['config_file'] or '(embedded default)'}  loaded {when}  reloads {st['reloads']}  "
        f"failed {st['reload_failures']}" + ("  (watching)" if st["watch"] else ""),
        f"process  rss {_size(p['rss_bytes'])}  cpu {p['cpu_percent']:.1f}% ({p['cpu_seconds']:.1f}s)  "
        f"open fds {p['open_fds']}",
    ]
    if st["last_reload_error"]:
        lines.append(f"last reload error: {st['last_reload_error']}")
    for w in st.get("workers", []):  # a master's workers
        lines.append(f"worker {w['id']}  pid {w['pid']}  {w['state']}  up {_duration(time.time() - w['started_at'])}  "
                     f"restarts {w['restarts']}" + (f"  conns {w['connections']}  rss {_size(w['rss_bytes'])}  "
                                                    f"cpu {w['cpu_seconds']:.1f}s" if "rss_bytes" in w else ""))
    lines.append("")
    lines += _table(("KIND", "BIND", "STATE", "CONNS", "TOTAL", "IN", "OUT", "REQUESTS"), [
        (r["kind"], r["bind"], r["state"], str(r["connections"]), str(r["connections_total"]), _size(r["bytes_in"]),
         _size(r["bytes_out"]), " ".join(f"{k}:{v}" for k, v in r["requests"].items()) or "-")
        for r in st["listeners"]])
    server = any(r["kind"] == "center" for r in st["listeners"])  # a center server: its clients and mappings
    clients = api_clients(st) if server else []
    if server:
        lines += ["", f"center clients: {len(clients)}"]
        lines += _table(("ID", "ADDRESS", "TLS", "UP", "RTT", "STREAMS", "IN", "OUT", "RATE"), [
            (c["id"], c["address"], c["tls"]["version"] if c["tls"] else "plain", _duration(time.time() - c["since"]),
             f"{c['rtt_seconds'] * 1000:.1f}ms" if c["rtt_seconds"] is not None else "-", str(c["streams"]),
             _size(c["bytes_in"]), _size(c["bytes_out"]), _size(c["bytes_per_second"]) + "/s") for c in clients])
    mappings = api_mappings(st)
    served = [m for m in mappings if m["account"] is not None]
    if server:
        lines += ["", f"mappings: {len(served)}"]
        lines += _table(("NAME", "ACCOUNT", "MODE", "PUBLIC", "STATE", "CONNS", "TOTAL", "REQS", "IN", "OUT"), [
            (m["name"], m["account"], m["mode"], m["public"] or "-", m["state"], *(
                "-" if m[k] is None else str(m[k]) for k in ("connections", "connections_total", "requests")),
             _size(m["bytes_in"] or 0), _size(m["bytes_out"] or 0)) for m in served])
    own = [m for m in mappings if m["account"] is None]
    if own:  # a center client's
        lines += ["", f"own mappings: {len(own)}"]
        lines += _table(("NAME", "MODE", "PUBLIC", "LOCAL", "STATE"), [
            (m["name"], m["mode"], m["public"] or "-", m["local"] or "-", m["state"]) for m in own])
    links = [link for link in st["center_links"] if link["role"] == "client"]
    if links:  # a center client's, one line per server
        lines += ["", f"center links: {len(links)}  mappings: {len(st['mappings'])}"]
    for link in links:
        rtt = f", rtt {link['rtt'] * 1000:.1f}ms" if link.get("rtt") is not None else ""
        lines.append(f"  to {link['server']}: {link['state']}{rtt}, {link['streams']} streams, "
                     f"{link['attempts']} attempts" + (f", last error: {link['last_error']}"
                                                       if link["last_error"] else ""))
    top = st.get("top_connections")  # (wmproxy-server status asks for them)
    if top and top["total"]:
        lines += ["", f"connections: {top['total']}" + (f", the {len(top['connections'])} that moved the most"
                                                         if top["total"] > len(top["connections"]) else "")]
        lines += _table(("ID", "LISTENER", "PEER", "TARGET", "AGE", "IN", "OUT"), [
            (c["id"], c["listener"], c["peer"], c["target"] or "-", _duration(c["age_seconds"]), _size(c["bytes_in"]),
             _size(c["bytes_out"])) for c in top["connections"]])
    upstreams = api_upstreams(st)
    if upstreams:
        lines += ["", f"upstream servers: {len(upstreams)}"]
        lines += _table(("KIND", "UPSTREAM", "SERVER", "UP", "ACTIVE", "REQUESTS", "FAILURES", "LAST CHECK"), [
            (u["kind"], u["upstream"], u["server"], "up" if u["up"] else "OUT", str(u["active"]), str(u["requests"]),
             str(u["failures"]), "-" if u["last_check"] is None else
             f"{_duration(time.time() - u['last_check'])} ago, {'ok' if u['last_check_ok'] else 'FAILED'}")
            for u in upstreams])
    certs = st.get("certificates", [])
    if certs:
        lines += ["", f"certificates (ACME): {len(certs)}"]
        lines += _table(("NAME", "STATE", "ISSUER", "EXPIRES", "RENEWAL", "SOURCE", "LAST ERROR"), [
            (c["name"], c["state"], c["issuer"] or "-", _stamp(c["not_after"]), _stamp(c["next_renewal"]) if
             c["next_attempt"] is None else f"retry {_stamp(c['next_attempt'])}", c["source"], c["last_error"] or "-")
            for c in certs])
    return "\n".join(lines)


def _stamp(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
