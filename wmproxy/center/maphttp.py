"""The center server's shared listeners of http mappings (``[center] map_http_bind``) and of
https mappings (``map_https_bind``).

On map_https_bind the ClientHello is peeked first: an SNI that belongs to a ``tls_passthrough``
mapping sends the whole connection, TLS untouched, to that mapping's client (CREATE TCP);
otherwise TLS ends here with the certificate the SNI picks among map_cert, and the requests
are routed as on map_http_bind.

Each request is routed by its Host header (port ignored) to the client that published that
domain, per request on keep-alive connections: a stream (CREATE HTTP, mapping name) on which
the client dials the private service, kept for the next requests while they go to the same
mapping (and the service keeps its connection open), replaced when one goes elsewhere.
``X-Forwarded-For`` and ``X-Forwarded-Proto`` are added; a websocket upgrade is passed through.
An unknown host gets 404 naming it; a known host whose client is offline gets 502.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, cast

import gevent

from ..config import Addr, Config
from ..errors import ClientGone, PhaseTimeout, ProtocolError
from ..listener import Listener, ListenerSpec
from ..services import Services
from ..net import httpio
from ..net.conn import Address, Conn, Data
from ..net.dial import fmt_addr
from ..net.idle import ConnWatch
from ..net.reader import PeerClosed, Reader, peek_message
from ..net.live import current
from ..net.relay import RelayStats, relay
from ..net.throttle import Bucket, Quota, Throttled, enter_all
from ..net.certstore import ACME_TLS_ALPN, CHALLENGE_PATH, CertStore, answer_tls_alpn
from ..net.tls import sni_server_context
from ..net.writer import close_quietly, linger
from ..net.proxyproto import ProxyProtocolIn, policy
from ..prot import http1
from ..prot.framing import NO_BODY, Framing, request_framing
from ..prot.target import host_name
from ..prot.rules import apply_header_rules
from ..prot.frame import CreateMode
from ..prot.tls import client_hello
from ..errors import UpstreamError
from ..web import h2up
from ..web.h2 import PREFACE_HEAD, H2Connections, H2Settings, H2Stream
from .mapping import HttpRoute, MappingRegistry
from .vconn import VirtualConn

log = logging.getLogger("wmproxy.center")

MAX_HEAD = 65536
HEAD_TIMEOUT = 30.0  # without [proxy]: the TLS handshake, and each request head, must be whole within it
HELLO_TIMEOUT = 10.0  # time a client has to send its whole ClientHello
H2_STREAMS = 128  # HTTP/2 streams a public connection may have open at once
H2_TABLE = 4096  # its HPACK table
_DROP = frozenset((b"x-forwarded-for", b"x-forwarded-proto"))


class MapHttpContext:
    def __init__(self, services: Services, idle_timeout: float, scheme: str, certs: tuple, head_timeout: float,
                 http2: bool, acme_dir: str = "", acme: bool = False) -> None:
        self.registry = services.mapping_registry  # the center server's, for the configuration in force
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        self.scheme = scheme  # "http" or "https": which mappings, and X-Forwarded-Proto
        alpn = ("h2", "http/1.1") if http2 else ()
        # ACME's store: http-01 answers (http), certificates of the mappings' domains (https, map_acme)
        self.certs = CertStore(acme_dir) if acme_dir else None
        self.acme = acme and self.certs is not None and scheme == "https"
        dynamic = partial(self._acme_context, alpn) if self.acme else None
        self.ssl = sni_server_context(list(certs), alpn=alpn, dynamic=dynamic) \
            if scheme == "https" and (certs or dynamic) else None
        self.h2 = H2Settings(H2_STREAMS, H2_TABLE, MAX_HEAD, idle_timeout, head_timeout) if http2 else None

    def _acme_context(self, alpn: tuple, name: str) -> Optional[ssl.SSLContext]:
        """The ACME certificate of an https mapping's domain (map_acme), while one is registered."""
        registry = self.registry()  # (its exact domain only, and no find_route: that turns a group's round robin)
        routes = registry.routes.get(("https", name), ()) if registry is not None and name else ()
        if not routes or routes[0].passthrough or self.certs is None:
            return None
        return self.certs.context_for(name, alpn)


