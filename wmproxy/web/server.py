"""``[http]``: the reverse proxy and static file server (nginx-like servers and locations).

One listener per bind address, serving the ``[[http.server]]`` tables that name it (TLS with
the certificate the client's SNI picks when they have cert/key). Each request of a keep-alive
connection picks its server by Host and its location by path (route.py), is checked against
the location's ``deny_ip``/``allow_ip``, then gets its location's one action: ``proxy_url``
(an upstream group or a URL: balancing, keep-alive pool, passive health, the next server when
one cannot be reached, websocket upgrades passed through), ``file_server``,
``static_response`` or ``redirect``. Header rules of the server and then the location apply
to the request sent upstream (``proxy ...`` rules) and to every response. One access log line
per request.
"""

from __future__ import annotations

import copy
import itertools
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence, cast
from urllib.parse import urlsplit

import gevent

from ..config.http import ErrorPage
from ..config import Config, HttpConfig, HttpLocationConfig, HttpServerConfig, to_addr
from ..errors import ClientGone, PhaseTimeout, ProtocolError, UpstreamError
from ..listener import Listener, ListenerSpec
from ..services import Services
from ..logs import access_log, log_access
from ..metrics import Histogram
from ..net import httpio
from ..net.conn import Address, Data
from ..net.dial import fmt_addr, in_networks, ip_allowed
from ..net.idle import INF, ConnWatch
from ..net.live import current
from ..net.proxyproto import ProxyProtocolIn, header_for, policy, real_ip
from ..net.reader import PeerClosed, Reader
from ..net.certstore import CHALLENGE_PATH, CertStore, answer_tls_alpn, safe_name
from ..net.tls import sni_server_context
from ..net.throttle import Throttled
from ..net.writer import close_quietly, linger, send_all
from ..prot import http1
from ..prot.framing import NO_BODY, request_framing
from ..prot.target import host_name
from ..prot.frame import HeaderRule
from ..prot.rules import apply_header_rules, fill
from . import files
from . import h2up
from .h2 import PREFACE_HEAD, H2Connections, H2Settings, H2Stream
from .route import candidates, name_matches, normalize_path, pick_server
from .upstream import Conn as UpstreamConn, ServerState, UpstreamGroup

log = logging.getLogger("wmproxy.http")

_REPLACED = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-real-ip", b"expect"))
ROUTES_CACHED = 4096
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
MAX_REDIRECTS = 10  # internal redirects of one request (error_page, try_paths' @name), as nginx's


