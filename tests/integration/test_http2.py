"""HTTP/2 on [http] listeners: h2 by ALPN on TLS, h2c with prior knowledge on plain binds, with
curl, nghttp and the h2 library as a raw client (flow control, and the known attacks from the
client's side: rapid reset, CONTINUATION flood, HPACK bomb, PING and SETTINGS floods, header
injection, a connection kept open by PINGs alone)."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, PushPromiseFrame, SettingsFrame

from conftest import TcpServer, curl, free_port, recv_all, wait_port, websocket_echo, write_cert
from test_center import http_mapping

PAGE = os.urandom(300_000)


def site(tmp_path, origin_port: int = 0, tls: bool = False, extra: str = "") -> str:
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    (www / "page.bin").write_bytes(PAGE)
    (www / "small.txt").write_text("small file\n")
    conf = '[[http.server]]\nbind = "127.0.0.1:{port}"\nclient_read_timeout = "3s"\n' + extra
    if tls:
        conf += f'cert = "{tmp_path}/site.pem"\nkey = "{tmp_path}/site.key"\n'
    conf += 'headers = ["X-Served-By wmproxy"]\n'
    conf += '[[http.server.location]]\nrule = "= /hello"\nstatic_response = "hello {host}"\n'
    conf += '[[http.server.location]]\nrule = "/old"\nredirect = "/new"\nstatic_response = ""\nstatus = 301\n'
    conf += '[[http.server.location]]\nrule = "/private"\ndeny_ip = ["127.0.0.0/8"]\nstatic_response = "no"\n'
    conf += '[[http.server.location]]\nrule = "/limited"\nlimit_req = { rate = "1r/m" }\nstatic_response = "once"\n'
    conf += ('[[http.server.location]]\nrule = "/paced/"\nrate_limit = "200k/s"\n'
             f'file_server = {{ root = "{www}", prefix = "/paced" }}\n')
    if origin_port:
        conf += f'[[http.server.location]]\nrule = "/api/"\nproxy_url = "http://127.0.0.1:{origin_port}/"\n'
    conf += f'[[http.server.location]]\nrule = "/"\nfile_server = {{ root = "{www}" }}\n'
    return conf


def h2_curl(*args: str) -> subprocess.CompletedProcess:
    return curl("-sS", "-w", "\n%{http_version} %{http_code}", *args)


class Client:
    """A raw HTTP/2 client on the h2 library (cleartext, prior knowledge)."""

    def __init__(self, port: int, validate: bool = True, window: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_outbound_headers=validate, normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if window:
            self.conn.increment_flow_control_window(window)  # the connection's, not the streams'
        self.send()
        self.events: list = []
        self.bodies: dict[int, bytes] = {}
        self.heads: dict[int, dict] = {}
        self.ended: set[int] = set()
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = False

    def send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str, method: str = "GET", body: bytes = b"", headers: list | None = None,
                end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", method.encode()), (b":path", path.encode()),
                                     (b":scheme", b"http"), (b":authority", b"a.test"), *(headers or [])],
                               end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.send()
        return sid

    def pump(self, until, timeout: float = 10, ack: bool = True) -> None:
        """Read until ``until()`` holds (acknowledging data unless ``ack`` is False)."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"not done in {timeout}s: {self.events[-5:]}")
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                return
            self.take(data, ack)

    def take(self, data: bytes, ack: bool = True) -> None:
        for event in self.conn.receive_data(data):
            self.events.append(event)
            if isinstance(event, h2.events.ResponseReceived):
                self.heads[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                if ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = event
        try:
            self.send()
        except OSError:
            pass

    def drain(self, timeout: float = 10) -> None:
        """Read (without sending) until the server closes the connection."""
        self.pump(lambda: self.closed, timeout, ack=False)

    def close(self) -> None:
        self.sock.close()


def test_h2c_prior_knowledge_serves_every_kind_of_location(start_proxy, origin, tmp_path):
    p = start_proxy(config=site(tmp_path, origin.port), bind=False)
    base = f"http://127.0.0.1:{p.port}"
    r = h2_curl("--http2-prior-knowledge", "-H", "Host: a.test", f"{base}/hello")
    assert r.stdout == b"hello a.test\n2 200", r.stderr
    r = h2_curl("--http2-prior-knowledge", "-D", "-", f"{base}/small.txt")
    out = r.stdout.decode()
    assert out.startswith("HTTP/2 200") and "x-served-by: wmproxy" in out and out.endswith("small file\n\n2 200")
    etag = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("etag:"))
    r = h2_curl("--http2-prior-knowledge", "-H", f"If-None-Match: {etag}", f"{base}/small.txt")
    assert r.stdout == b"\n2 304"
    r = h2_curl("--http2-prior-knowledge", "-r", "100-199", "-o", str(tmp_path / "part"), f"{base}/page.bin")
    assert r.stdout == b"\n2 206" and (tmp_path / "part").read_bytes() == PAGE[100:200]
    r = h2_curl("--http2-prior-knowledge", "-o", str(tmp_path / "whole"), f"{base}/page.bin")
    assert r.stdout == b"\n2 200" and (tmp_path / "whole").read_bytes() == PAGE
    r = h2_curl("--http2-prior-knowledge", "-I", f"{base}/page.bin")
    assert r.stdout.decode().startswith("HTTP/2 200") and f"content-length: {len(PAGE)}" in r.stdout.decode()
    r = h2_curl("--http2-prior-knowledge", "-D", "-", f"{base}/old")
    assert "HTTP/2 301" in r.stdout.decode() and "location: /new" in r.stdout.decode()
    assert h2_curl("--http2-prior-knowledge", f"{base}/private").stdout.endswith(b"2 403")
    assert h2_curl("--http2-prior-knowledge", f"{base}/nothing-here").stdout.endswith(b"2 404")
    assert h2_curl("--http2-prior-knowledge", f"{base}/limited").stdout == b"once\n2 200"
    assert h2_curl("--http2-prior-knowledge", f"{base}/limited").stdout.endswith(b"2 429")
    started = time.monotonic()
    r = h2_curl("--http2-prior-knowledge", "-o", str(tmp_path / "paced"), f"{base}/paced/page.bin")
    took = time.monotonic() - started
    assert r.stdout == b"\n2 200" and (tmp_path / "paced").read_bytes() == PAGE and took > 1.0, took
    # the reverse proxy: a body up (no Content-Length: sent on chunked), a chunked answer down
    body = os.urandom(200_000)
    (tmp_path / "body").write_bytes(body)
    r = h2_curl("--http2-prior-knowledge", "--data-binary", f"@{tmp_path / 'body'}", "-H",
                "Content-Type: application/octet-stream", f"{base}/api/upload")
    assert r.stdout == f"{len(body)} {hashlib.sha256(body).hexdigest()}\n2 200".encode(), r.stderr
    r = h2_curl("--http2-prior-knowledge", f"{base}/api/chunked")
    assert r.stdout == b"hello chunked world\n2 200"
    r = h2_curl("--http2-prior-knowledge", "-H", "Cookie: a=1", "-H", "Cookie: b=2", f"{base}/api/headers")
    assert b"\ncookie: a=1; b=2\n" in r.stdout and b"X-Forwarded-For: 127.0.0.1" in r.stdout  # (RFC 9113 8.2.3)
    # HTTP/1.1 on the same port as before
    r = h2_curl("--http1.1", f"{base}/hello")
    assert r.stdout.endswith(b"1.1 200")
    p.wait_log('"GET a.test/hello HTTP/2.0" 200')
    log = p.wait_log(f'"GET 127.0.0.1:{p.port}/hello HTTP/1.1" 200')
    assert f'"POST 127.0.0.1:{p.port}/api/upload HTTP/2.0" 200' in log