@dataclass(frozen=True)
class MapHttpSettings:
    """What a shared mapping listener is made from (compared on reload)."""

    bind: Addr
    idle_timeout: float  # [proxy]'s
    scheme: str  # "http" or "https"
    certs: tuple  # ((cert, key), ...) for https: chosen by SNI; none: passthrough only
    max_connections_per_ip: int
    head_timeout: float  # [proxy]'s handshake_timeout
    proxy_in: ProxyProtocolIn | None = None  # [center] map_proxy_protocol
    http2: bool = True  # [center] map_http2
    acme_dir: str = ""  # ACME's store ('': no certificate here comes from ACME)
    acme: bool = False  # https: [center] map_acme


class MapHttpServer(Listener):
    """``[center] map_http_bind`` / ``map_https_bind``: the public side of http(s) mappings."""

    kind = "map-http"
    answers_http = True

    def __init__(self, sock: socket.socket, spec: ListenerSpec, services: Services) -> None:
        super().__init__(sock, spec, services)
        self.h2 = H2Connections()  # its HTTP/2 connections: told GOAWAY when it drains

    def make_context(self, settings: MapHttpSettings, services: Services) -> MapHttpContext:
        self.kind = f"map-{settings.scheme}"
        return MapHttpContext(services, settings.idle_timeout, settings.scheme, settings.certs, settings.head_timeout,
                              settings.http2, settings.acme_dir, settings.acme)

    def drain(self, grace: float) -> int:
        self.h2.go_away()
        return super().drain(grace)

    def max_connections(self, settings: MapHttpSettings) -> int:
        return 10000

    def max_per_ip(self, settings: MapHttpSettings) -> int:
        return settings.max_connections_per_ip

    def proxy_protocol(self, settings: MapHttpSettings) -> ProxyProtocolIn | None:
        return settings.proxy_in

    def serve(self, client: socket.socket, address: Address, ctx: MapHttpContext) -> None:
        peer_ip = address[0]
        started = time.monotonic()
        client.settimeout(ctx.idle_timeout)
        tls_deadline = gevent.Timeout.start_new(ctx.head_timeout, PhaseTimeout(
            f"TLS handshake not complete within {ctx.head_timeout:g}s"))
        accepted = client
        watch = None
        mangled = False
        try:
            visitor = (address, client.getsockname())  # (told to the center client; before TLS takes the socket)
            if ctx.scheme == "https":
                if self._passed_through(client, address, ctx, tls_deadline):
                    return
                assert ctx.ssl is not None  # (without certificates every connection passes through)
                client = ctx.ssl.wrap_socket(client, server_side=True)
            tls_deadline.close()
            if ctx.h2 is not None and ctx.ssl is not None and \
                    cast(ssl.SSLSocket, client).selected_alpn_protocol() == "h2":
                return self._serve_h2(client, address, ctx, visitor, b"")
            client.settimeout(None)  # from here the connection's watch (idle and deadlines), as [http]'s
            reader = Reader(client, keep_watching=True)  # (its kept watcher tells a client's close: ConnWatch)
            watch = ConnWatch(reader, ctx.idle_timeout, ctx.head_timeout,
                              f"request head not complete within {ctx.head_timeout:g}s")
            watch.until(started + ctx.head_timeout, watch.head_phase)  # the first head, from the start
            up = RouteStream(visitor)
            try:
                while keep := self._one(client, reader, peer_ip, ctx, up, watch):
                    watch.waiting(None, ctx.idle_timeout)
                mangled = keep is None
            finally:
                up.close()
                reader.release()
        except PhaseTimeout as e:
            log.info("%s map-%s: cut: %s", peer_ip, ctx.scheme, e)
        except (PeerClosed, socket.timeout, OSError, ClientGone):
            pass  # includes a failed TLS handshake: nothing to answer on
        except ProtocolError as e:
            _reply(client, e.http_status, str(e))
            mangled = True
        finally:
            tls_deadline.close()
            if watch is not None:
                watch.stop()
            if mangled:  # its client may still be sending: what comes is dropped first, so that the answer is read
                linger(client)
            if client is not accepted:  # the TLS socket took the descriptor over: the server's close would not
                close_quietly(client)

    def _serve_h2(self, client: socket.socket, address: Address, ctx: MapHttpContext,
                  visitor: tuple[Address, Address], first: bytes) -> None:
        """An HTTP/2 connection from a public client: each stream is one request, routed by its
        :authority as a request on HTTP/1.1 is by its Host."""
        assert ctx.h2 is not None

        def one(stream: H2Stream) -> None:
            reader = Reader(stream)
            watch = ConnWatch(reader, ctx.idle_timeout, ctx.head_timeout, "HTTP/2 request")
            up = RouteStream(visitor)
            try:
                self._one(stream, reader, str(address[0]), ctx, up, watch)
            finally:
                up.close()
                watch.stop()

        self.h2.serve(client, address, ctx.h2, one, first)

    def _passed_through(self, client: socket.socket, address: Address, ctx: MapHttpContext,
                        deadline: gevent.Timeout) -> bool:
        """Peek at the ClientHello: when its SNI belongs to a tls_passthrough mapping, relay
        the connection's bytes, untouched, to that mapping's client (CREATE TCP) and return
        True. False when TLS is to end here. Bytes are peeked, not read, so either way the
        TLS handshake sees them all."""
        peer = fmt_addr(address[0], address[1])
        try:
            sni, alpn = peek_message(client, client_hello, HELLO_TIMEOUT)
        except ProtocolError as e:
            log.info("%s map-https: not a TLS ClientHello: %s", peer, e)
            return True
        if ctx.acme and ACME_TLS_ALPN in alpn and ctx.certs is not None and ctx.certs.alpn_pending() and \
                answer_tls_alpn(client, ctx.certs, HELLO_TIMEOUT):
            log.info("%s map-https SNI %s: answered an ACME tls-alpn-01 validation", peer, sni)
            return True
        registry = ctx.registry()
        route = registry.find_route(sni, "https") if registry is not None and sni else None
        if route is None or not route.passthrough:
            if ctx.ssl is None:
                log.info("%s map-https: no tls_passthrough mapping for SNI %r (and no map_cert to end TLS)",
                         peer, sni)
                return True
            return False
        if not route.online:
            log.info("%s map-https SNI %s: client %s offline, connection closed", peer, sni, route.owner)
            return True
        quotas = registry.quotas(route.owner, route.holder, route.name) if registry is not None else []
        full = enter_all(quotas)
        if full is not None:
            log.info("%s map-https SNI %s: refused: %s", peer, sni, full.full_text)
            return True
        route.requests += 1
        deadline.close()  # the service's TLS sees the rest; the relay has its idle watch
        stats = RelayStats()
        try:
            stream = route.link.open_stream(CreateMode.TCP, route.name, (address, client.getsockname()))
            route.figures.opened(stats)
            try:
                relay(client, stream, ctx.idle_timeout, stats=stats,
                      shared=[q.buckets for q in quotas if q.buckets is not None])
            finally:
                route.figures.closed(stats)
        finally:
            for q in quotas:
                q.leave()
        log.info("%s map-https SNI %s passed through to %s (%s) in=%d out=%d", peer, sni, route.owner,
                 stats.reason, stats.a_to_b, stats.b_to_a)
        return True

    def _one(self, client: Conn, reader: Reader, peer_ip: str, ctx: MapHttpContext, up: "RouteStream",
             watch: ConnWatch) -> Optional[bool]:
        """Serve one request; returns whether the connection stays open (None: no, and its client
        may still be sending: a malformed body was answered before it was read whole). The first head has
        the head timeout from the connection's start (``watch`` holds that deadline), a later one
        from its first bytes."""
        try:
            raw = httpio.read_head(reader, MAX_HEAD, watch.head_started)
            if raw == PREFACE_HEAD and ctx.h2 is not None and up.head is None and not isinstance(client, H2Stream):
                watch.stop()  # h2c with prior knowledge: an HTTP/2 connection from here
                first = PREFACE_HEAD + bytes(reader.buf)
                reader.buf.clear()
                self._serve_h2(cast(socket.socket, client), up.visitor[0], ctx, up.visitor, first)
                return False
            head = http1.parse_request_head(raw)
            watch.done()
            http1.check_request(head)
        except PeerClosed:
            return False
        except PhaseTimeout as e:
            _reply(client, 408, str(e))
            log.info("%s map-http: 408 cut: %s", peer_ip, e)
            self.stats.statuses[408] += 1
            return False
        began = time.monotonic()
        answer = up.answer
        answer.begin(len(raw))
        up.head = head  # (GET /api/connections: the request in progress)
        try:
            return self._serve(client, reader, raw, head, peer_ip, ctx, up, watch, answer)
        finally:
            stats = self.stats  # (the listener's: what the dashboard graphs)
            stats.request_seconds.observe(time.monotonic() - began)
            if answer.status:  # (0: the client went before any answer)
                stats.statuses[answer.status] += 1
            stats.bytes_in += answer.size_in
            stats.bytes_out += answer.size_out
            if up.live is not None:
                up.live.bytes_in += answer.size_in
                up.live.bytes_out += answer.size_out
            if answer.route is not None:
                answer.route.figures.add(answer.size_in, answer.size_out)

    def _serve(self, client: Conn, reader: Reader, raw: bytes, head: http1.Head, peer_ip: str, ctx: MapHttpContext,
               up: "RouteStream", watch: ConnWatch, answer: "Answer") -> Optional[bool]:
        """Route one request by its Host and pass it on; returns whether the connection stays
        open (None: as _one says)."""
        framing = request_framing(head)
        if ctx.certs is not None and ctx.scheme == "http" and head.target.startswith(CHALLENGE_PATH):
            key_authorization = ctx.certs.http_answer(head.target[len(CHALLENGE_PATH):])
            if key_authorization is not None:  # (else the mapping's service has the path)
                answer.status = 200
                client.sendall(http1.simple_response(200, key_authorization.decode("ascii", "replace"),
                                                     [(b"Content-Type", b"text/plain")], close=True, exact=True))
                log.info("%s map-http: answered an ACME http-01 validation", peer_ip)
                return False
        host = (head.get(b"host") or b"").decode("latin-1").strip()
        name = host_name(host)
        registry = ctx.registry()
        route = registry.find_route(name, ctx.scheme) if registry is not None and name else None
        if route is not None and route.passthrough:  # TLS ended here for another name (SNI) than this Host
            answer.reply(client, 421, f"{name} is served by TLS passthrough: connect with SNI {name}")
            log.info("%s map-https %s: 421 Host of a passthrough mapping", peer_ip, name)
            return False
        if route is None:
            answer.reply(client, 404, f"no mapping for host {name or '(none)'}")
            log.info("%s map-http %s %s: 404 no mapping for host %r", peer_ip, head.method, head.target[:200], name)
            return False
        if not route.online:
            answer.reply(client, 502, f"the client serving {name} is offline")
            log.info("%s map-http %s: 502 client %s offline", peer_ip, name, route.owner)
            return False
        route.requests += 1
        answer.route = route
        variables = {"client_ip": peer_ip, "host": host, "url": head.target}
        keep: Optional[bool] = False
        try:
            keep = self._exchange(client, reader, up, raw, head, framing, peer_ip, ctx, route, variables, watch,
                                  answer)
        except ClientGone as e:  # it gave up waiting: nothing is answered, the service's stream closed (below)
            answer.status = 499
            log.info("%s map-http %s %s%s: 499 %s", peer_ip, head.method, host, head.target[:200], e)
        finally:
            if not keep:
                up.close()
        return keep

    def _exchange(self, client: Conn, reader: Reader, up: "RouteStream", raw: bytes, head: http1.Head, framing: Framing,
                  peer_ip: str, ctx: MapHttpContext, route: HttpRoute, variables: dict[str, str],
                  watch: ConnWatch, answer: "Answer") -> Optional[bool]:
        if route.local_h2:
            return self._exchange_h2(client, reader, up, head, framing, peer_ip, ctx, route, variables, watch, answer)
        line = f"{head.method} {head.target} HTTP/1.1"
        # the client's header lines as they came when none goes or changes (as [http]'s proxy_url)
        out = upgrade = None
        if not route.request_rules:
            out = http1.passthrough_head(head, raw, line.encode("latin-1"), b"".join((
                b"\r\nX-Forwarded-For: ", peer_ip.encode(), b"\r\nX-Forwarded-Proto: ", ctx.scheme.encode())), _DROP)
        if out is None:
            headers, upgrade = http1.upstream_headers(head, framing, _DROP)
            headers += [(b"X-Forwarded-For", http1.forwarded_for(head, peer_ip.encode())),
                        (b"X-Forwarded-Proto", ctx.scheme.encode())]
            out = http1.encode_head(line, apply_header_rules(headers, route.request_rules, variables))
        rules = route.response_rules
        finish = (lambda h: apply_header_rules(h, rules, variables)) if rules else None
        # a kept stream the service closed (keep-alive timeout) as we sent: once more on a new one,
        # as httpio.stale_retry says
        try:
            kept = up.take(route, ctx.registry())
        except QuotaFull as e:
            answer.reply(client, 503, str(e))
            log.info("%s map-http %s: 503 refused: %s", peer_ip, variables["host"], e)
            return False
        for attempt in range(2):
            try:
                if attempt:
                    up.close()
                    kept = up.take(route, ctx.registry())
                stream, ureader = up.ready()
                watch.waiting(ureader, ctx.idle_timeout)  # the service's answer is progress too
                if framing == NO_BODY:
                    watch.awaiting_answer()
                response, body = httpio.exchange(reader, up.send, ureader, framing, out, head.method, MAX_HEAD,
                                                 finish=finish, whole=finish is None, on_sent=watch.awaiting_answer)
                break
            except httpio.ClientBodyError as e:  # the public client's fault: that request alone
                answer.reply(client, e.http_status, str(e))
                log.info("%s map-http %s: %d %s", peer_ip, variables["host"], e.http_status, e)
                return None if e.malformed else False
            except QuotaFull as e:
                answer.reply(client, 503, str(e))
                return False
            except httpio.STALE as e:
                if not httpio.stale_retry(kept, framing, e):
                    answer.reply(client, 502, f"the mapped service did not answer: {e}")
                    log.info("%s map-http %s %s%s: 502 the mapped service (stream %s of %s) did not answer: %s",
                             peer_ip, head.method, variables["host"], head.target[:200],
                             up.stream.sid if up.stream is not None else "-", route.owner, e)
                    return False
        if response.status == 101 and not upgrade:
            answer.reply(client, 502, httpio.UNASKED_101)
            log.info("%s map-http %s %s%s: 502 %s (stream %s of %s)", peer_ip, head.method, variables["host"],
                     head.target[:200], httpio.UNASKED_101, stream.sid, route.owner)
            return False
        if response.status == 101:
            watch.stop()  # the relay that follows watches its own idle time
        answer.status = response.status
        try:
            done = httpio.forward_response(up.public(client), reader, head, response, stream, ureader, finish,
                                           ctx.idle_timeout, upgrade, body)
        except httpio.AnswerUnsent as e:  # (nothing of it reached the client: it can still be told)
            answer.reply(client, e.http_status, f"the mapped service failed: {e}")
            log.info("%s map-http %s %s%s: %d the mapped service (stream %s of %s) failed: %s", peer_ip, head.method,
                     variables["host"], head.target[:200], e.http_status, stream.sid, route.owner, e)
            return False
        answer.size_out = done.size
        host = variables["host"]
        if done.upgraded is not None:
            stats = done.upgraded
            log.info("%s map-http %s %s%s 101 upgraded to %s, done (%s) in=%d out=%d", peer_ip, head.method, host,
                     head.target[:200], (upgrade or b"").decode("latin-1")[:40], stats.reason, stats.a_to_b,
                     stats.b_to_a)
            return False
        log.info("%s map-http %s %s%s %d %dB", peer_ip, head.method, host, head.target[:200], done.status, done.size)
        if not done.reusable:
            up.close()  # the service closes its connection: the next request needs a new stream
        return done.keep


    def _exchange_h2(self, client: Conn, reader: Reader, up: "RouteStream", head: http1.Head, framing: Framing,
                     peer_ip: str, ctx: MapHttpContext, route: HttpRoute, variables: dict[str, str],
                     watch: ConnWatch, answer: "Answer") -> bool:
        """A request to a service that speaks HTTP/2 (local_http2): a stream on the route's one
        HTTP/2 connection to it (over a stream of the link, which the client relays to the
        service untouched; web/h2up.py), whatever the public client spoke. The request counts
        in the account's and mapping's quotas while it lasts, its answer within their rate."""
        dropped = head.connection
        headers = [(n, v) for n, v in head.headers if n.lower() not in _DROP and n.lower() not in dropped]
        headers += [(b"X-Forwarded-For", http1.forwarded_for(head, peer_ip.encode())),
                    (b"X-Forwarded-Proto", ctx.scheme.encode())]
        out = h2up.request_headers(head.method, b"http", variables["host"].encode("latin-1"), head.target,
                                   apply_header_rules(headers, route.request_rules, variables))
        rules = route.response_rules
        finish = (lambda h: apply_header_rules(h, rules, variables)) if rules else None
        registry = ctx.registry()
        quotas = registry.quotas(route.owner, route.holder, route.name) if registry is not None else []
        full = enter_all(quotas)
        if full is not None:
            answer.reply(client, 503, full.full_text)
            log.info("%s map-http %s: 503 refused: %s", peer_ip, variables["host"], full.full_text)
            return False
        shared = [q.buckets for q in quotas if q.buckets is not None]
        public = cast(Conn, Throttled(client, shared=shared)) if shared else client
        link = route.link
        assert link is not None  # (an online route)
        route.figures.opened()
        watch.waiting(None, float("inf"))  # (each wait of the exchange has its own timeout)
        req = _Exchange(head, framing)
        try:
            for attempt in range(2):
                try:
                    conn = route.h2.get(lambda: cast(socket.socket, link.open_stream(CreateMode.HTTP, route.name)),
                                           f"mapping {route.name}")
                except (UpstreamError, ConnectionError) as e:
                    answer.reply(client, 502, f"the mapped service cannot be reached: {e}")
                    return False
                outcome = h2up.forward(public, reader, req, conn, out, ctx.idle_timeout, finish, None)
                if outcome is None:
                    answer.status, answer.size_out = req.status, req.size
                    log.info("%s map-http %s %s%s %d %dB (h2)", peer_ip, head.method, variables["host"],
                             head.target[:200], req.status, req.size)
                    return req.keep
                if isinstance(outcome, h2up.Unprocessed) and not attempt:
                    continue  # (a connection the service or the link had closed: once more on a new one)
                if isinstance(outcome, httpio.ClientBodyError):
                    answer.reply(client, outcome.http_status, str(outcome))
                elif isinstance(outcome, socket.timeout):
                    answer.reply(client, 504, f"the mapped service did not answer within {ctx.idle_timeout:g}s")
                else:
                    answer.reply(client, 502, f"the mapped service failed: {outcome}")
                log.info("%s map-http %s: %d %s", peer_ip, variables["host"], answer.status, outcome)
                return False
            return False
        finally:
            answer.status = answer.status or req.status
            for q in quotas:
                q.leave()
            route.figures.closed()


