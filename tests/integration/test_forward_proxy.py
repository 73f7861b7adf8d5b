"""The forward proxy with real clients: curl, requests+PySocks, raw sockets."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time

import pytest
import requests

from conftest import TcpServer, curl, mirror_check, next_head, read_response, recv_all, tunnel

from wmproxy.prot import http1


def test_http_proxy_get(start_proxy, origin):
    p = start_proxy()
    r = curl("-x", p.url, f"http://127.0.0.1:{origin.port}/hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from origin-A"
    assert "Via" in origin.last_headers and "wmproxy" in origin.last_headers["Via"]
    p.wait_log('"GET http://127.0.0.1:')


def test_python_head_readers_serve_alike_and_say_so(start_proxy, origin):
    """WMPROXY_NO_SPEEDUPS=1 (or no C build) runs the Python head readers: the same answers, and
    a line at start that says the C ones are not in use (none where they are)."""
    p = start_proxy(env={"WMPROXY_NO_SPEEDUPS": "1"})
    r = curl("-x", p.url, f"http://127.0.0.1:{origin.port}/hello")
    assert r.returncode == 0 and r.stdout == b"hello from origin-A", r.stderr
    p.wait_log("C speedups of the HTTP head readers are not in use (WMPROXY_NO_SPEEDUPS is set)")
    q = start_proxy()  # with this test's own environment: the line exactly when C is not in use here
    assert curl("-x", q.url, f"http://127.0.0.1:{origin.port}/hello").stdout == b"hello from origin-A"
    log = q.wait_log('"GET http://127.0.0.1:')  # (after the lines written at start)
    assert ("C speedups of the HTTP head readers are not in use" in log) == (not http1.SPEEDUPS)


def test_connect_to_tls_origin(start_proxy, tls_origin):
    p = start_proxy()
    r = curl("--cacert", str(tls_origin.ca_file), "-x", p.url, f"https://localhost:{tls_origin.port}/hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from origin-TLS"




def test_socks5_ipv6_target(start_proxy, origin6):
    p = start_proxy()
    r = curl("--socks5", f"127.0.0.1:{p.port}", f"http://[::1]:{origin6.port}/hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from origin-v6"
    p.wait_log(f"[::1]:{origin6.port}")


def test_http_proxy_ipv6_target(start_proxy, origin6):
    p = start_proxy()
    r = curl("-x", p.url, f"http://[::1]:{origin6.port}/whoami")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"origin-v6"


@pytest.mark.parametrize("option,host", [("--socks5-hostname", "localhost"), ("--socks5", "127.0.0.1"),
                                         ("--socks4a", "localhost"), ("--socks4", "127.0.0.1")])
def test_socks_with_curl(start_proxy, origin, option, host):
    p = start_proxy()
    r = curl(option, f"127.0.0.1:{p.port}", f"http://{host}:{origin.port}/hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from origin-A"


def test_requests_through_pysocks(start_proxy, origin):
    p = start_proxy()
    for scheme in ("socks5h", "socks5", "socks4a", "http"):
        proxies = {"http": f"{scheme}://127.0.0.1:{p.port}"}
        r = requests.get(f"http://localhost:{origin.port}/whoami", proxies=proxies, timeout=10)
        assert r.status_code == 200 and r.text == "origin-A", scheme


def test_keep_alive_each_request_to_its_own_host(start_proxy, origin, origin_b):
    p = start_proxy()
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        for srv, expected in ((origin, b"origin-A"), (origin_b, b"origin-B"), (origin, b"origin-A")):
            s.sendall(f"GET http://127.0.0.1:{srv.port}/whoami HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head, body = read_response(s)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert body == expected
        # and a second request to the same host reuses the upstream connection fine
        s.sendall(f"GET http://127.0.0.1:{origin.port}/whoami HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_response(s)[1] == b"origin-A"


def test_request_headers_go_on_as_sent_or_rebuilt(start_proxy, origin):
    """Lines with nothing to drop go on as they came (Via added), a Host line other than the
    URL's set to it in its place; otherwise the list is built again: Host from the URL first,
    hop-by-hop headers and those Connection names gone."""
    p = start_proxy()
    url = f"http://127.0.0.1:{origin.port}/headers"
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(f"GET {url} HTTP/1.1\r\nX-First: 1\r\nHost: 127.0.0.1:{origin.port}\r\nX-Two: a  b\r\n\r\n".encode())
        head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert body.decode().split("\n") == ["X-First: 1", f"Host: 127.0.0.1:{origin.port}", "X-Two: a  b",
                                             "Via: 1.1 wmproxy"]
        s.sendall(f"GET {url} HTTP/1.1\r\nX-First: 1\r\nHost: proxy.test:8090\r\nX-Two: a  b\r\n\r\n".encode())
        head, body = read_response(s)
        assert body.decode().split("\n") == ["X-First: 1", f"Host: 127.0.0.1:{origin.port}", "X-Two: a  b",
                                             "Via: 1.1 wmproxy"]
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: elsewhere\r\nConnection: X-Secret\r\nX-Secret: s\r\n"
                  f"Proxy-Connection: keep-alive\r\nX-Two: 2\r\n\r\n".encode())
        head, body = read_response(s)
        assert body.decode().split("\n") == [f"Host: 127.0.0.1:{origin.port}", "X-Two: 2", "Via: 1.1 wmproxy"]


def test_http10_client_and_chunked_response(start_proxy, origin):
    p = start_proxy()
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(f"GET http://127.0.0.1:{origin.port}/chunked HTTP/1.0\r\n\r\n".encode())
        answer = recv_all(s)  # a 1.0 client gets the body de-chunked, ended by close
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0]
    assert b"chunked" not in head.lower()
    assert body == b"hello chunked world"
    r = curl("-x", p.url, f"http://127.0.0.1:{origin.port}/chunked")  # a 1.1 client keeps chunks
    assert r.stdout == b"hello chunked world"


def test_chunked_request_body(start_proxy, origin):
    p = start_proxy()
    data = bytes(range(256)) * 1000
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        req = (f"POST http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode()
        for i in range(0, len(data), 7000):
            piece = data[i:i + 7000]
            req += b"%x\r\n%s\r\n" % (len(piece), piece)
        s.sendall(req + b"0\r\n\r\n")
        _, body = read_response(s)
    assert body.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def test_bodies_by_length_on_one_connection_then_close(start_proxy, origin):
    """POST and PUT bodies framed by Content-Length, HEAD and GET, on one kept connection; a
    request with Connection: close gets its answer and then the close."""
    p = start_proxy()
    url = f"http://127.0.0.1:{origin.port}"
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        for method, size in (("POST", 70_000), ("PUT", 1), ("POST", 0)):
            body = random.randbytes(size)
            s.sendall(f"{method} {url}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode() + body)
            head, answer = read_response(s)
            assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower(), head
            assert answer.decode() == f"{size} {hashlib.sha256(body).hexdigest()}"
        s.sendall(f"HEAD {url}/hello HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 200") and b"via: 1.1 wmproxy" in head.lower(), head
        s.sendall(f"GET {url}/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = recv_all(s)  # ends: the proxy closes after it
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\nconnection: close\r\n" in answer.lower()
    assert answer.endswith(b"\r\n\r\nhello from origin-A")


def test_interim_responses_reach_http11_clients_only(start_proxy, early_hints):
    """A 103 before the final response is passed on to an HTTP/1.1 client (which then gets the
    200 on the same kept connection), and left out for an HTTP/1.0 one (RFC 9110 15.2)."""
    p = start_proxy()
    url = f"http://127.0.0.1:{early_hints.port}/"
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        for _ in range(2):
            s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while not data.endswith(b"after hints"):
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            interim, _, final = data.partition(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 103 ") and b"</style.css>" in interim, data
            assert final.startswith(b"HTTP/1.1 200 "), data
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(f"GET {url} HTTP/1.0\r\n\r\n".encode())
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 200 ") and b"103" not in data and data.endswith(b"\r\n\r\nafter hints"), data


def test_upstream_closing_a_kept_connection(start_proxy):
    """An origin that closes its kept connection between requests (its idle timeout): the next
    request goes on a new connection, unseen by the client. The close was seen while the
    connection waited (its watcher), so even a request with a body, which is never sent twice,
    goes on a new connection and is sent once."""
    seen = []

    def serve(conn):  # one request per connection, answered as if the connection stayed open
        head, _ = next_head(conn, b"")
        if head is not None:
            seen.append(head.split(b"\r\n")[0])
            body = b"answer %d" % len(seen)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    server = TcpServer(serve)
    try:
        p = start_proxy()
        url = f"http://127.0.0.1:{server.port}/"
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            for n in (1, 2):
                s.sendall(f"GET {url}n{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head, body = read_response(s)
                assert head.startswith(b"HTTP/1.1 200 ") and body == b"answer %d" % n, (head, body)
                time.sleep(0.3)  # the origin has closed that connection by now
            s.sendall(f"POST {url}body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".encode())
            head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"answer 3", (head, body)
        assert seen == [b"GET /n1 HTTP/1.1", b"GET /n2 HTTP/1.1", b"POST /body HTTP/1.1"]
    finally:
        server.close()


def test_hop_by_hop_headers_removed(start_proxy, origin):
    p = start_proxy()
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall((f"GET http://127.0.0.1:{origin.port}/headers HTTP/1.1\r\nHost: x\r\n"
                   "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n"
                   "Proxy-Connection: keep-alive\r\nX-End: kept\r\n\r\n").encode())
        _, body = read_response(s)
    seen = body.decode().lower()
    assert "x-end: kept" in seen
    assert f"host: 127.0.0.1:{origin.port}" in seen  # Host comes from the absolute URL
    for gone in ("x-secret", "keep-alive", "proxy-connection"):
        assert gone not in seen, gone


def test_upstream_refused_gives_502_and_dns_failure_502(start_proxy):
    p = start_proxy()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    r = curl("-x", p.url, "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/")
    assert r.stdout == b"502"
    r = curl("-x", p.url, "-w", "%{http_code}", "http://no-such-host.invalid/")
    assert r.stdout.endswith(b"502") and b"no-such-host.invalid" in r.stdout


def test_upstream_timeout_gives_504(start_proxy, origin):
    p = start_proxy(config="log_level = 'info'\n[proxy]\nbind = '127.0.0.1:{port}'\nidle_timeout = '1s'\n")
    r = curl("-x", p.url, "-w", "%{http_code}", f"http://127.0.0.1:{origin.port}/slow")
    assert r.stdout.endswith(b"504"), r.stdout


@pytest.mark.timeout(180)
def test_large_upload_and_download_sha256(start_proxy, origin, big_blob, tmp_path):
    p = start_proxy()
    origin.big = big_blob
    want = hashlib.sha256(big_blob).hexdigest()
    for how in (["-x", p.url], ["-p", "-x", p.url], ["--socks5-hostname", f"127.0.0.1:{p.port}"]):
        out = tmp_path / "down"
        r = curl(*how, "-o", str(out), f"http://localhost:{origin.port}/big", timeout=60)
        assert r.returncode == 0, (how, r.stderr)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want, how
    src = tmp_path / "up"
    src.write_bytes(big_blob)
    r = curl("-x", p.url, "--data-binary", f"@{src}", f"http://127.0.0.1:{origin.port}/upload", timeout=60)
    assert r.stdout.decode() == f"{len(big_blob)} {want}"


@pytest.mark.parametrize("how", ["connect", "socks5"])
def test_half_close_passes_through(start_proxy, echo_server, how):
    p = start_proxy()
    s = tunnel(p.port, how, echo_server.port)
    payload = b"x" * 300_000
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)  # our side is done; the answer must still arrive in full
    answer = recv_all(s)
    s.close()
    assert answer.decode() == f"got {len(payload)} {hashlib.sha256(payload).hexdigest()}"


@pytest.mark.timeout(180)
def test_100_concurrent_tunnels_both_ways(start_proxy, mirror):
    """Tunnels relayed by callbacks (splice, no greenlet each): 100 at once through CONNECT and
    SOCKS5, each sending 0.5-3 MB to a mirror while reading the echo, all sha256-checked; the
    proxy logs each one's end."""
    p = start_proxy()
    rng = random.Random(7)
    jobs = [("connect" if i % 2 else "socks5", rng.randrange(1 << 19, 3 << 20)) for i in range(100)]
    errors = []

    def one(how: str, size: int) -> None:
        try:
            if wrong := mirror_check(tunnel(p.port, how, mirror), size):
                errors.append(f"{how} {wrong}")
        except (OSError, AssertionError) as e:
            errors.append(f"{how} {size}: {e!r}")

    threads = [threading.Thread(target=one, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert errors == []
    deadline = time.monotonic() + 10
    while (ended := p.log().count("done (eof)")) < 100 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ended == 100
