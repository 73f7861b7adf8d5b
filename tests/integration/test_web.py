"""[http]: servers and locations, the reverse proxy (upstreams, pools, health, websocket) and
static files, with curl, raw sockets, nginx as a real upstream and the websockets package."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from wmproxy import config
from wmproxy.errors import ConfigError
from conftest import (TcpServer, curl, free_port, next_head, read_response, recv_all, wait_port, websocket_echo,
                      write_cert)
from test_center import http_mapping


def web(start_proxy, body: str) -> tuple:
    """wmproxy-server with an [http] config; '{port}' in it is the listener's port."""
    p = start_proxy(config=body, bind=False)
    return p, p.port


def get(port: int, path: str, host: str = "a.test", headers: str = "", method: str = "GET",
        sock: socket.socket | None = None) -> tuple[bytes, bytes]:
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
        if method == "HEAD":
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            return data.split(b"\r\n\r\n")[0] + b"\r\n\r\n", b""
        return read_response(s)
    finally:
        if sock is None:
            s.close()


def header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


ROUTING = """
[[http.server]]
bind = "127.0.0.1:{port}"
server_name = ["a.test", "*.wild.test"]
headers = ["X-Served-By wmproxy", "- X-Powered-By"]
[[http.server.location]]
rule = "= /exact"
static_response = "exact"
[[http.server.location]]
rule = "/files/"
static_response = "prefix /files/"
[[http.server.location]]
rule = "^~ /files/stop/"
static_response = "prefix-stop"
[[http.server.location]]
rule = "~* \\\\.PNG$"
static_response = "regex png"
[[http.server.location]]
rule = "/"
static_response = "hello {client_ip} at {host} for {url}"
[[http.server.location]]
rule = "/old/"
redirect = "https://{host}/new{url}"
status = 301
[[http.server.location]]
rule = "/private/"
deny_ip = ["127.0.0.0/8"]
static_response = "secret"
access_log = "custom {client_ip} {method} {host}{url} -> {status} {bytes}B"

[[http.server]]
bind = "127.0.0.1:{port}"
server_name = "b.test"
[[http.server.location]]
static_response = "server b"
status = 202
"""


