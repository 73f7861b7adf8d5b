"""Real processes and real servers on loopback for the integration tests.

- ``start_proxy(*args, config=...)`` runs ``bin/wmproxy-server`` as a subprocess on a free port
  and stops it (SIGTERM, then SIGKILL) after the test.
- ``origin`` / ``origin_b`` / ``origin6`` are threaded HTTP/1.1 servers (keep-alive) on
  127.0.0.1 and ::1; ``tls_origin`` the same over TLS with a trustme CA.
- ``echo_server`` reads until EOF, then answers with what it got (for half-close).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
IN_NETNS = os.environ.get("WMPROXY_NETNS") == "1"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()
# pytest-xdist's workers (make test runs several) share the namespace's ports: each hands out its
# own residue class of them, so two workers never give out the same port
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    """A port nothing is bound to, for a server a test starts later. Taken below the kernel's
    ephemeral range: a port that bind(0) hands out can be taken, before the server binds it,
    as the local port of any outgoing connection (and then stays in TIME_WAIT for a minute:
    "Address already in use"); ports below the range are never used that way. Not the same
    port twice in one test run, nor one another xdist worker may hand out."""
    for _ in range(200):
        port = random.randrange(10000, _EPHEMERAL_LOW)
        port -= (port - _WORKER) % _WORKERS
        if port in _handed_out or port < 10000:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(family, socket.SOCK_STREAM) as s:  # (a crowded range: what the kernel gives)
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class Proc:
    """A wmproxy process under test."""

    def __init__(self, args: list[str], port: int, tmp: Path, env: dict | None = None,
                 program: str = "wmproxy-server", name: str = "", cwd: str | None = None) -> None:
        self.port = port
        self.log_path = tmp / f"{name or f'wmproxy-{port}'}.log"
        self._log = open(self.log_path, "wb")
        env = {**os.environ, **(env or {})}
        self._ready: socket.socket | None = None  # where it says READY=1, as to systemd (unless the test listens)
        if "NOTIFY_SOCKET" not in env:
            Proc._count += 1
            address = f"@wmproxy-test-{os.getpid()}-{Proc._count}"  # (abstract: nothing left on disk)
            self._ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._ready.bind("\0" + address[1:])
            env["NOTIFY_SOCKET"] = address
        self.popen = subprocess.Popen([sys.executable, str(ROOT / "bin" / program), *args], stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env, cwd=cwd)

    _count = 0

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the process says READY=1: every listener of its configuration listens then (a
        port that answers says only that its own listener does)."""
        assert self._ready is not None, "the test listens on NOTIFY_SOCKET itself, or it was ready already"
        deadline = time.monotonic() + timeout
        self._ready.settimeout(0.1)
        while time.monotonic() < deadline:
            exited = self.popen.poll() is not None  # (--daemon: it exits once its daemon is ready)
            try:
                while True:
                    if b"READY=1" in self._ready.recv(4096).split(b"\n"):
                        self._ready.close()  # (what it says later, on reloads, goes nowhere)
                        self._ready = None
                        return
            except socket.timeout:
                pass
            if exited:
                raise RuntimeError(f"process exited with {self.popen.returncode} before it was ready:\n{self.log()}")
        raise TimeoutError(f"not ready after {timeout}s:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        """The log once it contains ``text`` (lines are written when a connection ends)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the log:\n{log}")
            time.sleep(0.05)
        return log

    def stop(self) -> int:
        try:  # a master's workers (workers > 1): none may outlive the test
            children = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            child.kill()
        self._log.close()
        if self._ready is not None:
            self._ready.close()
        return self.popen.returncode


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) wmproxy[.a-z]*: ")


def assert_logs_clean(procs, seed=None, lines: bool = True) -> None:
    """What a fuzz run leaves: each process alive, no internal error in its log, and (``lines``)
    every log line whole and one of ours (a peer's bytes never forge a line or carry a control)."""
    for proc in procs:
        log = proc.log()
        assert proc.popen.poll() is None, (seed, log[-3000:])
        assert "internal error" not in log and "Traceback" not in log, (seed, log[-3000:])
        if lines:
            bad = [line for line in log.splitlines() if not (line.isprintable() and LOG_LINE.match(line))]
            assert not bad, (seed, bad[:5])