def test_h2_by_alpn_on_tls_and_http1_beside_it_and_http2_off(start_proxy, ca, tmp_path):
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_cert(ca, tmp_path, "site", "a.test")
    p = start_proxy(config=site(tmp_path, tls=True), bind=False)
    url = f"https://a.test:{p.port}"
    resolve = ["--cacert", str(tmp_path / "ca.pem"), "--resolve", f"a.test:{p.port}:127.0.0.1"]
    r = h2_curl(*resolve, "--http2", "-o", str(tmp_path / "got"), f"{url}/page.bin", f"{url}/hello")
    assert (tmp_path / "got").read_bytes() == PAGE, r.stderr
    assert r.stdout.endswith(f"\n2 200hello a.test:{p.port}\n2 200".encode()), r.stdout[-80:]
    r = h2_curl(*resolve, "--http1.1", f"{url}/hello")
    assert r.stdout == f"hello a.test:{p.port}\n1.1 200".encode()
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.test") as tls:
            assert tls.selected_alpn_protocol() == "h2"
    p.stop()
    off = start_proxy(config=site(tmp_path, tls=True, extra="http2 = false\n"), bind=False)
    resolve[-1] = f"a.test:{off.port}:127.0.0.1"
    r = h2_curl(*resolve, "--http2", f"https://a.test:{off.port}/hello")
    assert r.stdout == f"hello a.test:{off.port}\n1.1 200".encode()  # offered h2, answered in HTTP/1.1
    r = h2_curl("--http2-prior-knowledge", f"http://127.0.0.1:{off.port}/hello")
    assert r.returncode != 0  # no h2c either: the preface is no request