def test_servers_by_host_and_locations_like_nginx(start_proxy):
    p, port = web(start_proxy, ROUTING)
    assert get(port, "/exact")[1] == b"exact"
    assert get(port, "/exact/more")[1] == b"hello 127.0.0.1 at a.test for /exact/more"
    assert get(port, "/files/a.txt")[1] == b"prefix /files/"
    assert get(port, "/files/pic.png")[1] == b"regex png"  # a regex beats the longest prefix
    assert get(port, "/files/stop/pic.png")[1] == b"prefix-stop"  # ... unless that prefix is ^~
    assert get(port, "/x.png", host="shop.wild.test")[1] == b"regex png"
    head, body = get(port, "/", host="b.test:8080")  # port ignored
    assert head.startswith(b"HTTP/1.1 202") and body == b"server b"
    assert get(port, "/", host="unknown.test")[1].startswith(b"hello")  # the default server: the first
    head, body = get(port, "/exact")
    assert header(head, "X-Served-By") == "wmproxy"
    head, _ = get(port, "/old/page?x=1")
    assert head.startswith(b"HTTP/1.1 301") and header(head, "Location") == "https://a.test/new/old/page?x=1"
    head, _ = get(port, "/private/x")
    assert head.startswith(b"HTTP/1.1 403")
    p.wait_log("custom 127.0.0.1 GET a.test/private/x -> 403 32B")
    head, body = get(port, "/exact", method="HEAD")
    assert head.startswith(b"HTTP/1.1 200") and header(head, "Content-Length") == "5"
    # keep-alive: several requests on one connection, each routed on its own; an unwanted body is skipped
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /exact HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nabcde")
        assert read_response(s)[1] == b"exact"
        s.sendall(b"POST /exact HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        assert read_response(s)[1] == b"exact"
        assert get(port, "/exact", sock=s)[1] == b"exact"
        assert get(port, "/", host="b.test", sock=s)[1] == b"server b"
        assert get(port, "/files/x", sock=s)[1] == b"prefix /files/"
    p.wait_log('"GET a.test/exact HTTP/1.1" 200 5 "-" "-"')


def test_bad_config_is_named(tmp_path):
    from conftest import ROOT

    conf = tmp_path / "bad.toml"
    for text, where in (('[[http.server]]\nbind = "127.0.0.1:1"\n[[http.server.location]]\nstatic_response = "x"\n'
                         'redirect = "/y"\n', "http.server[0].location[0]"),
                        ('[[http.server]]\nbind = "127.0.0.1:1"\n[[http.server.location]]\nrule = "~ ("\n'
                         'static_response = "x"\n', "http.server[0].location[0].rule"),
                        ('[[http.server]]\nbind = "127.0.0.1:1"\n[[http.server.location]]\n'
                         'file_server = { root = "/no/such/dir" }\n', "http.server[0].location[0].file_server.root"),
                        ('[[http.server]]\nbind = "127.0.0.1:1"\nlisten = 2\n', "http.server[0].listen")):
        conf.write_text(text)
        r = subprocess.run([str(ROOT / "bin/wmproxy-server"), "--check", "-c", str(conf)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 1 and where in r.stderr, r.stderr


# -- reverse proxy ---------------------------------------------------------------------------

class CountingOrigin:
    """An HTTP/1.1 keep-alive origin that names itself and counts its connections."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.connections = 0
        self.headers: list[str] = []
        self.server = TcpServer(self._serve, port=port)
        self.port = self.server.port

    def _serve(self, conn) -> None:
        self.connections += 1
        buf = b""
        while True:
            head, buf = next_head(conn, buf)
            if head is None:
                return
            self.headers.append(head.decode("latin-1"))
            if b"transfer-encoding: chunked" in head.lower():
                while b"\r\n0\r\n\r\n" not in b"\r\n" + buf:
                    buf += conn.recv(65536)
                raw, buf = (b"\r\n" + buf).split(b"\r\n0\r\n\r\n", 1)
                body, rest = b"", raw[2:] + b"\r\n"
                while rest:
                    size_line, rest = rest.split(b"\r\n", 1)
                    n = int(size_line, 16)
                    body, rest = body + rest[:n], rest[n + 2:]
            else:
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
            path = head.split(b" ")[1].decode()
            answer = f"{self.name} {path} {len(body)}".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def origins():
    made = [CountingOrigin("A"), CountingOrigin("B")]
    yield made
    for o in made:
        o.close()


def proxy_config(servers: str, method: str = "round_robin", extra: str = "") -> str:
    return (f'[[http.upstream]]\nname = "app"\nmethod = "{method}"\nserver = [{servers}]\n'
            f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\nrule = "/api/"\n'
            f'proxy_url = "http://app/v1/"\nheaders = ["proxy + X-Tag {{client_ip}}", "X-Answer yes"]\n{extra}')


def test_request_headers_go_upstream_as_sent_or_rebuilt(start_proxy, origin):
    """Without header rules the client's lines go on as they came, X-Forwarded-For, -Proto and
    X-Real-IP added; an X-Forwarded-For of the client's own or a hop-by-hop header makes the
    list be built again (extended, dropped)."""
    p, port = web(start_proxy, f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                               f'proxy_url = "http://127.0.0.1:{origin.port}"\n')
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head, body = get(port, "/headers", headers="X-A: 1\r\nAccept: */*\r\n", sock=s)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert body.decode().split("\n") == ["Host: a.test", "X-A: 1", "Accept: */*", "X-Forwarded-For: 127.0.0.1",
                                             "X-Forwarded-Proto: http", "X-Real-IP: 127.0.0.1"]
        head, body = get(port, "/headers", headers="X-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive, X-Gone\r\n"
                                                    "X-Gone: 1\r\nX-A: 2\r\n", sock=s)
        assert body.decode().split("\n") == ["Host: a.test", "X-A: 2", "X-Forwarded-For: 10.0.0.1, 127.0.0.1",
                                             "X-Forwarded-Proto: http", "X-Real-IP: 127.0.0.1"]


def test_round_robin_keep_alive_pool_and_headers(start_proxy, origins):
    a, b = origins
    p, port = web(start_proxy, proxy_config(f'{{ addr = "127.0.0.1:{a.port}", weight = 2 }}, '
                                            f'{{ addr = "127.0.0.1:{b.port}" }}'))
    names = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for i in range(999):
            head, body = get(port, f"/api/item{i}", sock=s)
            assert head.startswith(b"HTTP/1.1 200") and header(head, "X-Answer") == "yes"
            name, path, _ = body.decode().split()
            assert path == f"/v1/item{i}"  # the location's prefix replaced by proxy_url's path
            names.append(name)
    assert names.count("A") == 666 and names.count("B") == 333  # weights 2:1
    assert a.connections == 1 and b.connections == 1  # every request on a pooled keep-alive connection
    seen = a.headers[0].lower()
    assert "x-tag: 127.0.0.1" in seen and "x-forwarded-for: 127.0.0.1" in seen and "x-real-ip: 127.0.0.1" in seen
    assert "host: a.test" in seen  # the client's Host goes upstream
    # a POST body goes through, chunked or not
    r = curl("-s", "-H", "Host: a.test", "--data-binary", "x" * 100000, f"http://127.0.0.1:{port}/api/post")
    assert r.stdout.endswith(b" /v1/post 100000")
    r = curl("-s", "-H", "Host: a.test", "-H", "Transfer-Encoding: chunked", "--data-binary", "y" * 5000,
             f"http://127.0.0.1:{port}/api/chunked")
    assert r.stdout.endswith(b" /v1/chunked 5000")


def test_passive_health_next_server_and_502(start_proxy, origins):
    a, _ = origins
    dead = free_port()
    p, port = web(start_proxy, proxy_config(f'{{ addr = "127.0.0.1:{dead}", max_fails = 1, fail_timeout = "30s" }}, '
                                            f'{{ addr = "127.0.0.1:{a.port}" }}'))
    for i in range(6):  # the dead server is tried once, then left out: every request succeeds
        head, body = get(port, f"/api/{i}")
        assert head.startswith(b"HTTP/1.1 200") and body.startswith(b"A ")
    p.wait_log(f"server 127.0.0.1:{dead} is out for 30s")
    assert p.log().count(f"connect to 127.0.0.1:{dead}") == 1
    # every server down: 502 at once, naming the upstream
    both_dead = f'{{ addr = "127.0.0.1:{dead}" }}, {{ addr = "127.0.0.1:{free_port()}" }}'
    p2, port2 = web(start_proxy, proxy_config(both_dead))
    head, body = get(port2, "/api/x")
    assert head.startswith(b"HTTP/1.1 502") and b"could be reached" in body
    head, body = get(port2, "/api/x")
    assert head.startswith(b"HTTP/1.1 502") and b"no live server in upstream app" in body


def test_pooled_connection_the_server_closed_is_replaced(start_proxy):
    """An origin that answers keep-alive but closes each connection 50 ms later: requests
    that take the pooled (now dead) connection, with a body or without, still get through."""
    connections = []

    def serve(conn):
        connections.append(1)
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                return
            head += data
        length = int(header(head.split(b"\r\n\r\n")[0] + b"\r\n", "Content-Length") or 0)
        body = head.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += conn.recv(65536)
        answer = b"got " + body
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        time.sleep(0.05)  # then the connection closes (a keep-alive timeout shorter than the proxy's pool)

    origin = TcpServer(serve)
    try:
        p, port = web(start_proxy, f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                                   f'proxy_url = "http://127.0.0.1:{origin.port}"\n')
        for i in range(4):
            time.sleep(0.2)  # the pooled connection is closed by now, and pooled less than a second ago
            head, body = get(port, "/")
            assert head.startswith(b"HTTP/1.1 200") and body == b"got ", head
            time.sleep(0.2)  # a request with a body is not sent again: its pooled connection is probed first
            head, body = get(port, "/", method="POST", headers="Content-Length: 3\r\n\r\nabc")
            assert head.startswith(b"HTTP/1.1 200") and body == b"got abc", head
        assert len(connections) >= 8  # each request needed a connection of its own
    finally:
        origin.close()


def test_interim_responses_are_not_taken_for_the_final_one(start_proxy, early_hints):
    p, port = web(start_proxy, f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                               f'proxy_url = "http://127.0.0.1:{early_hints.port}"\n')
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(2):  # the next request on the same connections finds nothing left over
            head, body = get(port, "/", sock=s)
            assert head.startswith(b"HTTP/1.1 200") and body == b"after hints", head


def test_active_health_check_takes_a_server_out_and_back(start_proxy, origins):
    a, b = origins
    hc = '\nhealth_check = { path = "/health", interval = "200ms", timeout = "1s", rise = 2, fall = 2 }'
    conf = proxy_config(f'{{ addr = "127.0.0.1:{a.port}" }}, {{ addr = "127.0.0.1:{b.port}" }}')
    conf = conf.replace('\n[[http.server]]', hc + '\n[[http.server]]', 1)
    p, port = web(start_proxy, conf)
    deadline = time.monotonic() + 5
    while not any("GET /health" in h for h in b.headers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("GET /health" in h for h in b.headers)  # checks run before any request
    b.close()  # no new connections to B: its checks fail, it is taken out
    p.wait_log(f"server 127.0.0.1:{b.port} is out: 2 health checks failed")
    assert {get(port, f"/api/{i}", headers="Connection: close\r\n")[1].split()[0] for i in range(10)} == {b"A"}
    back = CountingOrigin("B2", port=b.port)
    try:
        p.wait_log(f"server 127.0.0.1:{b.port} is back: 2 health checks passed")
        names = {get(port, f"/api/{i}", headers="Connection: close\r\n")[1].split()[0] for i in range(10)}
        assert names == {b"A", b"B2"}
    finally:
        back.close()


def test_ip_hash_sticks(start_proxy, origins):
    a, b = origins
    p, port = web(start_proxy, proxy_config(f'{{ addr = "127.0.0.1:{a.port}" }}, {{ addr = "127.0.0.1:{b.port}" }}',
                                            method="ip_hash"))
    assert len({get(port, f"/api/{i}")[1].split()[0] for i in range(8)}) == 1


@pytest.fixture
def nginx(tmp_path):
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        pytest.skip("nginx is not installed (make test installs it)")
    www = tmp_path / "www"
    www.mkdir()
    (www / "big.bin").write_bytes(os.urandom(5 << 20))
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""user root; worker_processes 1; daemon off;
pid {tmp_path}/nginx.pid; error_log {tmp_path}/nginx.err;
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {tmp_path}/b; proxy_temp_path {tmp_path}/p;
  fastcgi_temp_path {tmp_path}/f; uwsgi_temp_path {tmp_path}/u; scgi_temp_path {tmp_path}/s;
  server {{ listen 127.0.0.1:{port}; root {www}; location /echo {{ return 200 "$http_x_forwarded_for $host"; }} }} }}
""")
    os.chmod(tmp_path, 0o755)
    os.chmod(www, 0o755)
    os.chmod(www / "big.bin", 0o644)
    proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    yield port, www
    proc.terminate()
    proc.wait(10)


def test_nginx_upstream_by_url(start_proxy, nginx):
    nport, www = nginx
    p, port = web(start_proxy, f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                               f'proxy_url = "http://127.0.0.1:{nport}"\n')
    r = curl("-s", "-H", "Host: site.test", f"http://127.0.0.1:{port}/echo")
    assert r.stdout == b"127.0.0.1 site.test"
    r = curl("-s", f"http://127.0.0.1:{port}/big.bin")
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256((www / "big.bin").read_bytes()).digest()


def test_websocket_through_proxy_url(start_proxy):
    from websockets.sync.client import connect

    server = websocket_echo()
    try:
        p, port = web(start_proxy, f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                                   f'proxy_url = "http://127.0.0.1:{server.socket.getsockname()[1]}"\n')
        with connect(f"ws://127.0.0.1:{port}/chat", open_timeout=10) as ws:
            for i in range(10):
                ws.send(f"m{i}")
                assert ws.recv(timeout=10) == f"m{i}"
        p.wait_log("upgraded, done")
    finally:
        server.shutdown()


# -- static files ------------------------------------------------------------------------------

@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "style.css").write_text("body{}" * 1000)
    (root / "style.css.gz").write_bytes(gzip.compress((root / "style.css").read_bytes()))
    (root / "docs" / "a.txt").write_text("".join(f"{i:04d}\n" for i in range(1000)))
    (root / "404.html").write_text("custom not found")
    (root / "big.bin").write_bytes(os.urandom(20 << 20))
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    (root / "link").symlink_to(outside)
    return root


def files_config(root, extra: str = "") -> str:
    return (f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\nrule = "/"\n'
            f'file_server = {{ root = "{root}", cache_time = "1h", path404 = "404.html"{extra} }}\n')


@pytest.mark.parametrize("attack", ["large file", "pipelined small files", "pipelined static answers"])
def test_a_client_that_never_reads_its_files_is_given_up_after_client_read_timeout(start_proxy, site, attack):
    """The attacker asks and never reads (a 4 KiB receive window): a 20 MiB file (sendfile), or
    2,000 pipelined requests for a 5 KB file (answered from the cache with one send each), or for
    a 5 KB static_response. Each wait for room ends after client_read_timeout (1 s): the
    connection is closed long before the answers are all out, and others are served meanwhile."""
    p = start_proxy(config=f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\nclient_read_timeout = "1s"\n'
                           f'[[http.server.location]]\nrule = "/s"\nstatic_response = "{"x" * 4999}\\n"\n'
                           f'[[http.server.location]]\nrule = "/"\nfile_server = {{ root = "{site}" }}\n', bind=False)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", p.port))
    if attack == "large file":
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\n\r\n")
        whole = 20 << 20
    else:
        path = b"/docs/a.txt" if attack == "pipelined small files" else b"/s"
        s.sendall(b"GET %s HTTP/1.1\r\nHost: a.test\r\n\r\n" % path * 2000)
        whole = 2000 * 5000
    time.sleep(4)  # (1 s to give up, with room to spare)
    assert get(p.port, "/index.html")[1] == b"<h1>home</h1>"  # (served all along)
    got = 0
    try:
        while data := s.recv(1 << 20):
            got += len(data)
    except ConnectionResetError:
        pass
    finally:
        s.close()
    assert got < whole // 2, got  # (what the buffers held when it was given up; a live one would send it all)


def test_text_files_are_gzipped_on_the_fly_without_a_sibling(start_proxy, site):
    """No .gz sibling: a text-like file goes gzipped to a client that takes it (small: with
    its length, from the cache; large: chunked as it is read), never with ranges, never to
    a client that refuses it (q=0) or speaks HTTP/1.0 (the large one), nor binary types."""
    (site / "small.js").write_text("let a = 1;\n" * 200)  # 2,400 bytes
    (site / "tiny.txt").write_text("hi")  # under 256 bytes: as it is
    (site / "large.json").write_text('{"k": ' + '"v",'.join(['"x"'] * 40000) + "}")  # > 32 KiB
    big_json = (site / "large.json").read_bytes()
    p, port = web(start_proxy, files_config(site))
    head, body = get(port, "/small.js", headers="Accept-Encoding: gzip\r\n")
    assert header(head, "Content-Encoding") == "gzip" and header(head, "Vary") == "Accept-Encoding"
    assert gzip.decompress(body) == (site / "small.js").read_bytes() and int(header(head, "Content-Length")) == len(body)
    assert header(head, "Accept-Ranges") is None and header(head, "ETag").endswith('-gzip"')
    assert get(port, "/small.js", headers=f"Accept-Encoding: gzip\r\nIf-None-Match: {header(head, 'ETag')}\r\n"
               )[0].startswith(b"HTTP/1.1 304")
    r = curl("-s", "-D", "-", "-H", "Accept-Encoding: deflate, gzip;q=0.5", f"http://127.0.0.1:{port}/large.json")
    head, _, body = r.stdout.partition(b"\r\n\r\n")  # (curl takes the chunks apart, not the gzip)
    assert header(head, "Content-Encoding") == "gzip" and header(head, "Transfer-Encoding") == "chunked"
    assert gzip.decompress(body) == big_json and len(body) < len(big_json) // 10
    r = curl("-s", "--compressed", f"http://127.0.0.1:{port}/large.json")  # curl's own decoder agrees
    assert r.stdout == big_json
    for refused in ("Accept-Encoding: gzip;q=0\r\n", "Accept-Encoding: br\r\n", "",
                    "Accept-Encoding: gzip\r\nRange: bytes=0-9\r\n"):
        head, body = get(port, "/small.js", headers=refused)
        assert header(head, "Content-Encoding") is None and body in ((site / "small.js").read_bytes(),
                                                                  b"let a = 1;"), refused
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /large.json HTTP/1.0\r\nHost: a.test\r\nAccept-Encoding: gzip\r\n\r\n")
        head, body = read_response(s)
    assert header(head, "Content-Encoding") is None and body == big_json
    head, body = get(port, "/tiny.txt", headers="Accept-Encoding: gzip\r\n")
    assert header(head, "Content-Encoding") is None and body == b"hi"
    head, body = get(port, "/big.bin", headers="Accept-Encoding: gzip\r\n", method="HEAD")
    assert header(head, "Content-Encoding") is None  # (not a text type)
    p2, port2 = web(start_proxy, files_config(site, ", gzip = false"))
    head, _ = get(port2, "/small.js", headers="Accept-Encoding: gzip\r\n")
    assert header(head, "Content-Encoding") is None


def test_static_files(start_proxy, site):
    p, port = web(start_proxy, files_config(site, ', browse = true'))
    head, body = get(port, "/")
    assert body == b"<h1>home</h1>" and header(head, "Content-Type") == "text/html; charset=utf-8"
    head, body = get(port, "/style.css")
    assert header(head, "Content-Type") == "text/css; charset=utf-8" and header(head, "Cache-Control") == "max-age=3600"
    etag, modified = header(head, "ETag"), header(head, "Last-Modified")
    assert get(port, "/style.css", headers=f"If-None-Match: {etag}\r\n")[0].startswith(b"HTTP/1.1 304")
    assert get(port, "/style.css", headers=f"If-Modified-Since: {modified}\r\n")[0].startswith(b"HTTP/1.1 304")
    head, body = get(port, "/style.css", headers="Accept-Encoding: gzip, br\r\n")
    assert header(head, "Content-Encoding") == "gzip" and gzip.decompress(body) == (site / "style.css").read_bytes()
    head, body = get(port, "/docs/a.txt", headers="Range: bytes=5-9\r\n")
    assert head.startswith(b"HTTP/1.1 206") and body == b"0001\n"
    assert header(head, "Content-Range") == "bytes 5-9/5000"
    head, body = get(port, "/docs/a.txt", headers="Range: bytes=0-4,-5\r\n")
    assert head.startswith(b"HTTP/1.1 206") and b"multipart/byteranges" in head
    assert b"0000\n" in body and b"0999\n" in body and b"Content-Range: bytes 4995-4999/5000" in body
    head, _ = get(port, "/docs/a.txt", headers="Range: bytes=9000-\r\n")
    assert head.startswith(b"HTTP/1.1 416") and header(head, "Content-Range") == "bytes */5000"
    head, body = get(port, "/docs/a.txt", headers="Range: bytes=0-3\r\nIf-Range: \"stale\"\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == 5000  # If-Range does not match: the whole file
    head, _ = get(port, "/docs")
    assert head.startswith(b"HTTP/1.1 301") and header(head, "Location") == "/docs/"
    head, body = get(port, "/docs/")
    assert b'href="a.txt"' in body  # browse = true
    head, body = get(port, "/nothing-here")
    assert head.startswith(b"HTTP/1.1 404") and body == b"custom not found"
    head, _ = get(port, "/big.bin", method="HEAD")
    assert header(head, "Content-Length") == str(20 << 20)
    r = curl("-s", f"http://127.0.0.1:{port}/big.bin")
    big = (site / "big.bin").read_bytes()
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(big).digest()
    # a large file's ranges go out with sendfile (a small one's, above, from memory)
    head, body = get(port, "/big.bin", headers="Range: bytes=1000000-1000099\r\n")
    assert head.startswith(b"HTTP/1.1 206") and body == big[1000000:1000100]
    head, body = get(port, "/big.bin", headers="Range: bytes=0-9,-10\r\n")
    assert head.startswith(b"HTTP/1.1 206") and big[:10] in body and big[-10:] in body
    assert get(port, "/", method="POST")[0].startswith(b"HTTP/1.1 405")



def test_range_and_date_headers_from_a_stranger_neither_amplify_nor_break_an_answer(start_proxy, site):
    """Range, If-Range and If-Modified-Since as an attacker sends them. CVE-2011-3192: 32
    ranges of the whole file in a 100-byte header made a 206 of 32 times the file (640 MiB of a
    20 MiB file); as nginx does, ranges that add up to more than the file are ignored (a 200 of
    the file, once). Positions that are not plain digits ('+0', '1_0', Arabic-Indic digits) are
    no byte range set either. A date whose year overflows was an internal error."""
    p, port = web(start_proxy, files_config(site, ''))
    whole = (site / "docs" / "a.txt").read_bytes()
    for spec in (",".join(["0-"] * 32), "0-2999,2000-4999", "0-,-1", "+0-10", "0-1_0", "0-\u0669"):
        head, body = get(port, "/docs/a.txt", headers=f"Range: bytes={spec}\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == whole, (spec, head)
    big = 20 << 20  # (a large file: the sendfile path)
    head, _ = get(port, "/big.bin", method="HEAD", headers=f"Range: bytes={','.join(['0-'] * 32)}\r\n")
    assert head.startswith(b"HTTP/1.1 200") and header(head, "Content-Length") == str(big), head
    r = curl("-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-H", f"Range: bytes={','.join(['0-'] * 32)}",
             f"http://127.0.0.1:{port}/big.bin")
    assert r.stdout.decode() == f"200 {big}"
    # ranges that do not add up to more than the file are served as before, each once
    head, body = get(port, "/docs/a.txt", headers="Range: bytes=0-9, 4990-4999,,100-109\r\n")
    assert head.startswith(b"HTTP/1.1 206") and body.count(b"Content-Range: bytes") == 3
    assert whole[:10] in body and whole[-10:] in body and whole[100:110] in body
    assert get(port, "/docs/a.txt", headers=f"Range: bytes={'9' * 30}-\r\n")[0].startswith(b"HTTP/1.1 416")
    # dates that are not dates, the year 10**20 included (it overflows instead of failing): no
    # validator, the answer as without one (it was an internal error, a traceback and no answer)
    for bad in ("1 Jan 10000000000000000000 00:00:00 GMT", "Mon, 32 Dec 2026 07:10:47 GMT", "yesterday"):
        head, body = get(port, "/docs/a.txt", headers=f"If-Modified-Since: {bad}\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == whole, (bad, head)
        head, body = get(port, "/docs/a.txt", headers=f"Range: bytes=0-9\r\nIf-Range: {bad}\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == whole, (bad, head)  # If-Range fails: the whole file
    assert p.popen.poll() is None and "internal error" not in p.log()


def test_every_answer_wmproxy_makes_itself_carries_a_date(start_proxy, site):
    """RFC 9110 6.6.1: an origin with a clock sends Date in its 2xx, 3xx and 4xx answers (nginx
    does in all): files (200, 304, 206, 416, listing, the 301 to a directory, 404), static
    answers, redirects, errors, the forward proxy's own answers, over HTTP/2 too."""
    def dated(head: bytes) -> None:
        value = header(head, "Date")
        assert value is not None and value.endswith(" GMT"), head
        when = email.utils.parsedate_to_datetime(value).timestamp()
        assert abs(when - time.time()) < 5, (value, head)
        assert head.lower().count(b"\r\ndate:") == 1, head

    conf = files_config(site, ', browse = true') + (
        '[[http.server.location]]\nrule = "= /hello"\nstatic_response = "hi"\n'
        '[[http.server.location]]\nrule = "/away/"\nredirect = "/there"\n')
    p, port = web(start_proxy, conf)
    head, _ = get(port, "/style.css")
    dated(head)
    etag = header(head, "ETag")
    cases = [("/style.css", f"If-None-Match: {etag}\r\n", b"304"), ("/docs/a.txt", "Range: bytes=0-4\r\n", b"206"),
             ("/docs/a.txt", "Range: bytes=9000-\r\n", b"416"), ("/docs/", "", b"200"), ("/docs", "", b"301"),
             ("/nothing-here", "", b"404"), ("/hello", "", b"200"), ("/away/x", "", b"302")]
    for path, extra, status in cases:
        head, _ = get(port, path, headers=extra)
        assert head.split()[1] == status, (path, head)
        dated(head)
    head, _ = get(port, "/", method="POST")
    assert head.startswith(b"HTTP/1.1 405")
    dated(head)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # a malformed request: 400
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nBad Header: x\r\n\r\n")
        head, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 400")
    dated(head)
    r = curl("-si", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/hello")
    assert r.stdout.startswith(b"HTTP/2 200")
    dated(r.stdout.split(b"\r\n\r\n")[0])
    # the forward proxy's own answer (nothing listens on the target)
    fwd = start_proxy()
    with socket.create_connection(("127.0.0.1", fwd.port), timeout=10) as s:
        closed = free_port()
        s.sendall(f"GET http://127.0.0.1:{closed}/ HTTP/1.1\r\nHost: 127.0.0.1:{closed}\r\n\r\n".encode())
        head, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 502")
    dated(head)


def test_http10_keep_alive_clients_are_told_so_and_ab_keeps_its_connections(start_proxy, site):
    """An HTTP/1.0 client keeps its connection only when the answer says Connection:
    keep-alive (ab -k counts on it, as nginx says it): files, static answers and wmproxy's own
    errors say it; HTTP/1.1 answers need no such line. ab (apache2-utils) as the real client."""
    conf = files_config(site) + '[[http.server.location]]\nrule = "= /hello"\nstatic_response = "hi"\n'
    p, port = web(start_proxy, conf)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # one connection, three answers
        for path, status in (("/docs/a.txt", b"200"), ("/hello", b"200"), ("/nothing-here", b"404")):
            s.sendall(f"GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            head, _ = read_response(s)
            assert head.split()[1] == status and header(head, "Connection") == "keep-alive", (path, head)
    head, _ = get(port, "/docs/a.txt")  # HTTP/1.1: persistent without saying so
    assert header(head, "Connection") is None
    for path in ("/docs/a.txt", "/hello"):
        r = subprocess.run(["ab", "-k", "-n", "300", "-c", "3", f"http://127.0.0.1:{port}{path}"],
                           capture_output=True, text=True, timeout=60)
        assert "Complete requests:      300" in r.stdout and "Failed requests:        0" in r.stdout, r.stdout
        assert "Keep-Alive requests:    300" in r.stdout, r.stdout


def test_a_changed_small_file_shows_within_a_second(start_proxy, site):
    p, port = web(start_proxy, files_config(site))
    assert get(port, "/docs/a.txt")[1].startswith(b"0000\n")
    (site / "docs" / "a.txt").write_text("changed\n")
    deadline = time.monotonic() + 3
    while get(port, "/docs/a.txt")[1] != b"changed\n":
        assert time.monotonic() < deadline, "the old bytes are still served"
        time.sleep(0.1)


TRAVERSALS = [
    "/../outside.txt", "/../../etc/passwd", "/docs/../../outside.txt", "/%2e%2e/outside.txt", "/%2E%2E/outside.txt",
    "/%2e./outside.txt", "/.%2e/outside.txt", "/docs/%2e%2e/%2e%2e/outside.txt", "/%2e%2e%2foutside.txt",
    "/%2e%2e%2Foutside.txt", "/docs%2f..%2f..%2foutside.txt", "/..%2foutside.txt", "/%2e%2e%5coutside.txt",
    "/..%5coutside.txt", "/..\\outside.txt", "/%252e%252e/outside.txt", "/%c0%ae%c0%ae/outside.txt",
    "/%c0%2e%c0%2e/outside.txt", "/./.././outside.txt", "/docs/./../../outside.txt", "/%00/../outside.txt",
    "/docs/a.txt%00.html", "//../outside.txt", "/.../outside.txt", "/docs/..;/../outside.txt",
]


def test_static_files_refuse_to_leave_the_root(start_proxy, site):
    p, port = web(start_proxy, files_config(site))
    for path in TRAVERSALS:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".encode())
            head, body = read_response(s)
        assert head.split(b" ")[1] in (b"400", b"403", b"404"), (path, head)
        assert b"outside" not in body and b"root:" not in body, path
    assert get(port, "/link")[0].startswith(b"HTTP/1.1 403")  # a symlink out of root
    assert get(port, "/empty/")[0].startswith(b"HTTP/1.1 403")  # no index, browse off
    p2, port2 = web(start_proxy, files_config(site, ", follow_symlinks = true"))
    assert get(port2, "/link")[1] == b"outside"


def test_try_paths_and_tls_servers_by_sni(start_proxy, site, tmp_path, ca):
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_cert(ca, tmp_path, "one", "one.test")
    write_cert(ca, tmp_path, "two", "two.test")
    conf = "".join(f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\nserver_name = "{name}.test"\n'
                   f'cert = "{tmp_path}/{name}.pem"\nkey = "{tmp_path}/{name}.key"\n'
                   f'[[http.server.location]]\nstatic_response = "{name}"\n' for name in ("one", "two"))
    p, port = web(start_proxy, conf)
    for name in ("one", "two"):
        r = curl("-s", "--cacert", str(tmp_path / "ca.pem"), "--resolve", f"{name}.test:{port}:127.0.0.1",
                 f"https://{name}.test:{port}/")
        assert r.stdout == name.encode(), r.stderr
    # two requests in two TLS records sent in one write (the server waits for readability
    # between requests: the second record must still be found)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="two.test")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        tls.write(b"GET /a HTTP/1.1\r\nHost: two.test\r\n\r\n")
        tls.write(b"GET /b HTTP/1.1\r\nHost: two.test\r\n\r\n")
        raw.sendall(outgoing.read())
        answers = b""
        while answers.count(b"two") < 2:
            data = raw.recv(65536)  # a timeout here: the second request was not seen
            assert data, answers
            incoming.write(data)
            try:
                while True:
                    answers += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
    p2, port2 = web(start_proxy, files_config(site, ', try_paths = ["/docs{path}", "/index.html"]'))
    assert get(port2, "/a.txt")[1].startswith(b"0000\n")  # found as /docs/a.txt
    assert get(port2, "/app/route")[1] == b"<h1>home</h1>"  # the single-page-app fallback


def test_file_server_one_liner(start_proxy, site):
    port = free_port()
    p = start_proxy("file-server", "-r", str(site), "-l", f"127.0.0.1:{port}", "--browse", bind=False, wait=False)
    wait_port(port, proc=p.popen)
    assert get(port, "/")[1] == b"<h1>home</h1>"
    assert b'href="a.txt"' in get(port, "/docs/")[1]


def test_reload_new_routes_for_new_connections(start_proxy, tmp_path):
    import signal

    conf = '[[http.server]]\nbind = "127.0.0.1:{port}"\n[[http.server.location]]\nstatic_response = "VERSION"\n'
    p, port = web(start_proxy, conf.replace("VERSION", "v1"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as live:
        assert get(port, "/", sock=live)[1] == b"v1"
        (tmp_path / f"conf-{port}.toml").write_text(conf.replace("VERSION", "v2").replace("{port}", str(port)))
        p.popen.send_signal(signal.SIGHUP)
        p.wait_log("reloaded")
        assert get(port, "/")[1] == b"v2"  # a new connection: the new routes
        assert get(port, "/", sock=live)[1] == b"v1"  # the live one finishes on the old ones


def test_limit_req_per_client_address(start_proxy):
    p, port = web(start_proxy, '[[http.server]]\nbind = "127.0.0.1:{port}"\n[[http.server.location]]\n'
                               'static_response = "ok"\nlimit_req = { rate = "2r/s", burst = 3 }\n')
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        codes = [get(port, "/", sock=s)[0].split(b" ")[1] for _ in range(6)]
    assert codes[:4] == [b"200"] * 4 and codes[4:] == [b"429", b"429"]  # 1 + burst at once, then 429
    time.sleep(0.6)  # the bucket refills at 2 a second
    assert get(port, "/")[0].startswith(b"HTTP/1.1 200")
    head, _ = get(port, "/")
    assert head.startswith(b"HTTP/1.1 429") and header(head, "Retry-After") == "1"


@pytest.mark.timeout(180)
def test_a_1_gib_file_with_flat_memory(start_proxy, tmp_path):
    import psutil

    root = tmp_path / "big"
    root.mkdir()
    with open(root / "1g.bin", "wb") as f:
        f.truncate(1 << 30)  # sparse: no disk needed
    p, port = web(start_proxy, files_config(root))
    proc = psutil.Process(p.popen.pid)
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    r = curl("-s", "-o", "/dev/null", "-w", "%{size_download}", f"http://127.0.0.1:{port}/1g.bin", timeout=150)
    done.set()
    assert r.stdout == str(1 << 30).encode()
    assert peak[0] - before < 32 << 20, f"RSS grew by {(peak[0] - before) >> 20} MiB"


def test_bad_requests_get_their_error_and_the_server_goes_on(start_proxy):
    p, port = web(start_proxy, '[[http.server]]\nbind = "127.0.0.1:{port}"\nmax_header_size = "4k"\n'
                               '[[http.server.location]]\nstatic_response = "fine"\n')
    for junk, status in ((os.urandom(200).replace(b"\n", b"") + b"\r\n\r\n", b"400"),
                         (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 8000 + b"\r\n\r\n", b"431"),
                         (b"GET /%ff%fe HTTP/1.1\r\nHost: a\r\n\r\n", b"400"),
                         (b"GET http://a.test/%2e%2e/x HTTP/1.1\r\nHost: a\r\n\r\n", b"403")):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(junk)
            head, _ = read_response(s)
            assert head.split(b" ")[1] == status, (junk[:40], head)
    assert get(port, "/")[1] == b"fine"


def test_https_upstream_verified(start_proxy, tls_origin):
    loc = f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n' \
          f'proxy_url = "https://localhost:{tls_origin.port}"\n'
    p, port = web(start_proxy, loc + f'proxy_ssl_ca = "{tls_origin.ca_file}"\n')
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(3):
            assert get(port, "/hello", sock=s)[1] == b"hello from origin-TLS"
    # the system store does not know the test CA: the certificate is refused, 502
    p2, port2 = web(start_proxy, loc)
    head, body = get(port2, "/hello")
    assert head.startswith(b"HTTP/1.1 502") and b"CERTIFICATE_VERIFY_FAILED" in body


def _frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame (RFC 6455 5.2), for cases a well-behaved client never sends."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 else \
        bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


WS_CASES = {  # name: frames sent after the handshake (Autobahn-style: the echo server's answer is the outcome)
    "text": [_frame(1, b"hello")],
    "binary 70000": [_frame(2, os.urandom(70000))],
    "fragmented": [_frame(1, b"frag", fin=False), _frame(0, b"men", fin=False), _frame(0, b"ted")],
    "ping inside fragments": [_frame(1, b"a", fin=False), _frame(9, b"ping!"), _frame(0, b"b")],
    "invalid utf-8 text": [_frame(1, b"\xff\xfe")],
    "reserved bits": [_frame(1, b"x", rsv=7)],
    "ping too long": [_frame(9, b"p" * 126)],
    "close 1000": [_frame(8, (1000).to_bytes(2, "big") + b"bye")],
    "close bad code": [_frame(8, (999).to_bytes(2, "big"))],
    "unknown opcode": [_frame(3, b"?")],
}



@pytest.mark.parametrize("answer", ["101 nobody asked for", "204 with a body", "204, then bytes late"])
def test_bytes_an_upstream_sends_past_its_answer_never_reach_another_client(request, start_proxy, answer):
    """An upstream that says more than its answer: a 101 though the request asked for no upgrade
    (RFC 9110 7.8 forbids it), then what it says in its other protocol; or a 204 followed by
    bytes, at once or a moment later while the connection waits in the pool. Those bytes look
    like the answer to the next request: a pooled connection taken for another client's GET
    (unprobed within a second of its last answer) once handed them to that client. As nginx,
    wmproxy keeps no connection with bytes left over, nor one that switched protocols, takes no
    pooled one unprobed once something arrived on it, and answers 502 to a 101 nobody asked for."""

    def upstream(conn: socket.socket) -> None:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1]
            past = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"  # (what it says past its answer)
            if path == b"/switch":
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: upgrade\r\n\r\n" + past)
            elif path == b"/nocontent" and answer == "204 with a body":
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n" + past)
            elif path == b"/nocontent":  # the bytes come while the connection waits in the pool
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
                time.sleep(0.1)
                conn.sendall(past)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                continue
            time.sleep(3)  # (then nothing more: the connection stays open, as a kept one would)
            return

    server = TcpServer(upstream)
    first = "/switch" if answer.startswith("101") else "/nocontent"
    try:
        p, port = web(start_proxy, f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                                   f'proxy_url = "http://127.0.0.1:{server.port}"\n')
        head, body = get(port, first)
        assert head.startswith(b"HTTP/1.1 502" if answer.startswith("101") else b"HTTP/1.1 204"), head
        time.sleep(0.5)  # (the late bytes, sent at 0.1 s, are there by now; within the second a kept one goes unprobed)
        for i in range(3):  # other clients: each gets its own answer
            head, body = get(port, "/next")
            assert head.startswith(b"HTTP/1.1 200") and body == b"ok", (i, head, body)
        # the forward proxy keeps a client's upstream connection for its next request: the same rules
        forward = start_proxy()
        with socket.create_connection(("127.0.0.1", forward.port), timeout=10) as s:
            for path in (first, "/next", "/next"):
                s.sendall(f"GET http://127.0.0.1:{server.port}{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head, body = read_response(s)
                if path == first:
                    assert head.startswith(b"HTTP/1.1 502" if answer.startswith("101") else b"HTTP/1.1 204"), head
                    if answer.startswith("101"):
                        break  # (a 502 ends the client's connection)
                    time.sleep(0.5)  # (bytes that come after the next request went out are its answer to anyone)
                else:
                    assert head.startswith(b"HTTP/1.1 200") and body == b"ok", (path, head, body)
        # and an http mapping, whose public connection keeps its stream to the service
        web_port = free_port()
        pair = request.getfixturevalue("pair")(start_client=False,
                                               server_extra=f'map_http_bind = "127.0.0.1:{web_port}"\n')
        pair.client = pair.start_client(tail=http_mapping("app", server.port, "a.test"))
        pair.client.wait_log("mapping 'app' published")
        wait_port(web_port)
        with socket.create_connection(("127.0.0.1", web_port), timeout=10) as s:
            head, _ = get(web_port, first, sock=s)
            assert head.startswith(b"HTTP/1.1 502" if answer.startswith("101") else b"HTTP/1.1 204"), head
            if not answer.startswith("101"):  # (a 502 ends the public connection)
                time.sleep(0.5)
                head, body = get(web_port, "/next", sock=s)
                assert head.startswith(b"HTTP/1.1 200") and body == b"ok", (head, body)
        assert get(web_port, "/next")[1] == b"ok"
        if answer.startswith("101"):
            p.wait_log("switched protocols")
            forward.wait_log("switched protocols")
            pair.server.wait_log("switched protocols")
    finally:
        server.close()


def _ws_outcome(port: int, frames: list[bytes]) -> bytes:
    """Handshake, send ``frames``, then everything the server answers until it closes (1 s max)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        head, rest = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        s.sendall(b"".join(frames))
        s.settimeout(1)
        out = rest
        try:
            while data := s.recv(65536):
                out += data
        except socket.timeout:
            pass
        return out


def test_websocket_cases_unchanged_through_the_proxy(start_proxy):
    """The proxy relays after 101: every case must end as it does against the server directly."""
    server = websocket_echo()
    try:
        direct = server.socket.getsockname()[1]
        p, port = web(start_proxy, f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                                   f'proxy_url = "http://127.0.0.1:{direct}"\n')
        for name, frames in WS_CASES.items():
            assert _ws_outcome(port, frames) == _ws_outcome(direct, frames), name
    finally:
        server.shutdown()



def test_locations_with_conditions_like_the_rust_wmproxy(start_proxy):
    """method, host, client_ip and scheme on a location: a request that does not meet them goes
    on to the next location nginx's order would give."""
    p, port = web(start_proxy, '''[[http.server]]
bind = "127.0.0.1:{port}"
[[http.server.location]]
rule = "/api/"
method = ["post", "PUT"]
static_response = "writes"
[[http.server.location]]
rule = "/api/"
host = ["*.admin.test"]
static_response = "admin reads"
[[http.server.location]]
rule = "= /api/x"
client_ip = ["10.0.0.0/8"]
static_response = "internal only"
[[http.server.location]]
rule = "/api/"
scheme = "https"
static_response = "never over http"
[[http.server.location]]
rule = "= /mine"
client_ip = ["127.0.0.0/8"]
static_response = "local only"
[[http.server.location]]
rule = "/"
static_response = "reads"
''')
    assert get(port, "/api/x", method="POST", headers="Content-Length: 0\r\n")[1] == b"writes"
    assert get(port, "/api/x", host="A.Admin.test:8080")[1] == b"admin reads"
    assert get(port, "/api/x")[1] == b"reads"  # not 10/8, not POST, not admin, not https: the next prefix
    assert get(port, "/api/x", method="PUT", headers="Content-Length: 0\r\n")[1] == b"writes"
    assert get(port, "/mine")[1] == b"local only"


def test_file_server_hide_cors_robots_and_media_types(start_proxy, site):
    """The Rust wmproxy's file server keys: hide (404, and out of listings), cors, robots,
    ext_mimetype."""
    (site / ".git").mkdir()
    (site / ".git" / "config").write_text("secret")
    (site / ".env").write_text("PASSWORD=x")
    (site / "docs" / ".hidden.txt").write_text("dot file")
    (site / "notes.md").write_text("# notes")
    p, port = web(start_proxy, files_config(site, ', browse = true, hide = [".git", ".*"], cors = true, '
                                                  'robots = "User-agent: *\\nDisallow: /", '
                                                  'ext_mimetype = { md = "text/markdown" }'))
    for path in ("/.git/config", "/.env", "/docs/.hidden.txt", "/.git/"):
        head, body = get(port, path)
        assert head.startswith(b"HTTP/1.1 404") and b"secret" not in body and b"PASSWORD" not in body, (path, head)
    listing = get(port, "/docs/")[1]
    assert b"a.txt" in listing and b".hidden" not in listing
    head, body = get(port, "/robots.txt")
    assert head.startswith(b"HTTP/1.1 200") and body == b"User-agent: *\nDisallow: /"
    head, body = get(port, "/notes.md")
    assert header(head, "Content-Type") == "text/markdown; charset=utf-8" and body == b"# notes"
    assert header(head, "Access-Control-Allow-Origin") == "*"
    assert "Range" in header(head, "Access-Control-Allow-Headers")


# -- error_page and named locations (nginx's, and the Rust wmproxy's @name) -------------------

def test_error_pages_and_named_locations(start_proxy, site, origin):
    dead = free_port()
    (site / "maint.html").write_text("down for maintenance")
    (site / "spa").mkdir()
    (site / "spa" / "page.html").write_text("the page")
    text = (f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\nerror_page = ["404 /404.html", "502 504 =200 /maint.html"]\n'
              f'[[http.server.location]]\nrule = "/"\nfile_server = {{ root = "{site}" }}\n'
              f'[[http.server.location]]\nrule = "/api/"\nproxy_url = "http://127.0.0.1:{dead}"\n'
              f'[[http.server.location]]\nrule = "/fallback/"\nproxy_url = "http://127.0.0.1:{dead}"\n'
              f'error_page = ["502 = @static"]\n'
              f'[[http.server.location]]\nrule = "/spa/"\n'
              f'file_server = {{ root = "{site}", try_paths = ["{{path}}.html", "@app"] }}\n'
              f'[[http.server.location]]\nrule = "/gone/"\nfile_server = {{ root = "{site}", try_paths = ["=410"] }}\n'
              f'[[http.server.location]]\nrule = "/loop/"\nfile_server = {{ root = "{site}" }}\n'
              f'error_page = ["404 /loop/again"]\n'
              f'[[http.server.location]]\nrule = "@static"\nstatic_response = "from the named location"\n'
              f'[[http.server.location]]\nrule = "@app"\nproxy_url = "http://127.0.0.1:{origin.port}"\n')
    p, port = web(start_proxy, text)
    head, body = get(port, "/nothing-here")  # the server's page, with the error's status
    assert head.startswith(b"HTTP/1.1 404") and body == b"custom not found"
    head, body = get(port, "/api/x")  # =200: the page's status forced
    assert head.startswith(b"HTTP/1.1 200") and body == b"down for maintenance"
    head, body = get(port, "/fallback/x")  # '=': the named location's own status; its page replaces the server's
    assert head.startswith(b"HTTP/1.1 200") and body == b"from the named location"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # a body before the error: read, kept alive
        s.sendall(b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 200") and body == b"down for maintenance"
        head, body = get(port, "/index.html", sock=s)
        assert body == b"<h1>home</h1>"
    head, body = get(port, "/spa/whoami")  # try_paths' @name: the app answers, the path kept
    assert head.startswith(b"HTTP/1.1 200") and body == b"hello from origin-A"  # (asked for /spa/whoami)
    head, body = get(port, "/spa/page")  # found first: page.html
    assert body == b"the page"
    head, _ = get(port, "/gone/x")  # try_paths' =410
    assert head.startswith(b"HTTP/1.1 410")
    head, _ = get(port, "/loop/x")  # an error page that errs again: given up after 10 redirects
    assert head.startswith(b"HTTP/1.1 404")
    head, body = get(port, "/@static")  # a named location is no path
    assert head.startswith(b"HTTP/1.1 404") and body == b"custom not found"
    assert "-> @static" in p.wait_log("-> /maint.html")  # (the access log says where an answer came from)


@pytest.mark.parametrize("extra,path,says", [
    ('error_page = ["404 @nowhere"]\n', "http.server[0].error_page[0]", "no location named @nowhere"),
    ('error_page = ["200 /x"]\n', "http.server[0].error_page[0]", "expected an error page like"),
    ('error_page = ["404"]\n', "http.server[0].error_page[0]", "expected an error page like"),
])
def test_error_page_config_errors(tmp_path, extra, path, says):
    conf = tmp_path / "c.toml"
    conf.write_text(f'[[http.server]]\nbind = "127.0.0.1:1"\n{extra}[[http.server.location]]\nrule = "/"\n'
                    f'static_response = "x"\n')
    with pytest.raises(ConfigError) as e:
        config.load(str(conf))
    assert e.value.path == path and says in e.value.message, str(e.value)


def test_try_paths_names_and_statuses_come_last(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(f'[[http.server]]\nbind = "127.0.0.1:1"\n[[http.server.location]]\nrule = "/"\n'
                    f'file_server = {{ root = "{tmp_path}", try_paths = ["@app", "/x"] }}\n'
                    f'[[http.server.location]]\nrule = "@app"\nstatic_response = "x"\n')
    with pytest.raises(ConfigError, match="comes last in try_paths"):
        config.load(str(conf))
    conf.write_text('[[http.server]]\nbind = "127.0.0.1:1"\n[[http.server.location]]\nrule = "@only"\n'
                    'static_response = "x"\n')
    with pytest.raises(ConfigError, match="not only named ones"):
        config.load(str(conf))


def test_trace_is_refused_and_never_reaches_an_upstream(start_proxy, origin):
    """TRACE echoes a request back, its cookies and credentials included (cross-site tracing):
    405, as nginx answers it, before any location; the upstream never sees it."""
    p = start_proxy(config=f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                           f'proxy_url = "http://127.0.0.1:{origin.port}"\n', bind=False)
    hits = origin.hits
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        head, _ = get(p.port, "/whoami", method="TRACE", headers="Cookie: secret=1\r\n", sock=s)
        assert head.startswith(b"HTTP/1.1 405 "), head
        assert get(p.port, "/whoami", sock=s)[1] == b"origin-A"  # (the same connection serves on)
    assert origin.hits == hits + 1


def test_client_max_body_size_refuses_larger_bodies_with_413(start_proxy, origin):
    """As nginx's client_max_body_size (1m by default; a location may say otherwise, 0: no
    limit): a Content-Length over it is answered 413 before a byte of the body is read (no
    100 Continue, nothing sent upstream); a chunked body is cut with 413 once it passes it;
    HTTP/2 alike. A body within it goes on."""
    import hashlib

    p = start_proxy(config=f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\nclient_max_body_size = "64k"\n'
                           f'[[http.server.location]]\nrule = "/big/"\nclient_max_body_size = 0\n'
                           f'proxy_url = "http://127.0.0.1:{origin.port}"\n'
                           f'[[http.server.location]]\nrule = "/files/"\nstatic_response = "ok"\n'
                           f'[[http.server.location]]\nproxy_url = "http://127.0.0.1:{origin.port}"\n', bind=False)
    hits = origin.hits
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\nExpect: 100-continue\r\n\r\n")
        answer = recv_all(s)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"client_max_body_size (65536 bytes)" in answer, answer
    assert b"100 Continue" not in answer and origin.hits == hits
    for path in ("/up", "/files/x"):  # proxied, or read to be dropped: cut all the same
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            try:
                for _ in range(10):
                    s.sendall(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
            except OSError:
                pass
            s.shutdown(socket.SHUT_WR)
            answer = recv_all(s)
        assert answer.startswith(b"HTTP/1.1 413 ") and b"larger than client_max_body_size" in answer, (path, answer)
    body = os.urandom(65536)
    r = subprocess.run(["curl", "-sS", "--max-time", "20", "--data-binary", "@-", f"http://127.0.0.1:{p.port}/up"],
                       input=body, capture_output=True, timeout=30)
    assert r.stdout == f"65536 {hashlib.sha256(body).hexdigest()}".encode(), r
    big = os.urandom(1 << 20)
    r = subprocess.run(["curl", "-sS", "--max-time", "20", "--data-binary", "@-", "-o", "/dev/null", "-w",
                        "%{http_code}", f"http://127.0.0.1:{p.port}/up"], input=big, capture_output=True, timeout=30)
    assert r.stdout == b"413", r
    from test_http2 import Client  # (HTTP/2: the answer, then RST_STREAM NO_ERROR, as RFC 9113 8.1 lets a server)

    c = Client(p.port)
    for length in (b"1048576", None):
        sid = c.request("/up", method="POST", end=False, headers=[(b"content-length", length)] if length else [])
        for at in range(0, 60000, 15000):
            c.conn.send_data(sid, big[at:at + 15000])
        c.send()
        if length is None:  # (past 64 KiB once the server's window lets the rest go)
            c.pump(lambda: sid in c.ended or c.conn.local_flow_control_window(sid) >= 10000)
            if sid not in c.ended:
                c.conn.send_data(sid, big[60000:70000])
                c.send()
        c.pump(lambda: sid in c.ended)
        assert c.heads[sid][b":status"] == b"413", (length, c.events[-4:])
    for args in ([], ["--http2-prior-knowledge"]):
        r = subprocess.run(["curl", "-sS", "--max-time", "20", *args, "--data-binary", "@-",
                            f"http://127.0.0.1:{p.port}/big/x"], input=big, capture_output=True, timeout=30)
        assert r.stdout == f"{len(big)} {hashlib.sha256(big).hexdigest()}".encode(), (args, r)
    log = p.log()
    assert "Traceback" not in log and "internal error" not in log