class _Exchange:
    """What h2up.forward reads and sets of one request (web/server.py's Request has the same)."""

    __slots__ = ("head", "framing", "keep", "status", "size")

    def __init__(self, head: http1.Head, framing: Framing) -> None:
        self.head = head
        self.framing = framing
        self.keep = head.wants_keep_alive()
        self.status = 0
        self.size = 0


class RouteStream:
    """The stream of one public connection to its current route's client. Kept across
    keep-alive requests while they go to the same route, so the client keeps its connection
    to the service too; a request for another route closes it and opens one for that route."""

    __slots__ = ("route", "stream", "reader", "visitor", "quotas", "send", "live", "head", "answer")

    def __init__(self, visitor: tuple[Address, Address]) -> None:
        self.visitor = visitor  # (the client, the address it reached): told to the center client
        self.route: HttpRoute | None = None
        self.stream: VirtualConn | None = None
        self.reader: Reader | None = None
        self.quotas: list[Quota] = []  # the account's and mapping's limits its stream counts in
        self.send: Callable[[Data], None] = _nothing  # to the service: the stream's sendall, within the quotas' rate
        self.head: http1.Head | None = None  # the request in progress, or the last
        self.answer = Answer()  # what the request in progress came to
        self.live = current()  # the public connection's row in GET /api/connections
        if self.live is not None:
            self.live.target = self.live_target  # (asked only when listed)

    def live_target(self) -> str:
        head = self.head
        if head is None:
            return ""
        return f"{head.method} {(head.get(b'host') or b'').decode('latin-1')}{head.target[:200]}"

    def ready(self) -> tuple[VirtualConn, Reader]:
        """The stream :meth:`take` made ready, and its reader."""
        assert self.stream is not None and self.reader is not None
        return self.stream, self.reader

    def take(self, route: HttpRoute, registry: Optional[MappingRegistry]) -> bool:
        """Have a stream to ``route`` ready; True when it is the kept one of earlier requests.
        A new stream counts in the quotas of the route's account and mapping ([[center.users]]
        max_connections: QuotaFull when one is full)."""
        vc = self.stream
        if vc is not None and self.route is route:
            ended = vc.closed or vc.got_fin or vc.reset or vc.link.closed
            # (bytes that came past the last answer would read as this request's: a new stream then)
            past = vc.arrived() or (self.reader is not None and self.reader.buf)
            if not (ended or past):
                return True
        self.close()
        assert route.link is not None  # (the registry gives routes with a link)
        quotas = registry.quotas(route.owner, route.holder, route.name) if registry is not None else []
        full = enter_all(quotas)
        if full is not None:
            raise QuotaFull(full.full_text)
        try:
            self.stream = route.link.open_stream(CreateMode.HTTP, route.name, self.visitor)
        except BaseException:
            for q in quotas:
                q.leave()
            raise
        self.quotas = quotas
        route.figures.opened()
        self.stream.settimeout(None)  # (the connection's ConnWatch times it out: no timer per recv)
        self.reader = Reader(self.stream)
        self.route = route
        shared = [(to_public, to_service) for to_service, to_public in self._buckets()]
        self.send = Throttled(self.stream, shared=shared).sendall if shared else self.stream.sendall
        return False

    def _buckets(self) -> list[tuple[Bucket, Bucket]]:
        return [q.buckets for q in self.quotas if q.buckets is not None]

    def public(self, client: Conn) -> Conn:
        """The public client as the answer is sent to it: within the quotas' rate (an upgraded
        connection's relay, both ways)."""
        shared = self._buckets()
        return cast(Conn, Throttled(client, shared=shared)) if shared else client

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            for q in self.quotas:
                q.leave()
            if self.route is not None:
                self.route.figures.closed()
        self.quotas = []
        self.send = _nothing
        self.route = self.stream = self.reader = None


