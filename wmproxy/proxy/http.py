"""HTTP forward proxy: absolute-form requests with keep-alive, and CONNECT tunnels.

Each request goes to its own host: the upstream connection is reused only while the next
request names the same host and port, else it is closed and a new one opened. Bodies are
framed by Content-Length or chunked (RFC 9112), hop-by-hop headers are dropped
(RFC 9110 7.6.1) and ``Via`` is added. Upstream failures answer 502, timeouts 504.
"""

from __future__ import annotations

import logging
import socket
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ClientGone, PhaseTimeout, ProtocolError, UpstreamError
from ..logs import access_log, log_access
from ..net import httpio
from ..net.conn import Conn
from ..net.idle import ConnWatch
from ..net.reader import PeerClosed, Reader
from ..net.relay import relay
from ..net.throttle import Throttled
from ..net.writer import linger, send_all
from ..prot import http1
from ..prot.framing import NO_BODY, Framing, request_framing
from ..prot.target import Target, parse_absolute, parse_authority
from ..prot.auth import parse_basic_auth
from ..prot.http1 import Head, simple_response
from .tunnel import open_tunnel

if TYPE_CHECKING:
    from .server import ConnInfo, ProxyContext

log = logging.getLogger("wmproxy.proxy")


VIA = b"1.1 wmproxy"
VIA_LINE = b"\r\nVia: " + VIA
PROXY_AUTHENTICATE = [(b"Proxy-Authenticate", b'Basic realm="wmproxy"')]
_NOT_FORWARDED = frozenset((b"host", b"expect"))  # Host is rebuilt from the URL; Expect is answered here
_EXPECT = frozenset((b"expect",))


class _UpstreamConn:
    """The current upstream connection of one client connection."""

    __slots__ = ("key", "sock", "reader", "used", "send")

    def __init__(self, key: tuple[str, int], sock: socket.socket) -> None:
        self.key = key
        self.sock = sock
        self.reader = Reader(sock, keep_watching=True)
        self.used = False  # True once a response came back on it (then it may go stale)
        self.send = partial(send_all, sock)

    def close(self) -> None:
        self.reader.release()
        self.sock.close()


