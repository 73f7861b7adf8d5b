"""The center link end to end: wmproxy-client -> TLS link -> wmproxy-server -> targets."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import ssl
import threading
import time

import psutil
import pytest

from conftest import (Pair, TcpServer, control, curl, drip, free_port, http_get, mirror_check, next_head, read_response,
                      recv_all, tunnel, wait_port, websocket_echo, write_cert)


def test_curl_through_the_link(pair, origin, tls_origin):
    cport = free_port()
    p = pair(server_top=f'control = "127.0.0.1:{cport}"')
    p.wait_link()
    url = f"http://127.0.0.1:{origin.port}/whoami"
    assert curl("-x", f"http://127.0.0.1:{p.proxy}", url).stdout == b"origin-A"
    assert curl("--socks5-hostname", f"127.0.0.1:{p.proxy}", f"http://localhost:{origin.port}/whoami").stdout == \
        b"origin-A"
    r = curl("--cacert", str(tls_origin.ca_file), "-x", f"http://127.0.0.1:{p.proxy}",
             f"https://localhost:{tls_origin.port}/hello")
    assert r.stdout == b"hello from origin-TLS", r.stderr
    p.server.wait_log("client 'alice' connected")
    p.server.wait_log('"GET http://127.0.0.1:')  # the server's forward proxy served it
    with socket.create_connection(("127.0.0.1", p.proxy), timeout=10) as s:  # the relay would be out of reach
        s.sendall(b"\x05\x01\x00" + b"\x05\x03\x00\x01\0\0\0\0\0\0")
        assert s.recv(2) == b"\x05\x00" and s.recv(3) == b"\x05\x07\x00"  # UDP ASSOCIATE: not supported
    st = json.loads(control(cport, "GET", "/status")[1])
    (link,) = st["center_links"]
    assert link["role"] == "server" and link["client"] == "alice" and link["bytes_out"] > 0


@pytest.mark.timeout(300)
def test_200_concurrent_streams_both_ways(pair, mirror):
    p = pair()
    p.wait_link()
    rng = random.Random(4)
    sizes = [rng.randrange(1 << 20, 5 << 20) for _ in range(200)]
    errors = []

    def one(size: int) -> None:
        try:
            if wrong := mirror_check(tunnel(p.proxy, "socks5", mirror), size):
                errors.append(wrong)
        except OSError as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(size,)) for size in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert errors == []


@pytest.mark.timeout(180)
def test_stalled_reader_does_not_slow_another_stream(pair, mirror, echo_server):
    p = pair()
    p.wait_link()
    stalled = tunnel(p.proxy, "socks5", mirror)
    flood = threading.Thread(target=lambda: _flood(stalled, 20 << 20), daemon=True)
    flood.start()  # the mirror echoes, nobody reads the echo: that stream's window fills up
    time.sleep(1)
    server_proc = psutil.Process(p.server.popen.pid)
    rss_before = server_proc.memory_info().rss
    payload = os.urandom(1 << 20) * 100  # 100 MB
    s = tunnel(p.proxy, "socks5", echo_server.port)
    t0 = time.monotonic()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    answer = recv_all(s)
    took = time.monotonic() - t0
    s.close()
    assert answer.decode() == f"got {len(payload)} {hashlib.sha256(payload).hexdigest()}"
    growth = server_proc.memory_info().rss - rss_before
    assert growth < 64 << 20, f"server RSS grew by {growth >> 20} MiB"
    assert took < 60
    stalled.close()


def _flood(s: socket.socket, n: int) -> None:
    try:
        s.sendall(os.urandom(n))
    except OSError:
        pass


def test_link_loss_closes_streams_and_the_client_reconnects(pair, echo_server, origin):
    p = pair()
    p.wait_link()
    live = tunnel(p.proxy, "socks5", echo_server.port)
    live.sendall(b"partial")
    p.server.popen.send_signal(signal.SIGKILL)  # the link dies under a live stream
    p.server.popen.wait()
    live.settimeout(15)
    try:
        assert recv_all(live) == b""
    except ConnectionResetError:
        pass
    live.close()
    p.client.wait_log("lost", timeout=15)
    head, _ = http_get(p.proxy, f"http://127.0.0.1:{origin.port}/whoami")
    assert head.startswith(b"HTTP/1.1 502")  # down: an immediate answer, no hang
    p.server = p.start("server", p.server_conf)
    wait_port(p.center, proc=p.server.popen)
    deadline = time.monotonic() + 40
    while "is up (attempt" not in p.client.log().split("lost")[-1] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert http_get(p.proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"


@pytest.mark.parametrize("kind,kw,server_says,client_says", [
    ("wrong password", {"password": "nope"}, "auth failed for user 'alice'", "refused by the server: auth failed"),
    ("wrong CA", {"ca": "other-ca.pem"}, "handshake with", "CERTIFICATE_VERIFY_FAILED"),
    ("wrong server name", {"server_name": "other.test"}, "handshake with", "Hostname mismatch"),
])
def test_bad_clients_are_refused_with_a_clear_log(pair, origin, kind, kw, server_says, client_says):
    p = pair()
    p.wait_link()
    good_proxy = p.proxy
    p.proxy = free_port()
    bad = p.start_client(**kw)
    bad.wait_log(client_says, timeout=15)
    p.server.wait_log(server_says, timeout=15)
    assert http_get(good_proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    head, _ = http_get(p.proxy, f"http://127.0.0.1:{origin.port}/whoami")
    assert head.startswith(b"HTTP/1.1 502")


def test_garbage_plain_client_and_oversize_frame_refused(pair, origin):
    p = pair()
    p.wait_link()
    with socket.create_connection(("127.0.0.1", p.center), timeout=10) as s:  # plain TCP to the TLS port
        s.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00" + b"junk")
        s.settimeout(10)
        try:
            recv_all(s)
        except ConnectionResetError:
            pass
    p.server.wait_log("handshake with 127.0.0.1")
    ctx = ssl.create_default_context(cafile=str(p.certs / "ca.pem"))
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.center), timeout=10),
                         server_hostname="center.test") as s:
        hello = s.recv(8 + 17)
        assert hello[3] == 5  # HELLO
        s.sendall(bytes([0x7F, 0xFF, 0xFF, 4, 0, 0, 0, 0]))  # a TOKEN of 8 MiB: over any limit
        try:
            assert s.recv(100) == b""
        except (ConnectionResetError, ssl.SSLError):
            pass
    p.server.wait_log("over the limit")
    assert http_get(p.proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    assert "Traceback" not in p.server.log()


def test_dead_link_detected_by_heartbeat(pair, origin):
    p = pair()
    p.wait_link()
    p.server.popen.send_signal(signal.SIGSTOP)  # alive but silent: only the heartbeat can tell
    try:
        p.client.wait_log("dead link", timeout=15)
    finally:
        p.server.popen.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if http_get(p.proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A":
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the client did not reconnect")


def test_mutual_tls(tmp_path, certs, pair, origin):
    trustme = pytest.importorskip("trustme")
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    write_cert(client_ca, tmp_path, "client", "office")
    p = pair(server_extra=f'client_ca = "{tmp_path}/client-ca.pem"', start_client=False)
    p.proxy = free_port()
    without = p.start_client()
    without.wait_log("attempt 1:", timeout=15)
    p.server.wait_log("handshake with")
    without.stop()
    p.client = p.start_client(f'cert = "{tmp_path}/client.pem"\nkey = "{tmp_path}/client.key"')
    p.wait_link()
    assert http_get(p.proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"


def tcp_mapping(name: str, local: int, remote: int) -> str:
    return (f'[[mappings]]\nname = "{name}"\nmode = "tcp"\nlocal_addr = "127.0.0.1:{local}"\n'
            f'remote_bind = "127.0.0.1:{remote}"\n')


def through(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def test_tcp_mappings_of_two_clients(pair, echo_server, mirror):
    cport = free_port()
    pub_a, pub_b = free_port(), free_port()
    outside = next(port for port in range(pub_b + 1, 65536) if port != pub_a)
    p = pair(server_top=f'control = "127.0.0.1:{cport}"', start_client=False,
             server_extra=f'allow_ports = ["{pub_a}", {pub_b}]')
    p.client = p.start_client(tail=tcp_mapping("echo", echo_server.port, pub_a) +
                              tcp_mapping("outside", echo_server.port, outside))
    p.wait_link()
    p.proxy = free_port()
    second = p.start_client(tail=tcp_mapping("mirror", mirror, pub_b) + tcp_mapping("taken", mirror, pub_a))
    second.wait_log("is up")
    payload = os.urandom(3 << 20)
    assert through(pub_a, payload).decode() == f"got {len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert hashlib.sha256(through(pub_b, payload)).digest() == hashlib.sha256(payload).digest()
    # refusals, logged on both ends with the reason
    second.wait_log("mapping 'taken' refused by the server: ")
    p.server.wait_log("mapping 'taken' of client alice refused:")
    assert "is already held by client alice (mapping echo)" in second.log()
    p.client.wait_log("mapping 'outside' refused by the server: port")
    st = json.loads(control(cport, "GET", "/status")[1])
    assert sorted(m["name"] for m in st["mappings"]) == ["echo", "mirror"]
    # the first client goes away: its port is withdrawn, the other client's stays
    p.client.stop()
    p.server.wait_log("mapping 'echo' of client alice withdrawn")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", pub_a), timeout=5)
    assert hashlib.sha256(through(pub_b, b"still here")).digest() == hashlib.sha256(b"still here").digest()
    # and comes back: published again without restarting the server
    p.proxy = free_port()
    back = p.start_client(tail=tcp_mapping("echo", echo_server.port, pub_a))
    back.wait_log("mapping 'echo' published")
    assert through(pub_a, b"again").decode().startswith("got 5 ")


def test_interactive_session_through_a_tcp_mapping(pair, mirror):
    """SSH-shaped: many small exchanges, each answered before the next, then a half-close."""
    pub = free_port()
    p = pair(start_client=False)
    p.client = p.start_client(tail=tcp_mapping("shell", mirror, pub))
    p.client.wait_log("mapping 'shell' published")
    with socket.create_connection(("127.0.0.1", pub), timeout=20) as s:
        for i in range(300):
            line = f"command {i}\n".encode()
            s.sendall(line)
            got = b""
            while len(got) < len(line):
                got += s.recv(100)
            assert got == line
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b""  # the far side saw EOF and closed its side too


def test_mappings_reload_over_the_live_link(pair, echo_server, mirror):
    pub_keep, pub_old, pub_new = free_port(), free_port(), free_port()
    p = pair(start_client=False)
    p.client = p.start_client(tail=tcp_mapping("keep", mirror, pub_keep) +
                              tcp_mapping("old", echo_server.port, pub_old))
    p.client.wait_log("mapping 'old' published")
    live = socket.create_connection(("127.0.0.1", pub_keep), timeout=20)  # through a mapping that stays
    live.sendall(b"ping")
    assert live.recv(4) == b"ping"
    conf = next(p.tmp.glob("client-*.toml"))
    conf.write_text(p.client_config() + tcp_mapping("keep", mirror, pub_keep) +
                    tcp_mapping("new", echo_server.port, pub_new))
    p.client.popen.send_signal(signal.SIGHUP)
    p.client.wait_log("mapping 'new' published")
    p.server.wait_log("mapping 'old' of client alice withdrawn")
    assert through(pub_new, b"fresh").decode().startswith("got 5 ")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", pub_old), timeout=5)
    live.sendall(b"pong")  # the link and this connection were not touched
    assert live.recv(4) == b"pong"
    live.close()
    assert p.client.log().count("is up (attempt") == 1


def http_mapping(name: str, local: int, domain: str) -> str:
    return f'[[mappings]]\nname = "{name}"\nmode = "http"\nlocal_addr = "127.0.0.1:{local}"\ndomain = "{domain}"\n'


def host_get(port: int, host: str, path: str = "/whoami", sock: socket.socket | None = None):
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head, body = read_response(s)
    if sock is None:
        s.close()
    return head, body


def test_http_mappings_routed_by_host(pair, origin, origin_b):
    web = free_port()
    p = pair(start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"\n'
                                              '[[center.users]]\nusername = "bob"\npassword = "b0b"')
    p.client = p.start_client(tail=http_mapping("app", origin.port, "app.test") +
                              http_mapping("wild", origin_b.port, "*.wild.test"))
    p.client.wait_log("mapping 'wild' published")
    wait_port(web)
    assert host_get(web, "app.test")[1] == b"origin-A"
    assert host_get(web, "x.y.wild.test:8080")[1] == b"origin-B"  # wildcard, port ignored
    assert origin.last_headers["X-Forwarded-For"] == "127.0.0.1"
    assert origin.last_headers["X-Forwarded-Proto"] == "http"
    # the client's own X-Forwarded-For is extended, its X-Forwarded-Proto replaced, the rest as sent
    with socket.create_connection(("127.0.0.1", web), timeout=20) as s:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 10.0.0.1\r\n"
                  b"X-Forwarded-Proto: https\r\nX-Custom: as sent\r\n\r\n")
        assert read_response(s)[1] == b"origin-A"
    assert origin.last_headers["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert origin.last_headers["X-Forwarded-Proto"] == "http" and origin.last_headers["X-Custom"] == "as sent"
    r = curl("--resolve", f"app.test:{web}:127.0.0.1", f"http://app.test:{web}/hello")
    assert r.stdout == b"hello from origin-A"
    # one keep-alive connection, each request to the host it names
    with socket.create_connection(("127.0.0.1", web), timeout=20) as s:
        assert host_get(web, "app.test", sock=s)[1] == b"origin-A"
        assert host_get(web, "b.wild.test", sock=s)[1] == b"origin-B"
        assert host_get(web, "app.test", sock=s)[1] == b"origin-A"
    head, body = host_get(web, "nobody.test")
    assert head.startswith(b"HTTP/1.1 404") and b"nobody.test" in body
    # a second client may not take the domain
    p.proxy = free_port()
    other = p.start_client(tail=http_mapping("steal", origin_b.port, "app.test"), user="bob", password="b0b")
    other.wait_log("mapping 'steal' refused by the server: domain app.test is already held by client alice")
    p.server.wait_log("mapping 'steal' of client bob refused: domain app.test is already held by client alice")
    # the owner goes offline: its host answers 502, then it comes back
    p.client.stop()
    p.server.wait_log("mapping 'app' of client alice withdrawn")
    head, _ = host_get(web, "app.test")
    assert head.startswith(b"HTTP/1.1 502")
    p.proxy = free_port()
    back = p.start_client(tail=http_mapping("app", origin.port, "app.test"))
    back.wait_log("mapping 'app' published")
    assert host_get(web, "app.test")[1] == b"origin-A"


def test_proxy_mapping_exits_from_the_client(pair, origin):
    pub = free_port()
    p = pair(start_client=False)
    p.client = p.start_client(tail=f'[[mappings]]\nname = "exit"\nmode = "proxy"\n'
                                   f'remote_bind = "127.0.0.1:{pub}"\nusername = "u"\npassword = "pw"\n')
    p.client.wait_log("mapping 'exit' published")
    url = f"http://localhost:{origin.port}/whoami"
    assert curl("-x", f"socks5h://u:pw@127.0.0.1:{pub}", url).stdout == b"origin-A"
    assert curl("-x", f"http://u:pw@127.0.0.1:{pub}", url).stdout == b"origin-A"
    r = curl("-x", f"http://127.0.0.1:{pub}", "-o", "/dev/null", "-w", "%{http_code}", url)
    assert r.stdout == b"407"  # the mapping's own credentials, asked by the client's proxy
    p.client.wait_log('"GET http://localhost:')  # served by the client, not the server


def test_http_mapping_keeps_its_stream_across_keep_alive_requests(pair, origin):
    """A keep-alive connection's requests to one mapping share a stream and the service's
    connection; when the service closes it (here after two requests, with no warning) the next
    request goes on a new one, and a request to another mapping in between gets its own."""
    accepted = []

    def twice_then_close(conn):
        accepted.append(conn)
        n = len(accepted)
        buf = b""
        for i in range(2):
            head, buf = next_head(conn, buf)
            if head is None:
                return
            body = f"conn{n}-req{i + 1}".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    service = TcpServer(twice_then_close)
    web, cport = free_port(), free_port()
    p = pair(start_client=False, server_top=f'control = "127.0.0.1:{cport}"',
             server_extra=f'map_http_bind = "127.0.0.1:{web}"')
    p.client = p.start_client(tail=http_mapping("svc", service.port, "svc.test") +
                              http_mapping("other", origin.port, "other.test"))
    p.client.wait_log("mapping 'other' published")
    wait_port(web)
    try:
        with socket.create_connection(("127.0.0.1", web), timeout=20) as s:
            bodies = [host_get(web, "svc.test", sock=s)[1] for _ in range(3)]
            bodies.append(host_get(web, "other.test", sock=s)[1])
            bodies += [host_get(web, "svc.test", sock=s)[1] for _ in range(2)]
        assert bodies == [b"conn1-req1", b"conn1-req2", b"conn2-req1", b"origin-A", b"conn3-req1", b"conn3-req2"]
        assert len(accepted) == 3
    finally:
        service.close()
    # each request in the shared listener's duration histogram (/status, /metrics)
    st = json.loads(control(cport, "GET", "/status")[1])
    (row,) = [r for r in st["listeners"] if r["kind"] == "map-http"]
    assert row["request_seconds"]["count"] == 6 and row["request_seconds"]["buckets"]["+Inf"] == 6


def test_http_mapping_skips_interim_responses(pair, early_hints):
    """A 103 from the service is not taken for the final response (it used to be passed on as
    if final, with the real answer left for the next request)."""
    web = free_port()
    p = pair(start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"')
    p.client = p.start_client(tail=http_mapping("svc", early_hints.port, "svc.test"))
    p.client.wait_log("mapping 'svc' published")
    wait_port(web)
    with socket.create_connection(("127.0.0.1", web), timeout=20) as s:
        for _ in range(2):
            head, body = host_get(web, "svc.test", sock=s)
            assert head.startswith(b"HTTP/1.1 200") and body == b"after hints", head


def test_http_mapping_service_that_answers_garbage_or_nothing_gets_502_and_a_log_line(pair):
    """The mapped service sends 70 KiB without a head end, or closes without a byte: the public
    client gets 502 at once (not a hang), the server logs one line saying which stream, and the
    next request is served."""
    def service(conn):
        head = conn.recv(65536)
        if b"/garbage" in head:
            conn.sendall(b"x" * (70 << 10))
        elif b"/ok" in head:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    svc = TcpServer(service)
    web = free_port()
    p = pair(start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"')
    try:
        p.client = p.start_client(tail=http_mapping("svc", svc.port, "svc.test"))
        p.client.wait_log("mapping 'svc' published")
        wait_port(web)
        head, body = host_get(web, "svc.test", "/garbage")
        assert head.startswith(b"HTTP/1.1 502") and b"within 65536 bytes" in body, (head, body)
        line = p.server.wait_log("502 the mapped service (stream")
        assert "GET svc.test/garbage" in line and "of alice) did not answer" in line
        head, body = host_get(web, "svc.test", "/nothing")
        assert head.startswith(b"HTTP/1.1 502"), head
        p.server.wait_log("GET svc.test/nothing: 502 the mapped service")
        assert host_get(web, "svc.test", "/ok")[1] == b"ok"
    finally:
        svc.close()


def test_http_mapping_header_rules(pair, origin):
    web = free_port()
    p = pair(start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"')
    rules = '["proxy + X-Real-IP {client_ip}", "proxy X-Seen-Host {host}", "- Server", "+ X-Via \'wm proxy\'"]'
    p.client = p.start_client(tail=http_mapping("app", origin.port, "app.test") + f"headers = {rules}\n")
    p.client.wait_log("mapping 'app' published")
    wait_port(web)
    head, body = host_get(web, "app.test")
    assert body == b"origin-A"
    assert origin.last_headers["X-Real-IP"] == "127.0.0.1" and origin.last_headers["X-Seen-Host"] == "app.test"
    lower = head.lower()
    assert b"\r\nserver:" not in lower and b"\r\nx-via: wm proxy" in lower


def test_https_mappings_terminated_with_sni_certificates(pair, origin, origin_b, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "map-ca.pem"))
    for name, host in (("app", "app.test"), ("wild", "*.wild.test")):
        write_cert(ca, tmp_path, name, host)
    web = free_port()
    p = pair(start_client=False, server_extra=(
        f'map_https_bind = "127.0.0.1:{web}"\n'
        f'map_cert = ["{tmp_path}/app.pem", "{tmp_path}/wild.pem"]\n'
        f'map_key = ["{tmp_path}/app.key", "{tmp_path}/wild.key"]'))
    p.client = p.start_client(tail=http_mapping("app", origin.port, "app.test").replace('"http"', '"https"') +
                              http_mapping("wild", origin_b.port, "*.wild.test").replace('"http"', '"https"'))
    p.client.wait_log("mapping 'wild' published")
    wait_port(web)
    ca_file = str(tmp_path / "map-ca.pem")
    r = curl("--cacert", ca_file, "--resolve", f"app.test:{web}:127.0.0.1", f"https://app.test:{web}/whoami")
    assert r.stdout == b"origin-A", r.stderr
    assert origin.last_headers["X-Forwarded-Proto"] == "https"
    r = curl("--cacert", ca_file, "--resolve", f"a.wild.test:{web}:127.0.0.1", f"https://a.wild.test:{web}/whoami")
    assert r.stdout == b"origin-B", r.stderr  # the wildcard certificate was chosen by SNI


def passthrough_mapping(name: str, local: int, domain: str) -> str:
    return (f'[[mappings]]\nname = "{name}"\nmode = "https"\ntls_passthrough = true\n'
            f'local_addr = "127.0.0.1:{local}"\ndomain = "{domain}"\n')


def test_https_passthrough_beside_terminated_mappings(pair, origin, tls_origin, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "map-ca.pem"))
    write_cert(ca, tmp_path, "app", "app.test")
    web, cport = free_port(), free_port()
    p = pair(start_client=False, server_top=f'control = "127.0.0.1:{cport}"', server_extra=(
        f'map_https_bind = "127.0.0.1:{web}"\nmap_cert = ["{tmp_path}/app.pem"]\nmap_key = ["{tmp_path}/app.key"]'))
    p.client = p.start_client(tail=http_mapping("app", origin.port, "app.test").replace('"http"', '"https"') +
                              passthrough_mapping("private-tls", tls_origin.port, "localhost"))
    p.client.wait_log("mapping 'private-tls' published")
    wait_port(web)
    # TLS ends at the service: the certificate is the origin's own (its CA, not the server's)
    r = curl("--cacert", str(tls_origin.ca_file), f"https://localhost:{web}/whoami")
    assert r.stdout == b"origin-TLS", r.stderr
    p.server.wait_log("map-https SNI localhost passed through to alice")
    # the same port still ends TLS for app.test, and a Host of the passthrough name gets 421 there
    r = curl("--cacert", str(tmp_path / "map-ca.pem"), "--resolve", f"app.test:{web}:127.0.0.1",
             f"https://app.test:{web}/whoami")
    assert r.stdout == b"origin-A", r.stderr
    r = curl("--cacert", str(tmp_path / "map-ca.pem"), "--resolve", f"app.test:{web}:127.0.0.1", "-H",
             "Host: localhost", "-o", "/dev/null", "-w", "%{http_code}", f"https://app.test:{web}/whoami")
    assert r.stdout == b"421"
    st = json.loads(control(cport, "GET", "/status")[1])
    assert {m["name"]: m["mode"] for m in st["mappings"]} == {"app": "https", "private-tls": "https passthrough"}
    # the client goes: the passthrough name's connections are closed, nothing is answered in its place
    p.client.stop()
    p.server.wait_log("mapping 'private-tls' of client alice withdrawn")
    assert curl("--cacert", str(tls_origin.ca_file), f"https://localhost:{web}/whoami").returncode != 0


def test_passthrough_only_server_without_map_cert(pair, tls_origin):
    web = free_port()
    p = pair(start_client=False, server_extra=f'map_https_bind = "127.0.0.1:{web}"')
    p.client = p.start_client(tail=passthrough_mapping("private-tls", tls_origin.port, "localhost") +
                              http_mapping("ended", 1, "ended.test").replace('"http"', '"https"'))
    p.client.wait_log("mapping 'private-tls' published")
    p.client.wait_log("mapping 'ended' refused by the server: this server has no map_cert (nor map_acme) to end TLS with")
    wait_port(web)
    for _ in range(3):  # several connections, each relayed on its own stream
        r = curl("--cacert", str(tls_origin.ca_file), f"https://localhost:{web}/whoami")
        assert r.stdout == b"origin-TLS", r.stderr
    r = curl("-k", "--resolve", f"other.test:{web}:127.0.0.1", f"https://other.test:{web}/")
    assert r.returncode != 0  # an unknown SNI is closed
    p.server.wait_log("no tls_passthrough mapping for SNI 'other.test'")


def test_http_mapping_passes_a_websocket_upgrade(pair):
    """A real websocket echo server (websockets) behind an http mapping, a real client."""
    from websockets.sync.client import connect

    server = websocket_echo()
    web = free_port()
    try:
        p = pair(start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"')
        p.client = p.start_client(tail=http_mapping("ws", server.socket.getsockname()[1], "ws.test"))
        p.client.wait_log("mapping 'ws' published")
        wait_port(web)
        sock = socket.create_connection(("127.0.0.1", web), timeout=20)
        with connect(f"ws://ws.test:{web}/chat", sock=sock, open_timeout=20, max_size=None) as ws:
            for i in range(20):
                ws.send(f"text {i}")
                assert ws.recv(timeout=20) == f"text {i}"
            blob = os.urandom(1 << 20)
            ws.send(blob)
            assert ws.recv(timeout=20) == blob
        p.server.wait_log(f"map-http GET ws.test:{web}/chat 101 upgraded to websocket, done")
    finally:
        server.shutdown()


def udp_mapping(name: str, local: int, remote: int) -> str:
    return (f'[[mappings]]\nname = "{name}"\nmode = "udp"\nlocal_addr = "127.0.0.1:{local}"\n'
            f'remote_bind = "127.0.0.1:{remote}"\n')


def udp_ask(s: socket.socket, port: int, data: bytes, expect: bytes, mine: bytes, errors: list) -> bool:
    """Send ``data`` to the public port (again on loss) until ``expect`` comes back; an answer
    that does not start with ``mine`` is another peer's (cross-talk)."""
    for _ in range(10):
        s.sendto(data, ("127.0.0.1", port))
        try:
            while True:
                got = s.recv(65535)
                if got == expect:
                    return True
                if not got.startswith(mine):
                    errors.append(f"got another peer's datagram {got[:16]!r}")
        except socket.timeout:
            continue
    return False