class WebContext:
    """What the requests of one listener share: its servers, the upstream groups, TLS."""

    def __init__(self, servers: tuple, http: HttpConfig, scheme: str, services: Services, acme_dir: str = "") -> None:
        self.servers = servers
        self.http = http
        self.scheme = scheme
        self.scheme_bytes = scheme.encode()
        self.resolver = services.resolver
        self.groups = services.http_groups  # shared by every listener, kept across reloads while unchanged
        self.limits = services.http_limits
        first = servers[0]  # (http2 and its limits: the same on every server of an address, the config says so)
        alpn = ("h2", "http/1.1") if first.http2 else ()
        # ACME: certificates from acme_dir's store for the acme servers' names; a plain listener
        # answers http-01 from it, a TLS one tls-alpn-01
        self.certs = CertStore(acme_dir) if acme_dir else None
        self.acme_names = acme_names(servers)
        self.ssl = None
        if scheme == "https":
            pairs = [(s.cert, s.key) for s in servers if s.cert]
            dynamic = partial(_acme_context, self.certs, self.acme_names, alpn, not pairs) \
                if self.certs and self.acme_names else None
            self.ssl = sni_server_context(pairs, alpn=alpn, dynamic=dynamic)
        self.read_timeout = max(s.client_read_timeout for s in servers)
        self.header_timeout = max(s.client_header_timeout for s in servers)
        self.h2 = H2Settings(first.http2_max_concurrent_streams, first.http2_header_table_size,
                             max(s.max_header_size for s in servers), self.read_timeout,
                             self.header_timeout) if first.http2 else None
        self.body_timeout = max(s.client_body_timeout for s in servers)
        self.body_min_rate = min(s.client_body_min_rate for s in servers)
        self.max_head = max(s.max_header_size for s in servers)
        self.max_headers = max(s.max_headers for s in servers)
        self.real_ip_from = http.real_ip_from
        self.real_ip_header = http.real_ip_header.lower().encode("latin-1")
        # per server and per location (by id: the config objects live as long as this context)
        self._plans: dict[int, _Plan] = {}
        for srv in servers:
            self._plans[id(srv)] = _Plan(srv.headers)
            for loc in srv.location:
                self._plans[id(loc)] = _Plan((*srv.headers, *loc.headers))
        self._servers: dict[str, HttpServerConfig] = {}  # Host value -> server
        self._locations: dict[tuple[int, str], tuple[HttpLocationConfig, ...]] = {}  # (server, path) -> candidates
        self._conditional = {id(loc) for srv in servers for loc in srv.location  # locations with conditions
                             if loc.method or loc.host or loc.client_ip or loc.scheme}
        # error_page: status -> page, per server and per location that has its own; named locations
        self._pages: dict[int, dict[int, ErrorPage]] = {}
        self._named: dict[tuple[int, str], HttpLocationConfig] = {}
        for srv in servers:
            self._pages[id(srv)] = {code: page for page in srv.error_page for code in page.codes}
            for loc in srv.location:
                if loc.error_page:
                    self._pages[id(loc)] = {code: page for page in loc.error_page for code in page.codes}
                if loc.rule.kind == "named":
                    self._named[(id(srv), loc.rule.text)] = loc
        self._codes = {key: frozenset(pages) for key, pages in self._pages.items()}
        for srv in servers:
            for loc in srv.location:
                self._plans[id(loc)].pages = self.page_codes(srv, loc)
        for upstream in http.upstream:  # now, not at the first request: their health checks start
            if upstream not in self.groups:
                self.groups[upstream] = UpstreamGroup(upstream, self.resolver)

    def pages(self, server: HttpServerConfig, loc: Optional[HttpLocationConfig]) -> dict[int, ErrorPage]:
        """The error pages in force: the location's own, else its server's."""
        return (self._pages.get(id(loc)) if loc is not None else None) or self._pages[id(server)]

    def page_codes(self, server: HttpServerConfig, loc: HttpLocationConfig) -> frozenset:
        """The statuses of :meth:`pages` (computed once per context)."""
        return self._codes.get(id(loc)) or self._codes[id(server)]

    def named(self, server: HttpServerConfig, name: str) -> Optional[HttpLocationConfig]:
        return self._named.get((id(server), name))

    def believe(self, req: "Request") -> None:
        """A request from a proxy of real_ip_from: the client's address is its header's word.
        When that word is the X-Forwarded-For list, the list goes on extended by the proxy's
        own address (it stays the chain of hops); else by the client's."""
        values = req.head.index.get(self.real_ip_header)
        if values:
            real = real_ip(req.ip, values, self.real_ip_from)
            if real != req.ip and self.real_ip_header == b"x-forwarded-for":
                req.forward_as = req.ip
            req.ip = real

    def limiter(self, loc: HttpLocationConfig) -> "RateLimit":
        """The token buckets of a location with limit_req (shared by the listeners; a reload
        starts them afresh)."""
        key = (loc.rule, loc.limit_req)
        limit = self.limits.get(key)
        if limit is None:
            assert loc.limit_req is not None
            limit = self.limits[key] = RateLimit(loc.limit_req.rate, loc.limit_req.burst)
        return limit

    def plan(self, server: HttpServerConfig | None, loc: HttpLocationConfig | None) -> "_Plan":
        """What is worked out once for a location (None: for its server alone)."""
        return self._plans[id(loc if loc is not None else server)]

    def group_for(self, loc: HttpLocationConfig) -> tuple[UpstreamGroup, str]:
        """The group a location's proxy_url names (an upstream, else its host:port; over TLS for
        https) and the URL's path ('' if none). Worked out at its first request."""
        plan = self._plans[id(loc)]
        if plan.group is None:
            plan.group = self._group_for(loc)
        return plan.group

    def server_for(self, raw_host: str) -> HttpServerConfig:
        """pick_server for a Host value (its port dropped first), remembered (for up to
        ROUTES_CACHED values)."""
        server = self._servers.get(raw_host)
        if server is None:
            if len(self._servers) >= ROUTES_CACHED:
                self._servers.clear()
            server = self._servers[raw_host] = pick_server(self.servers, host_name(raw_host))
        return server

    def location_for(self, server: HttpServerConfig, path: str, req: "Request") -> HttpLocationConfig | None:
        """The location of a request for ``path`` on ``server``: the first of route.candidates
        (remembered for up to ROUTES_CACHED paths) whose conditions it meets."""
        key = (id(server), path)
        try:
            found = self._locations[key]
        except KeyError:
            if len(self._locations) >= ROUTES_CACHED:
                self._locations.clear()
            found = self._locations[key] = candidates(server, path)
        if not self._conditional:  # (the usual server: no location has conditions)
            return found[0] if found else None
        for loc in found:
            if id(loc) not in self._conditional or self._meets(loc, req):
                return loc
        return None

    def _meets(self, loc: HttpLocationConfig, req: "Request") -> bool:
        if loc.method and req.head.method not in loc.method:
            return False
        if loc.scheme and loc.scheme != self.scheme:
            return False
        if loc.host and not name_matches(loc.host, host_name(req.raw_host).lower().rstrip(".")):
            return False
        return not loc.client_ip or in_networks(req.ip, loc.client_ip)

    def _group_for(self, loc: HttpLocationConfig) -> tuple[UpstreamGroup, str]:
        parts = urlsplit(loc.proxy_url)
        upstream = self.http.upstream_named(parts.netloc)
        tls = None
        if parts.scheme in ("https", "grpcs"):
            name = loc.proxy_ssl_name or parts.netloc.rpartition(":")[0].strip("[]") or parts.netloc
            tls = (name, loc.proxy_ssl_ca)
        h2 = parts.scheme in ("h2c", "grpc", "grpcs") or (upstream is not None and upstream.protocol == "h2")
        key = upstream if upstream is not None and tls is None and not h2 else (upstream or "addr", parts.netloc,
                                                                                 tls, h2)
        group = self.groups.get(key)
        if group is None:
            if upstream is None:
                default_port = ":443" if tls else ":80"
                netloc = parts.netloc if ":" in parts.netloc.split("]")[-1] else parts.netloc + default_port
                group = UpstreamGroup.single(to_addr(netloc), self.resolver, tls, h2)
            else:
                group = UpstreamGroup(upstream, self.resolver, tls, h2)
            self.groups[key] = group
        return group, parts.path


class _Plan:
    """The header rules of a location (its server's first) split into those for the request
    sent upstream (``proxy ...``) and those for responses; its proxy_url's (group, path)."""

    __slots__ = ("request_rules", "response_rules", "group", "pages")

    def __init__(self, rules: tuple) -> None:
        self.request_rules = tuple(r for r in rules if r.is_proxy)
        self.response_rules = tuple(r for r in rules if not r.is_proxy)
        self.group: tuple | None = None
        self.pages: frozenset = frozenset()  # the statuses its error pages answer (WebContext.page_codes)