@pytest.fixture
def start_proxy(tmp_path):
    procs: list[Proc] = []

    def start(*args: str, config: str | None = None, env: dict | None = None, wait: bool = True,
              bind: bool = True) -> Proc:
        """Start wmproxy-server; unless ``bind`` is False or the config has '{port}', it gets
        --bind on a free port."""
        port = free_port()
        argv = list(args)
        if config is not None:
            path = tmp_path / f"conf-{port}.toml"
            path.write_text(config.replace("{port}", str(port)))
            argv = ["-c", str(path), *argv]
        if bind and (config is None or "{port}" not in config):
            argv = ["--bind", f"127.0.0.1:{port}", *argv]
        p = Proc(argv, port, tmp_path, env)
        procs.append(p)
        if wait and "NOTIFY_SOCKET" in (env or {}):
            wait_port(port, proc=p.popen)
        elif wait:
            p.wait_ready()
        return p

    yield start
    for p in procs:
        p.stop()


# -- origin servers ------------------------------------------------------------------------

BIG = 50 * 1024 * 1024


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "origin"

    def log_message(self, *a):  # quiet
        pass

    def _reply(self, body: bytes, status: int = 200, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                line = self.rfile.readline()
                if not line:  # the proxy cut the upload (a test of a client's broken body): nothing to answer
                    raise ConnectionAbortedError("request body cut")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self):
        self.server.hits += 1
        self.server.last_headers = dict(self.headers.items())
        if self.path == "/whoami":
            self._reply(self.server.name.encode())
        elif self.path == "/headers":
            self._reply("\n".join(f"{k}: {v}" for k, v in self.headers.items()).encode())
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.server.big)))
            self.end_headers()
            self.wfile.write(self.server.big)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":
            time.sleep(3)
            self._reply(b"late")
        else:
            self._reply(b"hello from " + self.server.name.encode())

    do_HEAD = do_GET

    def do_POST(self):
        self.server.hits += 1
        body = self._read_body()
        self._reply(f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())

    do_PUT = do_POST


class Origin(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client (the proxy) went away: the test says whether it should have
        super().handle_error(request, client_address)


class Origin6(Origin):
    address_family = socket.AF_INET6


def _serve(name: str, host="127.0.0.1", tls: ssl.SSLContext | None = None):
    srv = (Origin6 if ":" in host else Origin)((host, 0), OriginHandler)
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    srv.name, srv.hits, srv.big, srv.last_headers = name, 0, b"", {}
    srv.port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _origin_fixture(name: str, host: str = "127.0.0.1"):
    @pytest.fixture
    def fixture():
        srv = _serve(name, host)
        yield srv
        srv.shutdown()
        srv.server_close()

    return fixture


origin = _origin_fixture("origin-A")
origin_b = _origin_fixture("origin-B")
origin6 = _origin_fixture("origin-v6", "::1")


@pytest.fixture(scope="session")
def ca():
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


def write_cert(ca, directory: Path, stem: str, *names: str) -> None:
    """A certificate of ``ca`` for ``names``: ``stem``.pem (chain) and ``stem``.key in ``directory``."""
    cert = ca.issue_cert(*names)
    cert.private_key_pem.write_to_path(str(directory / f"{stem}.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / f"{stem}.pem"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a center server certificate for center.test and 127.0.0.1, and another CA."""
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    write_cert(ca, d, "server", "center.test", "127.0.0.1")
    trustme.CA().cert_pem.write_to_path(str(d / "other-ca.pem"))
    return d


@pytest.fixture
def tls_origin(ca, tmp_path):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    srv = _serve("origin-TLS", tls=ctx)
    srv.ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(srv.ca_file))
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="session")
def big_blob():
    return os.urandom(BIG)


class TcpServer:
    """A threaded TCP server on 127.0.0.1 running ``serve(conn)`` per connection; ``port``."""

    def __init__(self, serve, backlog: int = 256, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn) -> None:
        with conn:
            try:
                self.serve(conn)
            except OSError:
                pass  # the client went away: its test says whether that was expected

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo_server():
    """Reads until the client half-closes, then sends back 'got N sha256' and closes."""

    def serve(conn):
        h, n = hashlib.sha256(), 0
        while data := conn.recv(65536):
            h.update(data)
            n += len(data)
        conn.sendall(f"got {n} {h.hexdigest()}".encode())

    server = TcpServer(serve)
    yield server
    server.close()


def next_head(conn, buf: bytes) -> tuple[bytes | None, bytes]:
    """For the raw origins of the tests: the next head from ``conn`` (``buf``: bytes read
    before) without its CRLF CRLF, and what followed it; (None, buf) when the peer closes first."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


@pytest.fixture
def early_hints():
    """An origin that answers every request of a keep-alive connection with an interim 103
    (EARLY_HINTS) and then '200 OK' with the body 'after hints'."""

    def serve(conn):
        buf = b""
        while True:
            head, buf = next_head(conn, buf)
            if head is None:
                return
            conn.sendall(EARLY_HINTS + b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nafter hints")

    server = TcpServer(serve)
    yield server
    server.close()


@pytest.fixture
def mirror():
    """Echoes every byte back as it arrives; half-closes when the client does. Its port."""

    def serve(conn):
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    server = TcpServer(serve)
    yield server.port
    server.close()


def tunnel(proxy_port: int, how: str, target: int) -> socket.socket:
    """A tunnel to 127.0.0.1:``target`` through the proxy on ``proxy_port``, opened with
    ``how``: "connect" (HTTP CONNECT) or "socks5"."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=60)
    if how == "connect":
        s.sendall(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        return s
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + target.to_bytes(2, "big"))
    reply = b""
    while len(reply) < 10 and (chunk := s.recv(10 - len(reply))):
        reply += chunk
    assert reply[:2] == b"\x05\x00", reply
    return s


def mirror_check(s: socket.socket, size: int) -> str:
    """Send ``size`` random bytes on ``s`` (a thread; then a half-close) while reading what a
    mirror sends back until EOF. "" when the echo matches, else what went wrong."""
    data = os.urandom(size)
    sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
    sender.start()
    h, n = hashlib.sha256(), 0
    while chunk := s.recv(262144):
        h.update(chunk)
        n += len(chunk)
    sender.join()
    s.close()
    return "" if (n, h.digest()) == (size, hashlib.sha256(data).digest()) else f"{size}: got {n}"


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout)), *args],
                          capture_output=True, timeout=timeout + 5)