@pytest.mark.timeout(180)
def test_udp_mapping_through_the_link(pair, udp_echo, echo_server):
    echo = udp_echo(b"U:")
    cport, pub = free_port(), free_port()
    p = pair(server_top=f'control = "127.0.0.1:{cport}"', server_extra='udp_timeout = "1s"', start_client=False)
    # a tcp mapping may take the same port number: TCP and UDP ports are separate
    p.client = p.start_client(tail=udp_mapping("dgram", echo.port, pub) + tcp_mapping("same-port", echo_server.port,
                                                                                     pub))
    p.wait_link()
    p.client.wait_log("mapping 'dgram' published")
    p.client.wait_log("mapping 'same-port' published")
    errors: list[str] = []

    def peer(n: int) -> None:
        rng = random.Random(n)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            for i in range(40):
                head = f"{n}:{i}:".encode()
                data = head + rng.randbytes(rng.choice((0, 16, 1200, 8000, 30000, 60000)))
                if not udp_ask(s, pub, data, b"U:" + data, f"U:{n}:".encode(), errors):
                    errors.append(f"peer {n} datagram {i} ({len(data)} bytes): no answer")

    threads = [threading.Thread(target=peer, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert through(pub, b"tcp too").decode().startswith("got 7 ")
    st = json.loads(control(cport, "GET", "/status")[1])
    modes = {m["name"]: (m["mode"], m["connections_total"]) for m in st["mappings"]}
    assert modes["dgram"] == ("udp", 20) and modes["same-port"][0] == "tcp"
    # idle peers expire on the server, which ends their streams on the client
    p.server.wait_log("session expired", timeout=10)
    p.client.wait_log("udp session done (the server ended the session)", timeout=10)
    # the link goes: no answers; it comes back: answers again, without restarting the server
    p.client.stop()
    p.server.wait_log("mapping 'dgram' of client alice withdrawn")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        assert not udp_ask(s, pub, b"9:down", b"U:9:down", b"U:9:", errors)
        p.proxy = free_port()
        back = p.start_client(tail=udp_mapping("dgram", echo.port, pub))
        back.wait_log("mapping 'dgram' published")
        assert udp_ask(s, pub, b"9:up", b"U:9:up", b"U:9:", errors)
    assert errors == []


def test_tunnels_relayed_by_callbacks_count_against_the_limit_and_the_grace(pair, mirror):
    """Through the link a tunnel's handler returns while a callback relay carries it on: it
    still counts against max_connections, is logged when it ends, and when a reload removes
    its listener it lives on through the grace period and is closed after it."""
    p = pair(start_client=False)
    p.client = p.start_client(tail="max_connections = 2\n")
    p.wait_link()
    first, second = tunnel(p.proxy, "socks5", mirror), tunnel(p.proxy, "socks5", mirror)
    for s in (first, second):
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"  # (one segment on loopback)
    third = socket.create_connection(("127.0.0.1", p.proxy), timeout=10)
    third.sendall(b"\x05\x01\x00")
    third.settimeout(1)
    with pytest.raises(socket.timeout):  # two live tunnels: the third waits to be accepted
        third.recv(2)
    first.close()
    third.settimeout(10)
    assert third.recv(2) == b"\x05\x00"  # one ended: accepted now
    p.client.wait_log("done (eof)")
    third.close()
    conf = next(p.tmp.glob("client-*.toml"))
    conf.write_text(conf.read_text().replace(f"127.0.0.1:{p.proxy}", f"127.0.0.1:{free_port()}"))
    p.client.popen.send_signal(signal.SIGHUP)
    p.client.wait_log("reloaded")
    second.sendall(b"still")
    assert second.recv(5) == b"still"  # the old listener's live tunnel goes on (grace 2s) ...
    p.client.wait_log("removed; closed 1 connection(s) still open after the grace period", timeout=10)
    second.settimeout(5)
    assert second.recv(10) == b""  # ... and is closed after it


def test_a_cut_link_resets_the_public_connections_of_its_streams(pair):
    """A close-delimited HTTP/1.0 answer through a tcp mapping, and the center client dies in
    the middle of it: the public client must see a reset, not an orderly end that would pass
    for the whole answer."""
    def service(conn):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart of the answer")
        time.sleep(20)

    server = TcpServer(service)
    pub = free_port()
    p = pair(start_client=False)
    p.client = p.start_client(tail=tcp_mapping("web", server.port, pub))
    p.client.wait_log("mapping 'web' published")
    with socket.create_connection(("127.0.0.1", pub), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        got = b""
        while b"part of the answer" not in got:
            got += s.recv(65536)
        p.client.popen.kill()  # the link dies under the stream
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass
    server.close()


def _link_login(p: "Pair", password: str, proof: str | None = None) -> bytes:
    """One raw TLS link handshake with ``password`` (or ``proof`` as it is): the server's
    answer to TOKEN (b'' when it closed without one)."""
    from wmproxy.prot import frame as fr

    context = ssl.create_default_context(cafile=str(p.certs / "ca.pem"))
    with socket.create_connection(("127.0.0.1", p.center), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="center.test") as s:
                hello = s.recv(8 + 17)
                if not hello:
                    return b""
                nonce = fr.decode_hello(hello[8:])[1]
                token = fr.encode_token("alice", fr.proof(password, nonce) if proof is None else proof)
                s.sendall(fr.encode_header(len(token), fr.Kind.TOKEN, 0, 0) + token)
                return s.recv(64)
        except (ssl.SSLError, OSError):
            return b""


def test_failed_link_logins_are_throttled(pair):
    p = pair(start_client=False, server_extra='auth_fail_limit = 3\nauth_fail_window = "3s"')
    for _ in range(3):
        assert b"auth failed" in _link_login(p, "wrong")
    assert _link_login(p, "s3cret") == b""  # refused unheard, the right password too
    p.server.wait_log("3 failed logins from 127.0.0.1")
    time.sleep(3.1)
    answer = _link_login(p, "s3cret")
    assert answer[:8] == b"\x00\x00\x00\x04\x01\x00\x00\x00", answer  # TOKEN+ACK


def test_a_proof_that_is_not_ascii_is_a_failed_login(pair):
    """A stranger's TOKEN proof is any UTF-8 text: one past ASCII made compare_digest raise
    TypeError, an internal error per connection that escaped the login throttle. Now it is a
    failed login like any wrong proof: answered, counted, throttled."""
    p = pair(start_client=False, server_extra='auth_fail_limit = 3\nauth_fail_window = "30s"')
    for proof in ("\u00e9" * 64, "\u0669" * 10, "a\u2028b"):
        assert b"auth failed" in _link_login(p, "", proof), proof
    assert _link_login(p, "s3cret") == b""  # refused unheard: the three counted
    log = p.server.wait_log("3 failed logins from 127.0.0.1")
    assert "Traceback" not in log and "TypeError" not in log, log


def test_a_link_handshake_trickled_byte_by_byte_is_cut_at_its_deadline(pair):
    """Slowloris on the center port: a TOKEN sent a byte every 0.5 s never leaves a read idle
    for the handshake timeout (10 s), so only the handshake's deadline can cut it."""
    from wmproxy.prot import frame as fr

    p = pair(start_client=False, server_extra="tls = false")
    with socket.create_connection(("127.0.0.1", p.center), timeout=15) as s:
        hello = s.recv(64)
        nonce = fr.decode_hello(hello[8:])[1]
        token = fr.encode_token("alice", fr.proof("s3cret", nonce))
        frame = fr.encode_header(len(token), fr.Kind.TOKEN, 0, 0) + token
        started = time.monotonic()
        closed = False
        for i in range(len(frame) - 1):  # never the whole frame
            try:
                s.sendall(frame[i:i + 1])
            except OSError:
                closed = True
                break
            time.sleep(0.5)
            s.setblocking(False)
            try:
                if s.recv(64) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            finally:
                s.setblocking(True)
            if time.monotonic() - started > 14:
                break
        took = time.monotonic() - started
    assert closed and took < 12.5, took
    p.server.wait_log("center link handshake not complete within 10s")


def test_http_mapping_head_trickled_is_cut_at_its_deadline(pair):
    """map_http_bind faces the public: a head trickled a byte every 0.25 s is cut once
    [proxy] handshake_timeout has passed since the connection began (408)."""
    web = free_port()
    pair(start_client=False, server_top=f'[proxy]\nbind = "127.0.0.1:{free_port()}"\nhandshake_timeout = "1s"',
         server_extra=f'map_http_bind = "127.0.0.1:{web}"')
    wait_port(web)
    head = b"GET / HTTP/1.1\r\nHost: a.test\r\n" + b"X-Pad: y\r\n" * 10 + b"\r\n"
    answer, took = drip(web, [head[i:i + 1] for i in range(len(head))])
    assert answer.startswith(b"HTTP/1.1 408 ") and took < 3.0, (answer, took)