class RateLimit:
    """A token bucket per client address: ``rate`` tokens a second, room for 1 + ``burst``
    (nginx's limit_req with nodelay). At most MAX_CLIENTS addresses: when a new one finds the
    table full, the buckets full again are forgotten, and when that frees less than a tenth,
    the least recently seen tenth too (as nginx's zone drops its least recently used states).
    So a flood of new addresses (an IPv6 /64 has 2^64) costs a pass over the table once per
    tenth of it, not at each request."""

    MAX_CLIENTS = 100_000

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.capacity = 1.0 + burst
        # ip -> (tokens, at); the dict's order is the order they were last seen (each take moves its ip last)
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, ip: str) -> bool:
        now = time.monotonic()
        last = self.buckets.pop(ip, None)
        if last is None:
            tokens = self.capacity
            if len(self.buckets) >= self.MAX_CLIENTS:
                self._make_room(now)
        else:
            tokens = min(self.capacity, last[0] + (now - last[1]) * self.rate)
        allowed = tokens >= 1.0
        self.buckets[ip] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def _make_room(self, now: float) -> None:
        refill = self.capacity / self.rate
        kept = {k: v for k, v in self.buckets.items() if now - v[1] < refill}
        keep = self.MAX_CLIENTS * 9 // 10
        if len(kept) > keep:
            kept = dict(itertools.islice(kept.items(), len(kept) - keep, None))
        self.buckets = kept


class Downstream:
    """One client connection: whose (the PROXY protocol header's address when one came), the
    address it reached, and the upstream connections that are its own: a connection that began
    with a PROXY header naming this client serves no other (send_proxy_protocol), so it is kept
    here between the client's requests instead of in the shared pool, and closed with it."""

    __slots__ = ("address", "ip", "sock", "private", "live", "request", "protocol")

    def __init__(self, address: Address, sock: socket.socket) -> None:
        self.address = address
        self.protocol = ""  # "2.0" on an HTTP/2 connection
        self.ip = str(address[0])
        self.request: Optional[Request] = None  # the one in progress, or the last
        self.live = current()  # its row in GET /api/connections (None: not a listener's own connection)
        if self.live is not None:
            self.live.target = self.live_target  # (asked only when listed)
        self.sock = sock  # (its address reached, asked only for a PROXY header: no syscall per connection)
        self.private: dict[ServerState, UpstreamConn] = {}

    def live_target(self) -> str:
        """What GET /api/connections shows of it: the request in progress or the last, and where
        it went once it did."""
        req = self.request
        if req is None:
            return ""
        return f"{req.head.method} {req.raw_host}{req.target}" + (f" {req.note}" if req.note else "")

    def connect(self, group: UpstreamGroup, server: ServerState, timeout: float, fresh: bool,
                version: str) -> tuple[UpstreamConn, bool]:
        """This client's connection to ``server`` (kept from an earlier request if still open)
        or a new one that starts with a PROXY header. Raises UpstreamError."""
        kept = self.private.pop(server, None)
        if kept is not None:
            if not fresh and kept.still_open():
                return kept, True
            kept.close()
        return group.connect(server, timeout, header=header_for(version, self.address, self.sock.getsockname()))

    def keep(self, server: ServerState, conn: UpstreamConn, reusable: bool) -> None:
        old = self.private.pop(server, None)
        if old is not None:
            old.close()
        if reusable:
            self.private[server] = conn
        else:
            conn.close()

    def close(self) -> None:
        for conn in self.private.values():
            conn.close()
        self.private.clear()