class HttpSession:
    """One client connection speaking HTTP to the proxy."""

    def __init__(self, ctx: ProxyContext, client: Conn, reader: Reader, info: ConnInfo) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.client = client
        self.send_client = partial(send_all, client)
        self.reader = reader
        self.info = info
        self.upstream: _UpstreamConn | None = None
        self.watchdog: ConnWatch | None = None
        self.first = True
        self.auth = ctx.cfg.auth
        self.user = ""  # who the last request's credentials named
        self.refusal = ""  # why its credentials were refused

    # -- the request loop -----------------------------------------------------------------
    def _start_watchdog(self) -> ConnWatch:
        """Sockets here have no timeout (a timer per recv costs more than the parsing): the
        connection's watch throws socket.timeout into this greenlet when nothing moves for
        handshake_timeout (first request) or idle_timeout (later, and upstream waits), and
        PhaseTimeout at a head's deadline: the first one whole within handshake_timeout of
        the connection's start, a later one within handshake_timeout of its first bytes."""
        cfg = self.cfg
        self.client.settimeout(None)
        self.watchdog = watch = ConnWatch(self.reader, cfg.handshake_timeout, cfg.handshake_timeout,
                                          f"request head not complete within handshake_timeout "
                                          f"({cfg.handshake_timeout:g}s)")
        watch.until(self.info.started + cfg.handshake_timeout, watch.head_phase)
        self.info.end_handshake()  # the watch has the deadline now
        return watch

    def _stop_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None

    def serve(self, allowed: bool) -> None:
        watch = self._start_watchdog()
        reader, limit, plain = self.reader, self.cfg.max_header_size, "http" in self.cfg.flag
        max_headers = self.cfg.max_headers
        try:
            while True:
                watch.answer = False  # (a client's close between requests is no abandoned request: awaiting_answer)
                try:
                    raw = httpio.read_head(reader, limit, None if self.first else watch.head_started)
                except PeerClosed:
                    if self.first:
                        raise
                    return  # a keep-alive client went away between requests: normal
                except PhaseTimeout as e:
                    self._error(408, str(e))
                    raise
                except socket.timeout:
                    if self.first:
                        self._error(408, "request head not received in time")
                        raise
                    return
                except ProtocolError as e:
                    self._error(e.http_status, str(e))
                    raise
                if self.first:
                    self.first = False
                    watch.limit = self.cfg.idle_timeout  # from now on, silence ends after idle_timeout
                watch.done()  # the head is in: its deadline is over
                started = time.monotonic()
                try:
                    head = http1.parse_request_head(raw)
                    # the absolute URI decides where a request goes; the Host line must be sound
                    http1.check_request(head, max_headers, head.method != "CONNECT")
                except ProtocolError as e:
                    self._error(e.http_status, str(e))
                    raise
                if not allowed:
                    self._reply_log(head, 403, "client address not allowed", started)
                    return
                if self.auth:
                    if self.ctx.auth_blocked(self.info.ip):  # failed too often lately: not even asked
                        self._reply_log(head, 429, "too many failed logins from this address; try again later",
                                        started)
                        return
                    if not self._authorized(head):
                        if self.refusal.endswith("is disabled"):  # (the right password: told why)
                            self._reply_log(head, 403, self.refusal, started)
                        else:
                            self._reply_log(head, 407, "proxy authentication required", started, PROXY_AUTHENTICATE)
                        return
                    if self.user != self.info.user:
                        full = self.ctx.admit(self.info, self.user)
                        if full:  # ([[proxy.users]] max_connections)
                            self._reply_log(head, 429, full, started)
                            return
                if head.method == "CONNECT":
                    self._connect(head, started)
                    return
                if not plain:
                    self._reply_log(head, 405, "plain HTTP proxying is disabled (flag)", started)
                    return
                try:
                    if not self._forward(head, raw, started):
                        return
                except ClientGone as e:  # it gave up waiting: nothing is answered, the server's connection closed
                    self._drop_upstream()
                    self._log(head, 499, 0, started, str(e))
                    return
        finally:
            self._stop_watchdog()
            if self.upstream:
                self.upstream.close()

    def _authorized(self, head: Head) -> bool:
        """Whether the request carries the right credentials (a wrong pair counts against its
        address; none at all, a browser's first try, does not)."""
        creds = parse_basic_auth(head.get(b"proxy-authorization"))
        self.refusal = ""
        if creds is None:
            return False
        refused = self.ctx.login(*creds, self.info.ip)
        if refused:
            self.refusal = refused
            return False
        self.user = creds[0]
        return True

    def _error(self, status: int, text: str, extra: Sequence[tuple[bytes, bytes]] = (), body: bool = True) -> int:
        """Send one of our own answers; returns the body bytes sent (0 if the client is gone)."""
        data = simple_response(status, f"wmproxy: {text}", extra, body=body)
        try:
            self.client.sendall(data)
        except OSError:
            return 0
        return len(data) - data.index(b"\r\n\r\n") - 4

    def _reply_log(self, head: Head, status: int, text: str, started: float,
                   extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._log(head, status, self._error(status, text, extra, head.method != "HEAD"), started, text)

    def _log(self, head: Head, status: int, size: int, started: float, note: str = "") -> None:
        """One access-log line per request, combined-like, plus the listener's counters."""
        self.info.proto = "http"
        self.info.down += size
        stats = self.ctx.stats
        stats.statuses[status] += 1
        took = time.monotonic() - started
        stats.request_seconds.observe(took)
        if not access_log.isEnabledFor(logging.INFO):
            return  # (the parse of credentials below is skipped too)
        creds = parse_basic_auth(head.get(b"proxy-authorization")) if self.auth else None
        if self.info.behalf:
            note = f"for {self.info.behalf}" + (f"; {note}" if note else "")
        log_access(self.info.ip, creds[0] if creds else "", head, head.target, status, size, took, note)

    # -- CONNECT ----------------------------------------------------------------------------
    def _connect(self, head: Head, started: float) -> None:
        self.info.proto = "connect"
        if "https" not in self.cfg.flag:
            self._error(405, "CONNECT is disabled (flag)")
            self.info.result = "refused: CONNECT disabled"
            return
        try:
            target = parse_authority(head.target)
        except ProtocolError as e:  # (answered, then logged as a bad request by the connection's handler)
            self._error(e.http_status, str(e))
            raise
        self.info.target = f"{target.host}:{target.port}"
        self._stop_watchdog()  # the dial has its timeout, the relay its idle watchdog
        open_tunnel(self.ctx, self.client, self.reader, self.info, target.host, target.port,
                    ok_reply=lambda host, port: b"HTTP/1.1 200 Connection Established\r\n\r\n",
                    fail_reply=lambda e: simple_response(e.http_status, f"wmproxy: {e}"))

    # -- absolute-form requests --------------------------------------------------------------
    def _request_bytes(self, head: Head, raw: bytes, target: Target, framing: Framing) -> tuple[bytes, bool]:
        """The head to send upstream (``raw``: the client's, ``head`` parsed from it), and whether
        the client asked to upgrade. Its header lines go on as they came when none is dropped and
        its one Host line is set to the URL's authority (RFC 9112 3.2.2)."""
        data = http1.passthrough_head(head, raw, head.method.encode("latin-1") + target.line_tail, VIA_LINE, _EXPECT,
                                      target.host_header)
        if data is not None:
            return data, False
        headers, upgrade = http1.upstream_headers(head, framing, _NOT_FORWARDED)
        headers.insert(0, (b"Host", target.host_header))
        headers.append((b"Via", VIA))
        return http1.encode_head(f"{head.method} {target.path} HTTP/1.1", headers), bool(upgrade)

    def _forward(self, head: Head, raw: bytes, started: float) -> bool:
        """Serve one request. Returns whether the client connection stays open."""
        try:
            target = parse_absolute(head.target)
            framing = request_framing(head)
        except ProtocolError as e:
            self._reply_log(head, e.http_status, str(e), started)
            return False
        via = head.index.get(b"via")
        if via is not None and any(VIA in value for value in via):  # it went through a wmproxy already
            self._reply_log(head, 403, "forwarding loop detected (this proxy's Via is in the request)", started)
            return False
        data, upgrade = self._request_bytes(head, raw, target, framing)
        if framing != NO_BODY and head.version == "1.1" and head.expects_continue():
            # We answer 100 ourselves and send the body on: an upstream that ignores Expect
            # would otherwise stall the client for its expect timeout.
            self.client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if framing == NO_BODY and self.watchdog is not None:
            self.watchdog.answer = True  # (the request is all out with its head: watch.awaiting_answer)
        try:
            up, response, body = self._exchange(head, target, data, framing)
        except UpstreamError as e:
            self._reply_log(head, e.http_status, str(e), started)
            return False
        except httpio.ClientBodyError as e:  # the client's fault: no upstream is blamed
            self._reply_log(head, e.http_status, str(e), started)
            if e.malformed:  # (it may still be sending: what comes is dropped first, so that the answer is read)
                linger(self.client)
            return False
        if response.status == 101:
            if not upgrade:
                self._drop_upstream()
                self._reply_log(head, 502, f"upstream {target.authority}: {httpio.UNASKED_101}", started)
                return False
            assert response.head is not None  # (a 101 is always parsed whole)
            return self._switch(head, response.head, up, started)
        out_head, chunked_out, client_keep = httpio.to_client(head, response, VIA_LINE)
        if body is not None:  # it came whole with the head: one send, nothing buffered
            self.send_client(out_head + body)
            size = len(body)
        else:
            try:
                size = httpio.copy_answer(up.reader, self.send_client, response.framing, chunked_out, out_head)
            except httpio.AnswerUnsent as e:  # (nothing of it reached the client: it can still be told)
                self._drop_upstream()
                self._reply_log(head, e.http_status, f"upstream {target.authority}: {e}", started)
                return False
            except (PeerClosed, ProtocolError, socket.timeout) as e:
                self._log(head, response.status, 0, started, f"upstream broke mid-body: {e}")
                return False
        up.used = True
        if not httpio.reusable_after(response, up.reader):
            self._drop_upstream()
        self._log(head, response.status, size, started)
        return client_keep

    def _exchange(self, head: Head, target: Target, data: bytes, framing: Framing,
                  retry: bool = True) -> tuple[_UpstreamConn, http1.Response, bytes | None]:
        """Send the request (head and body) and read the final response head, and its body
        when that came whole with it (else None: the body waits in the upstream's reader).

        A reused upstream connection that turns out closed is replaced once (``retry``), as
        httpio.stale_retry says. Raises UpstreamError, or
        httpio.ClientBodyError when the client's body broke off or broke its framing.
        """
        up = self.upstream
        if up is not None and up.reader.stirred():  # (bytes came past its last answer, or its close: not
            self._drop_upstream()                   # to be read as this request's answer)
            up = None
        if up is None or up.key[0] != target.host or up.key[1] != target.port:
            up = self._new_upstream(target)
        try:
            watch = self.watchdog
            response, body = httpio.exchange(self.reader, up.send, up.reader, framing, data, head.method,
                                             self.cfg.max_header_size, self._interim if head.version == "1.1" else None,
                                             whole=True, on_sent=watch.awaiting_answer if watch is not None and
                                             framing != NO_BODY else None)
            return up, response, body
        except httpio.ClientBodyError:
            self._drop_upstream()  # it has part of a request: no use for another
            raise
        except httpio.STALE as e:
            self._drop_upstream()
            if retry and httpio.stale_retry(up.used, framing, e):
                return self._exchange(head, target, data, framing, False)
            if isinstance(e, ProtocolError):
                raise UpstreamError(f"upstream {target.authority} sent a bad response: {e}") from None
            raise UpstreamError(f"upstream {target.authority} closed the connection: {e}") from None
        except socket.timeout:
            self._drop_upstream()
            raise UpstreamError(f"upstream {target.authority} did not answer in time", 504) from None

    def _interim(self, rhead: Head) -> None:
        """An interim 1xx response goes to an HTTP/1.1 client on the way (100 Continue excepted:
        the proxy gave that one itself)."""
        if rhead.status != 100:
            self.client.sendall(http1.encode_head(f"HTTP/1.1 {rhead.status} {rhead.reason.decode('latin-1')}",
                                                  rhead.headers))

    def _new_upstream(self, target: Target) -> _UpstreamConn:
        """Close the current upstream connection, if any, and open one to ``target``."""
        self._drop_upstream()
        sock: Any = self.ctx.dial(target.host, target.port)
        shared = self.ctx.shared(self.info)  # (its user's: from the client, to it; the other way round here)
        if self.cfg.rate_limit or shared:  # (both ways: what the server sends, and the request bodies to it)
            sock = Throttled(sock, self.cfg.rate_limit, [(to_client, from_client) for from_client, to_client in shared])
        self.upstream = _UpstreamConn((target.host, target.port), sock)
        if self.watchdog is not None:
            self.watchdog.upstream = self.upstream.reader  # its reads are progress too
        return self.upstream

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
            if self.watchdog is not None:
                self.watchdog.upstream = None

    def _switch(self, head: Head, rhead: Head, up: _UpstreamConn, started: float) -> bool:
        """101 Switching Protocols: hand the head on, then relay raw bytes both ways."""
        self.client.sendall(http1.encode_head(f"HTTP/1.1 101 {rhead.reason.decode('latin-1')}", rhead.headers))
        self.upstream = None  # the relay owns and closes it now
        up.reader.release()
        self._stop_watchdog()  # the relay has its own
        stats = relay(self.client, up.sock, self.cfg.idle_timeout,
                      a_pending=self.reader.take_pending(), b_pending=up.reader.take_pending())
        self._log(head, 101, stats.total, started, f"upgraded, {stats.reason}")
        return False


def serve_http(ctx: ProxyContext, client: Conn, reader: Reader, info: ConnInfo, allowed: bool) -> None:
    """Serve an HTTP client connection until it closes or a request ends it."""
    HttpSession(ctx, client, reader, info).serve(allowed)