def recv_all(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def drip(port: int, pieces, head: bytes = b"", every: float = 0.25) -> tuple[bytes, float]:
    """Slowloris: send ``head``, then each of ``pieces`` every ``every`` seconds until the
    server answers or closes; -> (its first answer bytes, seconds from the first piece)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if head:
            s.sendall(head)
        started = time.monotonic()
        s.setblocking(False)
        answer = b""
        for piece in pieces:
            try:
                s.send(piece)
            except OSError:
                break
            time.sleep(every)
            try:
                answer = s.recv(65536)
                break
            except BlockingIOError:
                pass
        return answer, time.monotonic() - started


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One Content-Length-framed response from ``sock`` -> (head, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise EOFError(f"closed after {buf!r}")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed mid-body")
        body += data
    return head, body


def control(port: int, method: str, path: str, token: str = "", host: str = "127.0.0.1") -> tuple[int, bytes]:
    """One request to a control API on host:port."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_get(port: int, url: str, headers: str = "") -> tuple[bytes, bytes]:
    """A one-shot absolute-form GET through the HTTP proxy on ``port`` -> (head, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
        return read_response(s)


class UdpEcho:
    """Answers every datagram with ``prefix`` + the datagram, from a thread."""

    def __init__(self, prefix: bytes = b"", host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.prefix = prefix
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
                self.sock.sendto(self.prefix + data, addr)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp_echo():
    made = []

    def make(prefix: bytes = b"", host: str = "127.0.0.1") -> UdpEcho:
        made.append(UdpEcho(prefix, host))
        return made[-1]

    yield make
    for e in made:
        e.close()


def websocket_echo(ssl_context=None):
    """A websockets echo server on 127.0.0.1 (in a thread); ``.socket.getsockname()[1]`` is
    its port, ``.shutdown()`` stops it."""
    from websockets.sync.server import serve

    def echo(ws):
        for message in ws:
            ws.send(message)

    server = serve(echo, "127.0.0.1", 0, ssl=ssl_context, max_size=None, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- a center server and client ------------------------------------------------------------

class Pair:
    """A center server and a center client on free ports, with configs in tmp_path."""

    def __init__(self, tmp_path, certs, server_extra: str = "", client_extra: str = "", start_client: bool = True,
                 server_top: str = "", heartbeat: str = "1s"):
        self.tmp = tmp_path
        self.heartbeat = heartbeat
        self.certs = certs
        self.center = free_port()
        self.proxy = free_port()
        self.procs: list[Proc] = []
        self.server_conf = tmp_path / "server.toml"
        self.server_conf.write_text(
            f'grace = "2s"\n{server_top}\n[center]\nbind = "127.0.0.1:{self.center}"\ncert = "{certs}/server.pem"\n'
            f'key = "{certs}/server.key"\nusername = "alice"\npassword = "s3cret"\nheartbeat = "{heartbeat}"\n'
            f'{server_extra}\n')
        self.server = self.start("server", self.server_conf)
        wait_port(self.center, proc=self.server.popen)
        self.client = None
        if start_client:
            self.client = self.start_client(client_extra)

    def client_config(self, extra: str = "", password: str = "s3cret", ca: str = "ca.pem",
                      server_name: str = "center.test", user: str = "alice", proxy: int | None = None) -> str:
        return (f'grace = "2s"\n[center]\nserver = "127.0.0.1:{self.center}"\nca = "{self.certs}/{ca}"\n'
                f'server_name = "{server_name}"\nusername = "{user}"\npassword = "{password}"\n'
                f'heartbeat = "{self.heartbeat}"\n{extra}\n[proxy]\nbind = "127.0.0.1:{proxy or self.proxy}"\n')

    def start_client(self, extra: str = "", tail: str = "", proxy: int | None = None, **kw) -> Proc:
        """Another center client (its local proxy on ``proxy``, default the pair's)."""
        conf = self.tmp / f"client-{len(self.procs)}.toml"
        conf.write_text(self.client_config(extra, proxy=proxy, **kw) + tail)
        p = self.start("client", conf)
        wait_port(proxy or self.proxy, proc=p.popen)
        return p

    def start(self, which: str, conf) -> Proc:
        p = Proc(["-c", str(conf)], 0, self.tmp, program=f"wmproxy-{which}", name=f"{which}-{len(self.procs)}")
        self.procs.append(p)
        return p

    def wait_link(self, timeout: float = 15) -> None:
        self.client.wait_log("is up", timeout=timeout)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture
def pair(tmp_path, certs):
    made = []

    def make(**kw) -> Pair:
        made.append(Pair(tmp_path, certs, **kw))
        return made[-1]

    yield make
    for p in made:
        p.stop()


# -- HAProxy, the real PROXY protocol peer ----------------------------------------------------

class HAProxy:
    """``haproxy -db`` on a config of frontends and backends (text after its global and defaults
    sections: TCP mode, raw log lines to its output file); ``log()`` reads what it logged."""

    def __init__(self, tmp: Path, sections: str, ports: list[int]) -> None:
        exe = "/usr/sbin/haproxy"
        if not os.path.exists(exe):
            pytest.skip("haproxy is not installed (make test installs it)")
        self.conf = tmp / f"haproxy-{ports[0]}.cfg"
        self.conf.write_text("global\n  log stdout format raw local0\n"
                             "defaults\n  mode tcp\n  log global\n  option tcplog\n  timeout connect 5s\n"
                             "  timeout client 30s\n  timeout server 30s\n" + sections)
        self.log_path = tmp / f"haproxy-{ports[0]}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen([exe, "-f", str(self.conf), "-db"], stdout=self._log, stderr=subprocess.STDOUT)
        for port in ports:
            wait_port(port, proc=self.popen)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


@pytest.fixture
def haproxy(tmp_path):
    """``haproxy(sections, *ports)`` starts one, waiting for the listed frontend ports."""
    running: list[HAProxy] = []

    def start(sections: str, *ports: int) -> HAProxy:
        running.append(HAProxy(tmp_path, sections, list(ports)))
        return running[-1]

    yield start
    for h in running:
        h.stop()


def source_connection(port: int, source: str, timeout: float = 20) -> socket.socket:
    """A connection to 127.0.0.1:port from the loopback address ``source`` (127.0.0.0/8 is all ours)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


# -- a real browser (the dashboard) ------------------------------------------------------------

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    """Debian's chromium, headless, driven by selenium through chromedriver."""
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromedriver are needed (Debian: chromium chromium-driver; make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1600",
                "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