def test_nghttp_many_concurrent_streams_and_slow_ones_do_not_queue(start_proxy, origin, tmp_path):
    p = start_proxy(config=site(tmp_path, origin.port), bind=False)
    r = subprocess.run(["nghttp", "-n", "-s", "-m", "200", f"http://127.0.0.1:{p.port}/page.bin"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().count(" 200 ") == 200  # (-s: a line of statistics per response)
    # five requests to an origin that answers after 3 s, on one connection: served at once, not in turn
    started = time.monotonic()
    r = subprocess.run(["nghttp", "-n", "-s", "-m", "5", f"http://127.0.0.1:{p.port}/api/slow"],
                       capture_output=True, timeout=60)
    took = time.monotonic() - started
    assert r.returncode == 0 and r.stdout.decode().count(" 200 ") == 5, r.stderr
    assert took < 8, took


def test_requests_before_the_clients_eof_are_answered_then_the_connection_ends(start_proxy, origin, tmp_path):
    """A client that sends its requests and then its EOF (TCP half-close) still gets every
    answer (as HTTP/1.1 here, and as nginx does), and the connection ends once they are sent,
    not at the idle timeout (a request whose body had not ended is given up); so does one that sent only its SETTINGS and a PING (the server's
    SETTINGS and the PING's ACK were lost: the socket closed before the loop's turn wrote them)."""
    p = start_proxy(config=site(tmp_path, origin.port), bind=False)
    c = Client(p.port)
    sids = [c.request("/small.txt"), c.request("/hello"), c.request("/api/whoami")]
    c.request("/api/upload", method="POST", end=False)  # (a body that can no longer come: reset at the EOF)
    c.sock.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    c.drain(timeout=10)
    assert time.monotonic() - started < 2.5  # (client_read_timeout is 3 s)
    assert c.ended >= set(sids) and [c.heads[sid][b":status"] for sid in sids] == [b"200"] * 3, c.events
    assert [c.bodies[sid] for sid in sids] == [b"small file\n", b"hello a.test", b"origin-A"]
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
                  + PingFrame(0, opaque_data=b"12345678").serialize())
        s.shutdown(socket.SHUT_WR)
        got = recv_all(s)
    assert PingFrame(0, flags=["ACK"], opaque_data=b"12345678").serialize() in got, got


def test_a_protocol_error_is_answered_with_goaway_and_what_follows_is_read_not_reset(start_proxy, tmp_path):
    """DATA on a stream never opened: GOAWAY PROTOCOL_ERROR, then (nginx's lingering close)
    what the client still sends is read and dropped until its EOF, not answered with a reset
    that could destroy the GOAWAY in flight."""
    p = start_proxy(config=site(tmp_path), bind=False)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
                  + DataFrame(1, data=b"x" * 100).serialize())
        got = b""
        while b"\x07\x00\x00\x00\x00\x00" not in got:  # (a GOAWAY frame's type, flags and stream 0)
            got += s.recv(65536)
        for _ in range(20):
            s.sendall(DataFrame(1, data=b"y" * 16384).serialize())
            time.sleep(0.02)
        s.shutdown(socket.SHUT_WR)
        got += recv_all(s)
    at = got.index(b"\x07\x00\x00\x00\x00\x00") - 3
    assert int.from_bytes(got[at + 13:at + 17], "big") == h2.errors.ErrorCodes.PROTOCOL_ERROR, got[at:at + 17]
    p.wait_log("http2: cut: protocol error")