class Request:
    """One request being served: the parsed head and what was decided about it."""

    __slots__ = ("head", "raw", "framing", "down", "ip", "forward_as", "target", "raw_host", "path", "server", "location", "_variables",
                 "started", "status", "size", "note", "keep", "state", "ctx", "redirects", "had_body", "body_limit")
    path: Optional[str]  # normalised; None: above the root
    server: HttpServerConfig  # set once the head is read
    location: Optional[HttpLocationConfig]  # None: the server has no location for the path
    state: ConnWatch
    _variables: Optional[dict[str, str]]
    keep: Optional[bool]  # the connection stays open; None: it closes once its client stops sending (linger)

    def __init__(self, head: http1.Head, raw: bytes, down: Downstream, ctx: WebContext) -> None:
        self.ctx = ctx
        self.down = down
        ip = down.ip
        self.head = head
        self.raw = raw  # the head as it came, ``head`` parsed from it
        self.framing = request_framing(head)  # NO_BODY once the body is read (or sent) whole
        self.had_body = self.framing != NO_BODY
        self.body_limit = 0  # a chunked body's most bytes, once its location is known (client_max_body_size)
        self.redirects = 0  # internal redirects so far (error_page, try_paths' @name): at most MAX_REDIRECTS
        self.ip = ip  # the client's address: the peer's, or a trusted proxy's word for it (real_ip_from)
        self.forward_as = ip  # appended to X-Forwarded-For
        self.target = target = head.target
        host = head.get(b"host")
        raw_host = host.decode("latin-1").strip() if host else ""
        if target[:1] != "/" and "://" in target:  # absolute-form: its host wins (RFC 9112 3.2.2)
            url = urlsplit(target)
            raw_host, self.target = url.netloc, (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.raw_host = raw_host
        self._variables = None
        self.started = time.monotonic()
        self.status = 0
        self.size = 0
        self.note = ""
        self.keep = head.wants_keep_alive()
        self.path = None
        self.location = None

    @property
    def variables(self) -> dict[str, str]:
        """{client_ip}, {host}, {url} for header rules, static texts and log formats."""
        if self._variables is None:
            self._variables = {"client_ip": self.ip, "host": self.raw_host, "url": self.target}
        return self._variables

    def response_rules(self) -> tuple:
        return self.ctx.plan(self.server, self.location).response_rules

    def apply(self, headers: list, rules: tuple) -> list:
        """``headers`` after header ``rules``, with this request's variables."""
        return apply_header_rules(headers, rules, self.variables) if rules else headers


@dataclass(frozen=True)
class WebSettings:
    """What an [http] listener is made from (compared on reload): the [[http.server]] tables that
    share its address, the whole [http] (upstreams), and http or https."""

    servers: tuple
    http: HttpConfig
    scheme: str
    acme_dir: str = ""  # ACME's store: its certificates (https), its http-01 answers (http); '': none


class WebServer(Listener):
    """The listener of one ``[[http.server]]`` bind address (settings: WebSettings)."""

    kind = "http"
    answers_http = True

    def __init__(self, sock: socket.socket, spec: ListenerSpec, services: Services) -> None:
        super().__init__(sock, spec, services)
        self.h2 = H2Connections()  # its HTTP/2 connections: told GOAWAY when it drains

    def make_context(self, settings: "WebSettings", services: Services) -> WebContext:
        return WebContext(settings.servers, settings.http, settings.scheme, services, settings.acme_dir)

    def max_connections(self, settings: "WebSettings") -> int:
        return 10000

    def max_per_ip(self, settings: "WebSettings") -> int:
        return max(s.max_connections_per_ip for s in settings.servers)

    def proxy_protocol(self, settings: "WebSettings") -> ProxyProtocolIn | None:
        srv = settings.servers[0]  # (the same on every server of the address: the config says so)
        return policy(srv.proxy_protocol, srv.proxy_protocol_from, srv.client_header_timeout)

    def serve(self, client: socket.socket, address: Address, ctx: WebContext) -> None:
        started = time.monotonic()
        client.settimeout(ctx.read_timeout)
        accepted = client
        down = None
        try:
            if ctx.ssl is not None:
                with gevent.Timeout(ctx.header_timeout, PhaseTimeout(
                        f"TLS handshake not complete within client_header_timeout ({ctx.header_timeout:g}s)")):
                    if ctx.acme_names and ctx.certs is not None and ctx.certs.alpn_pending() and \
                            answer_tls_alpn(client, ctx.certs, ctx.header_timeout):
                        log.info("%s http: answered an ACME tls-alpn-01 validation", fmt_addr(address[0], address[1]))
                        return
                    client = ctx.ssl.wrap_socket(client, server_side=True)
            down = Downstream(address, client)
            if ctx.h2 is not None and ctx.ssl is not None and cast(ssl.SSLSocket, client).selected_alpn_protocol() == "h2":
                return self._serve_h2(client, down, ctx, b"")
            client.settimeout(None)  # from here a watchdog, not a timer per recv
            reader = Reader(client, keep_watching=True)
            state = ConnWatch(reader, ctx.read_timeout, ctx.header_timeout, f"request head not complete within "
                              f"client_header_timeout ({ctx.header_timeout:g}s)")
            state.until(started + ctx.header_timeout, state.head_phase)  # the first head, from the start
            try:
                while keep := self._one(client, reader, down, ctx, state):
                    state.waiting(None, ctx.read_timeout)
            finally:
                state.stop()
                reader.release()
            if keep is None:  # answered before its request was read whole: what still comes is dropped first
                linger(client)
        except PhaseTimeout as e:
            log.info("%s http: cut: %s", fmt_addr(address[0], address[1]), e)
        except (PeerClosed, socket.timeout, OSError, ClientGone):
            pass  # the client went away, was too slow, or failed its TLS handshake
        except Exception:  # a bug: this connection ends, logged; the server goes on
            log.exception("%s http: internal error", fmt_addr(address[0], address[1]))
        finally:
            if down is not None:
                down.close()
            if client is not accepted:  # the TLS socket took the descriptor over: the server's close would not
                close_quietly(client)

    def _one(self, client: socket.socket, reader: Reader, down: Downstream, ctx: WebContext,
             state: ConnWatch) -> Optional[bool]:
        """Serve one request; returns whether the connection stays open (None: no, and its
        client may still be sending: a malformed request was answered before it was read whole)."""
        ip = down.ip
        try:
            try:
                raw = httpio.read_head(reader, ctx.max_head, state.head_started)
            except PhaseTimeout as e:
                client.sendall(http1.simple_response(408, f"wmproxy: {e}"))
                log.info("%s http: 408 cut: %s", ip, e)
                return False
            state.done()
            if raw == PREFACE_HEAD and ctx.h2 is not None and down.request is None:  # h2c, prior knowledge
                state.stop()
                first = PREFACE_HEAD + bytes(reader.buf)
                reader.buf.clear()
                reader.release()
                self._serve_h2(client, down, ctx, first)
                return False
            head = http1.parse_request_head(raw)
            http1.check_request(head, ctx.max_headers)
            req = Request(head, raw, down, ctx)
            down.request = req  # (GET /api/connections: the request in progress)
            if ctx.real_ip_from:
                ctx.believe(req)
        except PeerClosed:
            return False
        except ProtocolError as e:  # a malformed head, or a body framed two ways
            client.sendall(http1.simple_response(e.http_status, f"wmproxy: {e}"))
            log.info("%s http: bad request: %s", ip, e)
            return None
        req.server = ctx.server_for(req.raw_host)
        req.state = state
        try:
            self._route(client, reader, req, ctx)
        except ProtocolError as e:
            req.keep = None
            self._reply(client, req, e.http_status, f"wmproxy: {e}")
        finally:
            self._log(req)
        return req.keep

    def _serve_h2(self, client: socket.socket, down: Downstream, ctx: WebContext, first: bytes) -> None:
        """An HTTP/2 connection: each stream is served as one request of this listener."""
        assert ctx.h2 is not None
        down.protocol = "2.0"

        def one(stream: H2Stream) -> None:
            reader = Reader(stream)
            state = ConnWatch(reader, ctx.read_timeout, ctx.header_timeout, "HTTP/2 request")
            try:
                self._one(cast(socket.socket, stream), reader, down, ctx, state)
            finally:
                state.stop()

        self.h2.serve(client, down.address, ctx.h2, one, first)

    def drain(self, grace: float) -> int:
        """As every listener's, and first a GOAWAY on each HTTP/2 connection: its open streams
        finish, it takes no new ones."""
        self.h2.go_away()
        return super().drain(grace)

    def _route(self, client: socket.socket, reader: Reader, req: Request, ctx: WebContext) -> None:
        if ctx.certs is not None and req.target.startswith(CHALLENGE_PATH) and ctx.scheme == "http":
            answer = ctx.certs.http_answer(req.target[len(CHALLENGE_PATH):])
            if answer is not None:  # (else the path is routed as any other: a site's own files there)
                self._discard_body(reader, req)
                req.note = "acme http-01"
                return self._reply(client, req, 200, answer.decode("ascii", "replace"),
                                   [(b"Content-Type", b"text/plain")], exact=True)
        try:
            req.path = normalize_path(req.target)
        except ValueError as e:
            req.keep = False
            return self._reply(client, req, 400, f"bad request path: {e}")
        if req.path is None:  # above the root: '..', '%2e%2e'
            req.keep = False
            return self._reply(client, req, 403, "the path leaves the root")
        if req.head.method == "TRACE":  # (as nginx: a server echoing the request, credentials and cookies included)
            return self._error(client, reader, req, ctx, 405, "TRACE is not allowed")
        req.location = loc = ctx.location_for(req.server, req.path, req)
        if loc is None:
            return self._error(client, reader, req, ctx, 404, "no location for this path")
        if req.had_body:
            limit = req.body_limit = req.server.client_max_body_size if loc.client_max_body_size is None \
                else loc.client_max_body_size
            if limit and req.framing.length > limit:  # (refused before a byte of it is read, as nginx does)
                req.keep = None  # (the client may be sending it: what comes is dropped, then the end)
                return self._reply(client, req, 413, f"a request body of {req.framing.length} bytes: more than "
                                                     f"client_max_body_size ({limit} bytes)")
        if (loc.allow_ip or loc.deny_ip) and not ip_allowed(req.ip, loc.allow_ip, loc.deny_ip):
            return self._error(client, reader, req, ctx, 403, "client address not allowed here")
        if loc.limit_req is not None and not ctx.limiter(loc).take(req.ip):
            return self._error(client, reader, req, ctx, 429, "too many requests", [(b"Retry-After", b"1")])
        self._act(client, reader, req, ctx)

    def _act(self, client: socket.socket, reader: Reader, req: Request, ctx: WebContext, status: int = 0) -> None:
        """What the request's location does; ``status``: the answer's (an error page's), 0 its own."""
        loc = req.location
        assert loc is not None and req.path is not None
        if loc.rate_limit and not isinstance(client, Throttled):  # what goes to the client: an answer, a file,
            client = cast(socket.socket, Throttled(client, loc.rate_limit))  # a websocket's both ways (once)
        if not loc.proxy_url and req.down.protocol and _h2_websocket(client):  # (RFC 8441: a 2xx would open it)
            req.keep = False
            return self._reply(client, req, 501, "no websocket here: only a proxy_url location passes one on")
        if loc.proxy_url:
            if req.redirects and req.had_body:  # (its body is gone: nothing to send on)
                req.keep = False
                return self._reply(client, req, status or 502, "an error page cannot send the request body on")
            return self._proxy(client, reader, req, ctx)
        if req.framing != NO_BODY:
            self._discard_body(reader, req)
        if loc.file_server is not None:
            plan = ctx.plan(req.server, loc)
            rules = plan.response_rules
            req.state.waiting(None, INF)  # a long download is no idle client: sends time out on their own
            pages = plan.pages if req.redirects < MAX_REDIRECTS else frozenset()
            head = req.head
            if req.redirects and head.method not in ("GET", "HEAD"):  # (an error page is got, as nginx does)
                head = copy.copy(head)
                head.method = "GET"
            reply = files.serve(loc.file_server, client, head, req.path, req.keep is True,
                                (lambda headers: req.apply(headers, rules)) if rules else None, ctx.read_timeout,
                                pages, status)
            if not reply.sent:
                if reply.then.startswith("@") and req.redirects < MAX_REDIRECTS:  # try_paths' last entry
                    return self._internal(client, reader, req, ctx, reply.then, status)
                return self._error(client, reader, req, ctx, reply.status, http1.REASONS.get(reply.status, ""))
            req.status, req.size = reply.status, reply.size
        elif loc.redirect:
            target = fill(loc.redirect, req.variables)
            self._reply(client, req, loc.status or 302, f"moved to {target}", [(b"Location", target.encode())])
        else:
            # (exactly as written, as the Rust wmproxy and nginx's return do: no newline added)
            self._reply(client, req, status or loc.status or 200, fill(loc.static_response, req.variables), exact=True)

    def _error(self, client: socket.socket, reader: Reader, req: Request, ctx: WebContext, status: int, text: str,
               extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """An error wmproxy answers itself: its error page (error_page) if one is set for
        ``status``, else the plain answer."""
        page = ctx.pages(req.server, req.location).get(status) if req.redirects < MAX_REDIRECTS else None
        self._discard_body(reader, req)
        if page is None:
            return self._reply(client, req, status, text, extra)
        self._internal(client, reader, req, ctx, page.target, status if page.status == 0 else max(page.status, 0))

    def _internal(self, client: socket.socket, reader: Reader, req: Request, ctx: WebContext, target: str,
                  status: int) -> None:
        """An internal redirect, as nginx's: ``target`` (a path, or a named location that keeps
        the request's path) answers the request, with ``status`` (0: its own)."""
        req.redirects += 1
        if target.startswith("@"):
            loc = ctx.named(req.server, target)
        else:
            req.path = normalize_path(target.split("?", 1)[0])
            loc = ctx.location_for(req.server, req.path, req) if req.path is not None else None
        if loc is None:
            return self._reply(client, req, status or 404, "no location for the error page")
        req.location = loc
        req.note = (req.note + " " if req.note else "") + f"-> {target}"
        self._act(client, reader, req, ctx, status)

    def _discard_body(self, reader: Reader, req: Request) -> None:
        """A request body nobody wants is read and dropped, so the next request is in step."""
        if req.framing != NO_BODY:
            if req.head.expects_continue():
                req.keep = False  # we answer without reading it: the client may not send it at all
                return
            httpio.copy_body(reader, self._body_deadline(req, req.ctx, lambda data: None), req.framing, False,
                             limit=req.body_limit)
            req.state.done()
            req.framing = NO_BODY  # (read: nothing more to take)

    @staticmethod
    def _body_sent(state: ConnWatch, upstream: Reader, timeout: float, abort: bool) -> None:
        """The body is in: its deadline is over, the server's answer is waited for now (ended
        by the client's close, if ``abort``)."""
        state.done()
        state.waiting(upstream, timeout)
        state.awaiting_answer(abort)

    @staticmethod
    def _body_deadline(req: Request, ctx: WebContext, send: httpio.Send) -> httpio.Send:
        """``send`` as the request body's copy should call it, with the body's deadline set: a
        Content-Length body must be in within client_body_timeout plus its length at
        client_body_min_rate; a chunked one within client_body_timeout plus what came so far
        at that rate (the returned function moves the deadline on as data comes)."""
        started = time.monotonic()
        if req.framing.kind == "length":
            allowed = ctx.body_timeout + req.framing.length / ctx.body_min_rate
            req.state.until(started + allowed, f"request body of {req.framing.length} bytes not in within "
                                               f"{allowed:.0f}s (client_body_timeout, client_body_min_rate)")
            return send
        phase = (f"chunked request body slower than client_body_min_rate ({ctx.body_min_rate} B/s) after "
                 f"client_body_timeout ({ctx.body_timeout:g}s)")
        req.state.until(started + ctx.body_timeout, phase)
        got = 0
        watch = req.state

        def counted(data: Data) -> None:
            nonlocal got
            got += len(data)
            watch.deadline = started + ctx.body_timeout + got / ctx.body_min_rate
            send(data)
        return counted

    def _reply(self, client: socket.socket, req: Request, status: int, text: str,
               extra: Sequence[tuple[bytes, bytes]] = (), exact: bool = False) -> None:
        headers = req.apply(list(extra), req.response_rules())
        body = req.head.method != "HEAD"
        send_all(client, http1.simple_response(status, text, headers, close=not req.keep, body=body, exact=exact,
                                               keep_alive=req.keep is True and req.head.version == "1.0"))
        size = len(text.encode()) if exact else len(text.rstrip("\n").encode()) + 1
        req.status, req.size = status, size if body else 0

    # -- proxy_url ------------------------------------------------------------------------------
    def _proxy(self, client: socket.socket, reader: Reader, req: Request, ctx: WebContext) -> None:
        loc, head = req.location, req.head
        assert loc is not None and loc.proxy_url  # (routed here for its proxy_url)
        plan = ctx.plan(req.server, loc)
        group, base = plan.group or ctx.group_for(loc)
        target = req.target
        if base and loc.rule.kind in ("prefix", "prefix-stop") and target.startswith(loc.rule.text):
            target = base + target[len(loc.rule.text):]  # as nginx's proxy_pass with a URI
        ip = req.ip.encode()
        hops = ip if req.forward_as is req.ip else req.forward_as.encode()
        line = f"{head.method} {target} HTTP/1.1"
        # the client's header lines as they came when none goes or changes (no X-Forwarded-For
        # to extend, no header rules), else the list built again; (an upgrade needs Connection,
        # which is hop-by-hop: never passed through)
        out = upgrade = None
        if not plan.request_rules:
            extra = b"".join((b"\r\nX-Forwarded-For: ", hops, b"\r\nX-Forwarded-Proto: ", ctx.scheme_bytes,
                              b"\r\nX-Real-IP: ", ip))
            out = http1.passthrough_head(head, req.raw, line.encode("latin-1"), extra, _REPLACED)
        if out is None:
            headers, upgrade = http1.upstream_headers(head, req.framing, _REPLACED)
            headers += [(b"X-Forwarded-For", http1.forwarded_for(head, hops)), (b"X-Forwarded-Proto", ctx.scheme_bytes),
                        (b"X-Real-IP", ip)]
            out = http1.encode_head(line, req.apply(headers, plan.request_rules))
        if req.framing != NO_BODY and head.expects_continue():
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if group.h2:
            return self._proxy_h2(client, reader, req, ctx, plan, group, target, hops)
        servers = group.order(req.ip)
        if not servers:
            req.note = f"upstream {group.cfg.name}: no live server"
            return self._error(client, reader, req, ctx, 502, f"no live server in upstream {group.cfg.name}")
        failure = "no server tried"
        proxy_header = group.cfg.send_proxy_protocol
        for server in servers:
            fresh = False
            while True:
                try:
                    if proxy_header:
                        conn, pooled = req.down.connect(group, server, loc.proxy_connect_timeout, fresh, proxy_header)
                    else:
                        conn, pooled = group.connect(server, loc.proxy_connect_timeout, fresh,
                                                     retry_safe=req.framing == NO_BODY)
                except UpstreamError as e:
                    server.failed(str(e))
                    failure = str(e)
                    break  # the next server: nothing was sent
                server.active += 1
                server.metrics.requests += 1
                try:
                    outcome = self._attempt(client, reader, req, ctx, conn, out, upgrade, plan.response_rules,
                                            server.metrics.first_byte_seconds)
                finally:
                    server.active -= 1
                if isinstance(outcome, ClientGone):  # (not the server's fault: nothing is answered, 499 logged)
                    conn.close()
                    req.status, req.keep, req.note = 499, False, f"{server.addr}: {outcome}"
                    return None
                if isinstance(outcome, (httpio.ClientBodyError, httpio.UnaskedSwitch)):  # (not the server's health)
                    conn.close()
                    req.keep = None if isinstance(outcome, httpio.ClientBodyError) and outcome.malformed else False
                    req.note = f"{server.addr}: {outcome}"
                    return self._reply(client, req, outcome.http_status, str(outcome))
                if isinstance(outcome, httpio.Forwarded):
                    if server.fails:
                        server.succeeded()
                    req.note = server.addr
                    if outcome.upgraded is not None:
                        conn.reader.release()  # the relay closed the socket
                        req.note += f" upgraded, done ({outcome.upgraded.reason})"
                        return None
                    if proxy_header:
                        req.down.keep(server, conn, outcome.reusable)
                    else:
                        group.release(server, conn, outcome.reusable)
                    return None
                conn.close()
                failure = f"{server.addr}: {outcome}"
                sent = req.framing != NO_BODY
                if httpio.stale_retry(pooled, req.framing, outcome):
                    fresh = True  # a kept connection the server had closed: once more on a new one
                    continue
                server.failed(str(outcome))
                if isinstance(outcome, httpio.AnswerUnsent):  # (it took the request: no other server is asked)
                    req.keep = False
                    req.note = failure
                    req.framing = NO_BODY
                    return self._error(client, reader, req, ctx, outcome.http_status,
                                       f"the upstream server {server.addr} failed: {outcome}")
                if isinstance(outcome, socket.timeout):
                    req.keep = False
                    req.note = failure
                    req.framing = NO_BODY  # (sent, or cut short: never read again)
                    return self._error(client, reader, req, ctx, 504, f"the upstream server {server.addr} timed out")
                if sent or head.method not in _IDEMPOTENT:
                    req.keep = False
                    req.note = failure
                    req.framing = NO_BODY
                    return self._error(client, reader, req, ctx, 502, f"the upstream server failed: {outcome}")
                break  # an idempotent request without a body: the next server
        req.note = failure
        return self._error(client, reader, req, ctx, 502, f"no upstream server could be reached ({failure})")

    def _proxy_h2(self, client: socket.socket, reader: Reader, req: Request, ctx: WebContext, plan: "_Plan",
                  group: UpstreamGroup, target: str, hops: bytes) -> None:
        """A request to an HTTP/2 upstream (h2up.py): a stream on one of the server's
        connections; another server when the first could not be reached or refused the stream
        before taking it."""
        loc, head = req.location, req.head
        assert loc is not None
        ip = req.ip.encode()
        dropped = head.connection  # (the headers a Connection header names are hop-by-hop too)
        headers = [(n, v) for n, v in head.headers if n.lower() not in _REPLACED and n.lower() not in dropped]
        headers += [(b"X-Forwarded-For", http1.forwarded_for(head, hops)), (b"X-Forwarded-Proto", ctx.scheme_bytes),
                    (b"X-Real-IP", ip)]
        out = h2up.request_headers(head.method, b"https" if group.tls else b"http", req.raw_host.encode("latin-1"),
                                   target, req.apply(headers, plan.request_rules))
        req.state.waiting(None, float("inf"))  # (each wait below has its own timeout)
        servers = group.order(req.ip)
        if not servers:
            req.note = f"upstream {group.cfg.name}: no live server"
            return self._error(client, reader, req, ctx, 502, f"no live server in upstream {group.cfg.name}")
        failure = "no server tried"
        for server in servers:
            try:
                conn = group.h2_connection(server, loc.proxy_connect_timeout)
            except UpstreamError as e:
                server.failed(str(e))
                failure = str(e)
                continue
            server.active += 1
            server.metrics.requests += 1
            try:
                rules = plan.response_rules
                outcome = h2up.forward(client, reader, req, conn, out, loc.proxy_read_timeout,
                                       (lambda h: req.apply(h, rules)) if rules else None,
                                       server.metrics.first_byte_seconds)
            finally:
                server.active -= 1
            if isinstance(outcome, httpio.ClientBodyError):
                req.keep = None if outcome.malformed else False
                req.note = f"{server.addr}: {outcome}"
                return self._reply(client, req, outcome.http_status, str(outcome))
            if outcome is None:
                server.succeeded()
                req.note = server.addr
                return None
            failure = f"{server.addr}: {outcome}"
            if isinstance(outcome, h2up.Unprocessed):  # refused before the server took it: the next one
                continue
            server.failed(str(outcome))
            req.note = failure
            if isinstance(outcome, socket.timeout):
                req.keep = False
                return self._error(client, reader, req, ctx, 504, f"the upstream server {server.addr} timed out")
            if req.had_body or head.method not in _IDEMPOTENT:
                req.keep = False
                return self._error(client, reader, req, ctx, 502, f"the upstream server failed: {outcome}")
        req.note = failure
        return self._error(client, reader, req, ctx, 502, f"no upstream server could be reached ({failure})")

    def _attempt(self, client: socket.socket, reader: Reader, req: Request, ctx: WebContext, conn: UpstreamConn,
                 out: bytes, upgrade: Optional[bytes], rules: tuple[HeaderRule, ...],
                 first_byte: Histogram) -> httpio.Forwarded | BaseException:
        """Send the request on ``conn`` and forward the response (``rules``: the response's
        header rules; ``first_byte``: the time from sending to the response head is observed
        there) -> httpio.Forwarded, or the exception that stopped it before any response byte
        reached the client (httpio.ClientBodyError: the client's body broke off)."""
        loc = req.location
        assert loc is not None
        req.state.waiting(conn.reader, loc.proxy_read_timeout)
        if req.framing == NO_BODY:  # (the request is all out with its head: ConnWatch.awaiting_answer)
            req.state.answer = not loc.proxy_ignore_client_abort
        finish = (lambda h: req.apply(h, rules)) if rules else None
        send: httpio.Send = conn.send
        if loc.rate_limit and req.framing != NO_BODY:  # (the body's way to the server; the client's way: _route)
            send = Throttled(conn.sock, loc.rate_limit).sendall
        on_sent = None
        if req.framing != NO_BODY:
            req.state.waiting(None, ctx.body_timeout)  # the client's silence while it sends its body
            send = self._body_deadline(req, ctx, send)
            on_sent = partial(self._body_sent, req.state, conn.reader, loc.proxy_read_timeout,
                              not loc.proxy_ignore_client_abort)
        sent_at = time.monotonic()
        try:
            # interim 1xx other than 101 are skipped: the proxy answered Expect itself
            response, body = httpio.exchange(reader, send, conn.reader, req.framing, out, req.head.method,
                                             ctx.max_head, finish=finish, on_sent=on_sent, whole=finish is None,
                                             limit=req.body_limit)
        except (PeerClosed, ProtocolError, OSError, httpio.ClientBodyError, ClientGone) as e:  # socket.timeout too
            return e
        first_byte.observe(time.monotonic() - sent_at)
        if response.status == 101:
            if not upgrade:
                return httpio.UnaskedSwitch()
            req.state.stop()  # the relay that follows watches its own idle time
        try:
            done = httpio.forward_response(client, reader, req.head, response, conn.sock, conn.reader,
                                           finish, loc.proxy_read_timeout, upgrade, body)
        except (httpio.AnswerUnsent, ClientGone) as e:  # (nothing of it reached the client: it can still be told;
            return e                                     # or the client is gone)
        except BaseException:
            conn.close()
            req.keep = False
            raise
        req.status, req.size, req.keep = done.status, done.size, done.keep and done.upgraded is None
        return done

    def _log(self, req: Request) -> None:
        took = time.monotonic() - req.started
        down = req.down
        if down.protocol:  # (served as HTTP/1.1 over an HTTP/2 stream: the log says which)
            req.head.version = down.protocol
        stats, got, size = self.stats, len(req.raw), req.size
        stats.statuses[req.status] += 1
        stats.bytes_in += got  # (heads in, answers' bodies out: what the dashboard graphs)
        stats.bytes_out += size
        stats.request_seconds.observe(took)
        live = down.live
        if live is not None:
            live.bytes_in += got
            live.bytes_out += size
        loc = req.location
        fmt = loc.access_log if loc is not None else ""
        if fmt == "off" or not access_log.isEnabledFor(logging.INFO):
            return
        if fmt:
            head = req.head
            path, _, query = req.target.partition("?")
            fields = {**req.variables, "method": head.method, "status": str(req.status), "bytes": str(req.size),
                      "time": f"{took:.3f}", "upstream": req.note, "path": path, "query": query,
                      "date": time.strftime("%Y-%m-%d %H:%M:%S"), "referer": _header(head, b"referer"),
                      "user_agent": _header(head, b"user-agent"), "cookie": _header(head, b"cookie")}
            access_log.info("%s", fill(fmt, fields))
            return
        log_access(req.ip, "", req.head, req.raw_host + req.target, req.status, req.size, took, req.note)


def acme_names(servers: Sequence[HttpServerConfig]) -> frozenset:
    """The names the acme servers among ``servers`` get certificates for (not wildcards:
    ACME gives those by DNS-01 alone, which wmproxy does not answer)."""
    return frozenset(name for s in servers if s.acme for name in s.server_name if safe_name(name))


def _acme_context(certs: CertStore, names: frozenset, alpn: tuple, fallback: bool, name: str) -> Optional[ssl.SSLContext]:
    """The ACME certificate for an SNI name; with ``fallback`` (no certificate files on the
    address), for a client naming none or another name: the first name's that has one, as
    nginx's default server."""
    if name in names:
        found = certs.context_for(name, alpn)
        if found is not None or not fallback:
            return found
    if not fallback:
        return None
    return next((ctx for n in sorted(names) if (ctx := certs.context_for(n, alpn)) is not None), None)


def _header(head: http1.Head, name: bytes) -> str:
    value = head.get(name)
    return value.decode("latin-1") if value is not None else "-"


def listener_specs(cfg: Config) -> list[ListenerSpec]:
    """One listener per address the ``[[http.server]]`` tables bind."""
    if cfg.http is None:
        return []
    by_bind: dict[str, tuple] = {}  # address -> (its Addr, [(index, server)])
    for i, srv in enumerate(cfg.http.server):
        for bind in srv.bind:
            by_bind.setdefault(str(bind), (bind, []))[1].append((i, srv))
    specs = []
    for bind, listed in by_bind.values():
        servers = tuple(srv for _, srv in listed)
        scheme = "https" if servers[0].tls else "http"
        pairs = [(s.cert, s.key) for s in servers if s.cert]
        keys = [(f"http.server[{i}].cert", f"http.server[{i}].key") for i, s in listed if s.cert]
        check = (lambda pairs=pairs, keys=keys: sni_server_context(pairs, keys)) if pairs else None
        acme_dir = cfg.acme_path if (acme_names(servers) if scheme == "https" else cfg.uses_acme) else ""
        specs.append(ListenerSpec("http", bind, WebSettings(servers, cfg.http, scheme, acme_dir),
                                  f"http.server[{listed[0][0]}].bind",
                                  WebServer, check))
    return specs


def _h2_websocket(client: object) -> bool:
    """Whether ``client`` (perhaps within its rate limit) is an HTTP/2 stream opening a websocket
    (RFC 8441). Asked by type, not ``getattr(client, "websocket")``: on a gevent socket that miss
    goes through its ``__getattr__`` and an AttributeError, 1.5 us a request."""
    if isinstance(client, Throttled):
        client = client.conn
    return isinstance(client, H2Stream) and client.websocket