def _nothing(data: Data) -> None:
    raise ConnectionError("no stream")


class QuotaFull(Exception):
    """A new stream to a mapping would exceed its account's or its own max_connections."""


class Answer:
    """What one request on a public connection came to, for the listener's and the mapping's
    figures: the status sent, the head's bytes in, the body's bytes out (:meth:`begin` at each
    request)."""

    __slots__ = ("status", "size_in", "size_out", "route")

    def begin(self, size_in: int) -> None:
        """A new request (one Answer per connection, reset for each of its requests)."""
        self.status = 0  # (0: none sent, the connection ended first)
        self.size_in = size_in
        self.size_out = 0
        self.route: HttpRoute | None = None

    def reply(self, client: Conn, status: int, text: str) -> None:
        self.status = status
        _reply(client, status, text)


def _reply(client: Conn, status: int, text: str) -> None:
    try:
        client.sendall(http1.simple_response(status, f"wmproxy: {text}"))
    except OSError:
        pass


def listener_specs(cfg: Config) -> list[ListenerSpec]:
    """The shared listeners of http and https mappings (``[center] map_http_bind`` and
    ``map_https_bind`` on a center server)."""
    if cfg.center is None or not cfg.center.is_server:
        return []
    c = cfg.center
    idle = cfg.proxy.idle_timeout if cfg.proxy else 300.0
    head = cfg.proxy.handshake_timeout if cfg.proxy else HEAD_TIMEOUT
    pp = policy(c.map_proxy_protocol, c.map_proxy_protocol_from, head)
    specs = []
    if c.map_http_bind is not None:
        specs.append(ListenerSpec("map-http", c.map_http_bind,
                                  MapHttpSettings(c.map_http_bind, idle, "http", (), c.max_connections_per_ip, head,
                                                  pp, c.map_http2, cfg.acme_path if cfg.uses_acme else ""),
                                  "center.map_http_bind", MapHttpServer))
    if c.map_https_bind is not None:
        certs = tuple(zip(c.map_cert, c.map_key))
        specs.append(ListenerSpec("map-https", c.map_https_bind,
                                  MapHttpSettings(c.map_https_bind, idle, "https", certs, c.max_connections_per_ip,
                                                  head, pp, c.map_http2, cfg.acme_path if c.map_acme else "",
                                                  c.map_acme),
                                  "center.map_https_bind", MapHttpServer,
                                  (lambda: sni_server_context(list(certs))) if certs else None))
    return specs