def test_a_stalled_stream_does_not_stall_the_connection(start_proxy, tmp_path):
    p = start_proxy(config=site(tmp_path), bind=False)
    c = Client(p.port, window=16 << 20)
    try:
        big = c.request("/page.bin")
        c.pump(lambda: len(c.bodies.get(big, b"")) >= 65535, ack=False)  # its window is spent, never granted
        small = c.request("/small.txt")
        c.pump(lambda: small in c.ended, ack=False)
        assert c.bodies[small] == b"small file\n" and big not in c.ended
        assert len(c.bodies[big]) == 65535  # the stalled stream sent no more than its window
        c.conn.acknowledge_received_data(65535, big)
        c.conn.increment_flow_control_window(1 << 20, big)
        c.send()
        c.pump(lambda: big in c.ended)
        assert c.bodies[big] == PAGE
    finally:
        c.close()


def test_rapid_reset_is_cut_and_others_are_served(start_proxy, tmp_path):
    p = start_proxy(config=site(tmp_path), bind=False)
    c = Client(p.port)
    try:
        for _ in range(10):  # opened and cancelled at once, 100 at a time
            for _ in range(100):
                sid = c.conn.get_next_available_stream_id()
                c.conn.send_headers(sid, [(b":method", b"GET"), (b":path", b"/page.bin"), (b":scheme", b"http"),
                                          (b":authority", b"a.test")], end_stream=True)
                c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            try:
                c.send()
            except OSError:
                break
        c.drain()
        assert c.terminated is not None and c.terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        c.close()
    p.wait_log("http2: cut: rapid reset")
    assert h2_curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/hello").stdout.endswith(b"2 200")


def _raw_h2(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def _read_goaway(s: socket.socket, timeout: float = 10) -> int | None:
    """The error code of the server's GOAWAY (None if it closed without one)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.data_to_send()
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    try:
        events = conn.receive_data(data)
    except h2.exceptions.ProtocolError:
        return None
    codes = [e.error_code for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    return codes[0] if codes else None


def test_continuation_flood_is_cut(start_proxy, tmp_path):
    p = start_proxy(config=site(tmp_path), bind=False)
    s, conn = _raw_h2(p.port)
    try:
        block = hpack.Encoder().encode([(":method", "GET"), (":path", "/hello"), (":scheme", "http"),
                                        (":authority", "a.test")])
        first = HeadersFrame(1, data=block[:2])  # no END_HEADERS: CONTINUATION frames follow, forever
        s.sendall(first.serialize())
        sent = 0
        try:
            for _ in range(2000):
                s.sendall(ContinuationFrame(1, data=b"x-a: " + b"b" * 1000).serialize())
                sent += 1
        except OSError:
            pass
        assert _read_goaway(s) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        s.close()
    p.wait_log("CONTINUATION flood")
    assert h2_curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/hello").stdout.endswith(b"2 200")



def test_a_frame_on_a_closed_stream_cuts_the_connection_and_the_log_says_why(start_proxy, tmp_path):
    """HEADERS again on a stream that is over: h2 ends the connection (GOAWAY STREAM_CLOSED);
    the log line names the error, not only the stream id h2's exception carries."""
    p = start_proxy(config=site(tmp_path), bind=False)
    s, conn = _raw_h2(p.port)
    try:
        encoder = hpack.Encoder()
        request = [(":method", "GET"), (":path", "/hello"), (":scheme", "http"), (":authority", "a.test")]
        s.sendall(HeadersFrame(1, data=encoder.encode(request), flags=["END_HEADERS", "END_STREAM"]).serialize())
        answered = b""
        while b"\x00\x01\x00\x00\x00\x01" not in answered:  # (a DATA frame with END_STREAM on stream 1)
            answered += s.recv(65536)
        s.sendall(HeadersFrame(1, data=encoder.encode(request), flags=["END_HEADERS", "END_STREAM"]).serialize())
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        goaway = got.rfind(b"\x07\x00\x00\x00\x00\x00")  # (its header's type, flags and stream 0)
        assert goaway >= 3 and got[goaway + 10:goaway + 14] == h2.errors.ErrorCodes.STREAM_CLOSED.to_bytes(4, "big")
    finally:
        s.close()
    p.wait_log("http2: cut: protocol error: StreamClosedError 1")


def test_hpack_bomb_is_refused(start_proxy, tmp_path):
    p = start_proxy(config=site(tmp_path), bind=False)
    s, conn = _raw_h2(p.port)
    try:
        encoder = hpack.Encoder()
        # one 4000-byte value in the table, then referenced by one byte each: 4 KiB of block, 400 KiB decoded
        headers = [(":method", "GET"), (":path", "/hello"), (":scheme", "http"), (":authority", "a.test")]
        block = encoder.encode(headers + [("x-bomb", "a" * 4000)] * 100)
        assert len(block) < 5000
        s.sendall(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        code = _read_goaway(s)
        assert code in (h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, h2.errors.ErrorCodes.PROTOCOL_ERROR,
                        h2.errors.ErrorCodes.COMPRESSION_ERROR), code
    finally:
        s.close()
    log = p.wait_log("http2: cut:")
    assert "Oversized header block" in log and "/hello HTTP/2.0" not in log  # (refused, never served)
    assert h2_curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/hello").stdout.endswith(b"2 200")


@pytest.mark.parametrize("flood", ["PING", "SETTINGS"])
def test_ping_and_settings_floods_are_cut(start_proxy, tmp_path, flood):
    p = start_proxy(config=site(tmp_path), bind=False)
    s, conn = _raw_h2(p.port)
    try:
        frame = PingFrame(0, opaque_data=b"12345678") if flood == "PING" else SettingsFrame(0, settings={4: 65535})
        try:
            s.sendall(frame.serialize() * 2000)  # and never reads the answers meanwhile
        except OSError:
            pass
        assert _read_goaway(s) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        s.close()
    p.wait_log(f"http2: cut: {flood} flood")


def test_a_header_value_with_crlf_never_becomes_a_header_upstream(start_proxy, origin, tmp_path):
    p = start_proxy(config=site(tmp_path, origin.port), bind=False)
    hits = origin.hits
    c = Client(p.port, validate=False)
    try:
        sid = c.request("/api/headers", headers=[(b"x-a", b"1\r\nx-injected: yes")])
        c.pump(lambda: sid in c.ended or c.closed)
        status = c.heads.get(sid, {}).get(b":status")
        assert status in (None, b"400"), status  # refused by h2 (reset) or by wmproxy (400)
    finally:
        c.close()
    assert origin.hits == hits  # (nothing reached the origin, let alone an X-Injected line)
    # upper case names, a connection-specific header: refused the same way
    c = Client(p.port, validate=False)
    try:
        sid = c.request("/api/headers", headers=[(b"connection", b"close")])
        c.pump(lambda: sid in c.ended or c.closed)
        assert c.heads.get(sid, {}).get(b":status") in (None, b"400")
    finally:
        c.close()
    assert origin.hits == hits


def test_settings_advertised_and_a_connection_without_streams_closes_at_the_read_timeout(start_proxy, tmp_path):
    p = start_proxy(config=site(tmp_path, extra="http2_max_concurrent_streams = 7\n"), bind=False)
    c = Client(p.port)
    try:
        c.pump(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in c.events))
        changed = next(e for e in c.events if isinstance(e, h2.events.RemoteSettingsChanged)).changed_settings
        assert changed[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 7
        assert changed[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE].new_value == 65536
        sid = c.request("/hello")
        c.pump(lambda: sid in c.ended)
        started = time.monotonic()
        while not c.closed and time.monotonic() - started < 10:  # PINGs now and then: no request
            c.conn.ping(b"01234567")
            c.send()
            try:
                c.pump(lambda: False, timeout=0.5)
            except AssertionError:  # (nothing but the PING's answer came)
                pass
        took = time.monotonic() - started
        assert c.closed and 2.5 < took < 6, took  # client_read_timeout = 3s
        assert c.terminated is not None and c.terminated.error_code == h2.errors.ErrorCodes.NO_ERROR
    finally:
        c.close()


def test_stop_sends_goaway_and_lets_open_streams_finish(start_proxy, origin, tmp_path):
    p = start_proxy(config=site(tmp_path, origin.port), bind=False)
    nghttp = subprocess.Popen(["nghttp", "-v", f"http://127.0.0.1:{p.port}/api/slow"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    idle = Client(p.port)  # a connection without streams: GOAWAY, then closed at once
    try:  # the origin answers after 3 s
        idle.pump(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in idle.events))
        time.sleep(1)  # the request is at the origin
        p.popen.send_signal(15)
        stopped = time.monotonic()
        idle.drain(timeout=5)
        assert idle.closed and time.monotonic() - stopped < 1.5
        assert idle.terminated is not None and idle.terminated.error_code == h2.errors.ErrorCodes.NO_ERROR
        out, _ = nghttp.communicate(timeout=20)
    finally:
        idle.close()
        if nghttp.poll() is None:
            nghttp.kill()
    text = out.decode(errors="replace")
    assert "recv GOAWAY frame" in text and "error_code=NO_ERROR" in text, text[-2000:]
    assert ":status: 200" in text and "\nlate[" in text, text[-2000:]  # (the body, then the next line of -v)
    assert text.index("recv GOAWAY frame") < text.index(":status: 200")  # told first, answered after
    assert nghttp.returncode == 0
    assert p.popen.wait(timeout=15) == 0 and time.monotonic() - stopped < 6  # (grace: 10 s)


def test_streams_beyond_max_concurrent_streams_are_refused(start_proxy, tmp_path):
    p = start_proxy(config=site(tmp_path, extra="http2_max_concurrent_streams = 4\n"), bind=False)
    c = Client(p.port, window=16 << 20)
    try:
        opened = [c.request("/page.bin") for _ in range(4)]  # each stalls at its 64 KiB window: they stay open
        c.pump(lambda: all(len(c.bodies.get(sid, b"")) >= 65535 for sid in opened), ack=False)
        extra = max(opened) + 2  # (sent raw: the h2 library will not open more than the server allows)
        block = c.conn.encoder.encode([(b":method", b"GET"), (b":path", b"/page.bin"), (b":scheme", b"http"),
                                       (b":authority", b"a.test")])
        c.sock.sendall(HeadersFrame(extra, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        c.pump(lambda: extra in c.ended or c.terminated is not None or c.closed, ack=False)
        refused = [e for e in c.events if isinstance(e, h2.events.StreamReset) and e.stream_id == extra]
        assert (refused and refused[0].error_code == h2.errors.ErrorCodes.REFUSED_STREAM) or (  # (h2: the latter)
            c.terminated is not None and c.terminated.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR), c.events[-3:]
        assert extra not in c.heads  # never served
    finally:
        c.close()
    assert h2_curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/hello").stdout.endswith(b"2 200")


def test_the_connection_window_covers_every_stream_s(start_proxy, tmp_path):
    # a stream whose handler does not read its body holds its own window (64 KiB), never the
    # connection's: the server grants the connection every stream's window at once
    p = start_proxy(config=site(tmp_path, extra="http2_max_concurrent_streams = 20\n"), bind=False)
    c = Client(p.port)
    try:
        c.pump(lambda: c.conn.outbound_flow_control_window >= 20 * 65535)
        assert c.conn.outbound_flow_control_window == 21 * 65535  # (65535 to begin with, and 20 x more)
        sids = [c.request("/hello", method="POST", end=False) for _ in range(20)]
        for sid in sids:  # every stream's whole window, the handlers reading none of it first
            for i in range(0, 65535, 16384):
                c.conn.send_data(sid, b"x" * min(16384, 65535 - i))
            c.conn.end_stream(sid)
        c.send()  # (h2 would refuse to send past the connection's window: it is big enough)
        c.pump(lambda: all(sid in c.ended for sid in sids))
        assert all(c.bodies[sid] == b"hello a.test" for sid in sids)
    finally:
        c.close()


def test_a_client_that_grants_windows_but_never_reads_holds_bounded_memory(start_proxy, tmp_path):
    psutil = pytest.importorskip("psutil")
    p = start_proxy(config=site(tmp_path), bind=False)
    (tmp_path / "www" / "huge.bin").write_bytes(os.urandom(3 << 20))
    server = psutil.Process(p.popen.pid)
    c = Client(p.port)
    try:
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: (1 << 31) - 1})
        c.conn.increment_flow_control_window((1 << 31) - 1 - 65535)
        c.send()
        c.pump(lambda: any(isinstance(e, h2.events.SettingsAcknowledged) for e in c.events))
        before = server.memory_info().rss
        for _ in range(100):  # 300 MiB asked for, all of it allowed by the windows, none of it read
            c.request("/huge.bin")
        time.sleep(3)
        grown = server.memory_info().rss - before
        assert grown < 40 << 20, grown  # (the socket's buffers, a backlog of 1 MiB, and a chunk per stream)
        # the server still serves others
        assert h2_curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/hello").stdout.endswith(b"2 200")
    finally:
        c.close()



def test_proxied_streams_whose_client_grants_no_window_hold_one_piece_each(start_proxy, tmp_path, request):
    """128 streams (a connection's most) of a big proxied answer that the client never grants
    a window for: each holds the piece it read from its server, not copies of it. The answer's
    head went to the client with its first 64 KiB piece joined to it (the head's copy with the
    piece, then a second copy of the two past the head: 190 KiB held per stream, 24 MiB for one
    connection); now a big piece goes after its head, not joined, and the body after a head is
    not copied (about 90 KiB per stream). And a value the server wrote with whitespace around it goes
    to the client without it (HTTP/2 refuses such a value: every h2 client refused the answer)."""
    psutil = pytest.importorskip("psutil")

    def serve(conn):
        try:
            while b"\r\n\r\n" not in conn.recv(65536):
                pass
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad:  padded \t\r\nContent-Length: 67108864\r\n\r\n")
            piece = b"x" * (1 << 20)
            for _ in range(64):
                conn.sendall(piece)
        except OSError:
            pass

    origin = TcpServer(serve)
    request.addfinalizer(origin.close)
    p = start_proxy(config=site(tmp_path, origin.port), bind=False)
    server = psutil.Process(p.popen.pid)
    c = Client(p.port)  # (the default windows: 64 KiB per stream and for the connection, never granted again)
    try:
        sids = [c.request("/api/warm")]
        c.pump(lambda: sids[0] in c.heads)
        assert c.heads[sids[0]][b"x-pad"] == b"padded"
        time.sleep(1)
        before = server.memory_info().rss
        sids += [c.request(f"/api/big{i}") for i in range(127)]
        c.pump(lambda: len(c.heads) == 128, ack=False)
        time.sleep(2)  # (every stream has read its first piece from its server and waits for a window)
        grown = server.memory_info().rss - before
        assert grown < 127 * 140 << 10, f"{grown >> 10} KiB for 127 stalled streams"  # (190 KiB each before)
        assert h2_curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/hello").stdout.endswith(b"2 200")
    finally:
        c.close()

def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client's websocket frame (masked), FIN set; payloads under 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_websockets_over_http2_rfc8441(start_proxy, tmp_path):
    """An extended CONNECT (:protocol websocket) on a location that proxies to a websocket
    server opens a websocket carried by the stream's DATA (the server speaks HTTP/1.1 and sees
    an Upgrade); another stream of the connection goes on meanwhile; a location that does not
    speak websocket refuses it (not a 2xx), a plain CONNECT gets 501."""
    echo = websocket_echo()
    try:
        port = echo.socket.getsockname()[1]
        p = start_proxy(config=site(tmp_path) +
                        f'[[http.server.location]]\nrule = "/ws"\nproxy_url = "http://127.0.0.1:{port}"\n', bind=False)
        c = Client(p.port)
        c.pump(lambda: c.conn.remote_settings.enable_connect_protocol == 1)
        sid = c.request("/ws", "CONNECT", headers=[(b":protocol", b"websocket"), (b"sec-websocket-version", b"13")],
                        end=False)
        c.pump(lambda: sid in c.heads)
        assert c.heads[sid][b":status"] == b"200" and b"sec-websocket-accept" not in c.heads[sid]
        for text in (b"hello over h2", b"x" * 100):
            before = len(c.bodies.get(sid, b""))
            c.conn.send_data(sid, ws_frame(text))
            c.send()
            c.pump(lambda: len(c.bodies.get(sid, b"")) >= before + 2 + len(text))
            assert c.bodies[sid][before:] == bytes([0x81, len(text)]) + text  # the echo, unmasked
        other = c.request("/hello")  # the connection's other streams go on meanwhile
        c.pump(lambda: other in c.ended)
        assert c.bodies[other] == b"hello a.test"
        c.conn.send_data(sid, ws_frame(b"\x03\xe8", opcode=8))  # close 1000: the server closes, the stream ends
        c.send()
        c.pump(lambda: sid in c.ended)
        assert c.bodies[sid].endswith(b"\x88\x02\x03\xe8")
        c.conn.end_stream(sid)  # (as a browser ends its side once the server ended its own)
        c.send()
        refused = c.request("/hello", "CONNECT", headers=[(b":protocol", b"websocket"),
                                                         (b"sec-websocket-version", b"13")], end=False)
        plain = c.conn.get_next_available_stream_id()
        c.conn.send_headers(plain, [(b":method", b"CONNECT"), (b":authority", b"a.test:443")])
        c.send()
        c.pump(lambda: refused in c.heads and plain in c.heads)
        assert c.heads[refused][b":status"] == b"501" and c.heads[plain][b":status"] == b"501"
        assert "upgraded, done" in p.wait_log("GET a.test/ws HTTP/2.0", timeout=5)
        assert '"GET a.test/hello HTTP/2.0" 501' in p.log()
    finally:
        echo.shutdown()


def test_websockets_over_http2_through_an_http_mapping(pair, tmp_path):
    """The same through intranet penetration: an h2c client on map_http_bind, the websocket
    server behind a center client (HTTP/1.1 Upgrade over the link)."""
    echo = websocket_echo()
    try:
        web = free_port()
        p = pair(start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"')
        p.client = p.start_client(tail=http_mapping("chat", echo.socket.getsockname()[1], "ws.test"))
        p.client.wait_log("mapping 'chat' published")
        wait_port(web)
        c = Client(web)
        c.pump(lambda: c.conn.remote_settings.enable_connect_protocol == 1)
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                                  (b":path", b"/chat"), (b":authority", b"ws.test"), (b"sec-websocket-version", b"13")])
        c.send()
        c.pump(lambda: sid in c.heads)
        assert c.heads[sid][b":status"] == b"200"
        c.conn.send_data(sid, ws_frame(b"through the link"))
        c.send()
        c.pump(lambda: len(c.bodies.get(sid, b"")) >= 18)
        assert c.bodies[sid] == b"\x81\x10through the link"
        c.conn.send_data(sid, ws_frame(b"\x03\xe8", opcode=8), end_stream=True)
        c.send()
        c.pump(lambda: sid in c.ended)
        p.server.wait_log("101 upgraded to websocket, done")
    finally:
        echo.shutdown()


def lying_upstream(attack: str) -> TcpServer:
    """An HTTP/2 'server' that answers every connection's first request with an attack: a
    CONTINUATION flood, an HPACK bomb or a PUSH_PROMISE (as a center client's local service
    could, to the center server)."""

    def serve(s: socket.socket) -> None:
        s.settimeout(10)
        got = b""
        while len(got) < 24 + 9 or HeadersFrame.type not in got[24:]:  # (the preface, then its request)
            chunk = s.recv(65536)
            if not chunk:
                return
            got += chunk
        s.sendall(SettingsFrame(0).serialize())
        encoder = hpack.Encoder()
        if attack == "continuation":
            s.sendall(HeadersFrame(1, data=encoder.encode([(":status", "200")])).serialize())
            for _ in range(30):  # (480 KB in 30 frames: under h2's own cap of 64 frames)
                s.sendall(ContinuationFrame(1, data=b"x-a: " + b"b" * 16000).serialize())
        elif attack == "hpack bomb":
            block = encoder.encode([(":status", "200")] + [("x-bomb", "a" * 4000)] * 100)
            s.sendall(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        else:
            promise = PushPromiseFrame(1, promised_stream_id=2, flags=["END_HEADERS"],
                                       data=encoder.encode([(":method", "GET"), (":path", "/pushed"),
                                                            (":scheme", "http"), (":authority", "a.test")]))
            s.sendall(promise.serialize())
        s.recv(65536)
        time.sleep(1)

    return TcpServer(serve)


@pytest.mark.parametrize("attack,logged", [("continuation", "CONTINUATION flood"),
                                           ("hpack bomb", "Oversized header block"),
                                           ("push", "Received pushed stream")])
def test_an_upstream_that_attacks_is_cut_and_the_client_gets_502(start_proxy, tmp_path, attack, logged):
    """An h2c upstream is bounded as a client is: its connection is cut, its streams answered
    502, the listener serves on. (h2 alone refuses a push, a header list over hpack's 64 KiB
    and a block of more than 64 frames, but would buffer 64 frames of 16 KiB: the frame scan
    cuts the block's bytes at 64 KiB.)"""
    bad = lying_upstream(attack)
    try:
        p = start_proxy(config=site(tmp_path) +
                        f'[[http.server.location]]\nrule = "/up/"\nproxy_url = "h2c://127.0.0.1:{bad.port}"\n',
                        bind=False)
        r = curl("-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{p.port}/up/x")
        assert r.stdout == b"502", r
        assert logged in p.wait_log(f"upstream 127.0.0.1:{bad.port}", timeout=10)
        assert h2_curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/hello").stdout.endswith(b"2 200")
    finally:
        bad.close()
