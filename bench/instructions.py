"""User-space instructions per small proxied GET (valgrind callgrind): a count that does not
drift with the machine's speed, for comparing builds and peers where the rates move by 10-30%.

Each server runs under callgrind (not pinned; time does not matter here); ten keep-alive
connections send GETs in lock step to an nginx origin (sent, then answered, ten at a time).
After 500 requests the counters are zeroed, then REQUESTS more are counted:

- wmproxy's forward proxy (absolute-form requests, Host the URL's as curl sends it, and again
  with Host naming the proxy as wrk sends it: that Host line is replaced), pproxy's, and
  bench/floor.py (the same gevent loop parsing nothing: the floor of this design);
- wmproxy's reverse proxy (a location with proxy_url to the origin);
- wmproxy's static files (a file_server location, the same 17-byte file) beside the static
  floor (bench/floor.py with no origin: the same loop answering those bytes unparsed);
- an http mapping's center server (map_http_bind, Host routing), its client and the origin
  running outside callgrind;
- the static file over h2c (h2load -c10 -m10).

Instructions are not time: the kernel's part (the syscalls) is not counted, and code that
misses the caches more runs slower per instruction (see docs/BENCHMARKS.md).

    bench/instructions.py [--requests N] [--root CHECKOUT]   (through bench/run: --only instructions)
"""

from __future__ import annotations

import glob
import os
import re
import socket
import subprocess
import sys
import time
from functools import partial

from bench import ROOT, VENV_BIN, free_port, wait_port

WARMUP = 500
CONNECTIONS = 10


def _drive(port: int, request: bytes, n: int, end: bytes) -> None:
    conns = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(CONNECTIONS)]
    try:
        for _ in range(n // CONNECTIONS):
            for c in conns:
                c.sendall(request)
            for c in conns:
                data = b""
                while not data.endswith(end):
                    chunk = c.recv(65536)
                    if not chunk:
                        raise ConnectionError(f"closed after {data[:200]!r}")
                    data += chunk
    finally:
        for c in conns:
            c.close()


def count(b, name: str, cmd: list[str], port: int, request: bytes, requests: int, before=None, drive=None) -> float:
    """Instructions per request of the server ``cmd`` (listening on ``port``) under callgrind;
    ``before()``, when given, once it runs (what must start after it: it returns that process);
    ``drive(n)`` sends n requests (default: ``request`` over CONNECTIONS keep-alive connections)."""
    if drive is None:
        drive = partial(_drive, port, request, end=b"hello from nginx\n")
    slug = re.sub(r"\W+", "-", name)
    out = b.tmp / f"callgrind-{slug}.out"
    log = b.tmp / f"callgrind-{slug}.log"
    with open(log, "wb") as f:
        p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                             stdout=f, stderr=subprocess.STDOUT)
    helper = None
    try:
        try:
            if before is not None:
                helper = before()
            wait_port(port, 120)
        except TimeoutError:
            raise RuntimeError(f"{name} did not start under callgrind: {log.read_text()[-600:]}") from None
        drive(WARMUP)
        subprocess.run(["callgrind_control", "--zero", str(p.pid)], capture_output=True, timeout=60)
        drive(requests)
        subprocess.run(["callgrind_control", "--dump", str(p.pid)], capture_output=True, timeout=60)
        dumps = sorted(glob.glob(f"{out}*"), key=os.path.getmtime)
        total = int(re.search(r"^(?:summary|totals):\s+(\d+)", open(dumps[-1]).read(), re.M).group(1))
    finally:
        b.stop(p)  # (the counts needed were dumped above)
        if helper is not None:
            b.stop(helper)
    per = total / requests
    print(f"  {name:<28} {per:10,.0f} instructions per request")
    b.results.setdefault("instructions_per_request", {})[name] = round(per)
    return per


def run(b, requests: int = 2000, root=ROOT) -> None:
    origin = b.nginx()
    print(f"\ninstructions per small GET (callgrind, user space, {requests} requests over {CONNECTIONS} "
          "keep-alive connections):")
    server = [sys.executable, str(root / "bin" / "wmproxy-server")]
    absolute = f"GET http://127.0.0.1:{origin}/small.txt HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n\r\n".encode()
    port = free_port()
    count(b, "floor (bench/floor.py)", [sys.executable, str(ROOT / "bench" / "floor.py"), str(port), str(origin)],
          port, absolute, requests)
    port = free_port()
    wm = count(b, "wmproxy forward proxy", [*server, "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
               port, absolute, requests)
    port = free_port()
    count(b, "wmproxy forward, wrk's Host", [*server, "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
          port, absolute.replace(f"Host: 127.0.0.1:{origin}".encode(), f"Host: 127.0.0.1:{port}".encode()), requests)
    port = free_port()
    pp = count(b, "pproxy", [str(VENV_BIN / "pproxy"), "-l", f"http+socks5://127.0.0.1:{port}"], port, absolute,
               requests)
    web(b, "wmproxy reverse proxy", root, f'proxy_url = "http://127.0.0.1:{origin}"', requests)
    port = free_port()
    count(b, "static floor (bench/floor.py)", [sys.executable, str(ROOT / "bench" / "floor.py"), str(port)], port,
          f"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(), requests)
    static = f'file_server = {{ root = "{b.www()}" }}'
    web(b, "wmproxy static file", root, static, requests)
    mapping(b, requests, root, origin)
    web(b, "wmproxy static file over h2c", root, static, requests, h2=True)
    print(f"  wmproxy forward proxy / pproxy: {wm / pp:.2f}x the instructions")


def web(b, name: str, root, location: str, requests: int, h2: bool = False) -> float:
    """An [http] server with one ``location`` (the body of its table); with ``h2``, driven by
    h2load over h2c (10 connections, 10 streams each) instead of the HTTP/1.1 driver."""
    port = free_port()
    conf = b.tmp / f"instructions-{re.sub(r'[^a-z0-9]+', '-', name)}.toml"
    conf.write_text(f'log_level = "warning"\n[[http.server]]\nbind = "127.0.0.1:{port}"\n'
                    f'[[http.server.location]]\n{location}\n')
    def h2load(n: int) -> None:
        done = subprocess.run(["h2load", "-c10", "-m10", f"-n{n}", f"http://127.0.0.1:{port}/small.txt"],
                              capture_output=True, text=True, timeout=1200).stdout
        if f"{n} succeeded" not in done:
            raise RuntimeError(f"h2load: {done[-400:]}")

    return count(b, name, [sys.executable, str(root / "bin" / "wmproxy-server"), "-c", str(conf)], port,
                 f"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(), requests,
                 drive=h2load if h2 else None)


def mapping(b, requests: int, root, origin: int) -> float:
    """An http mapping: its center server under callgrind, the client (and the origin) not."""
    from center import certs

    tmp = certs(b.tmp)
    center, web = free_port(), free_port()
    server, client = tmp / "instructions-map-server.toml", tmp / "instructions-map-client.toml"
    server.write_text(f'log_level = "warning"\n[center]\nbind = "127.0.0.1:{center}"\ncert = "{tmp}/server.pem"\n'
                      f'key = "{tmp}/server.key"\nmap_http_bind = "127.0.0.1:{web}"\n')
    client.write_text(f'log_level = "warning"\n[center]\nserver = "127.0.0.1:{center}"\nca = "{tmp}/ca.pem"\n'
                      f'server_name = "center.bench"\n[[mappings]]\nname = "web"\nmode = "http"\n'
                      f'local_addr = "127.0.0.1:{origin}"\ndomain = "web.bench"\n')

    def with_client():  # (started once the server under callgrind listens; then until the mapping answers)
        wait_port(center, 120)
        p = b.start("instructions-map-client", [sys.executable, str(root / "bin" / "wmproxy-client"), "-c",
                                                str(client)], web, wait=False)
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", web), timeout=30) as s:
                    s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: web.bench\r\nConnection: close\r\n\r\n")
                    got = b""
                    while chunk := s.recv(65536):
                        got += chunk
                if got.endswith(b"hello from nginx\n"):
                    return p
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the http mapping did not answer within 120 s")
            time.sleep(0.5)

    cmd = [sys.executable, str(root / "bin" / "wmproxy-server"), "-c", str(server)]
    return count(b, "wmproxy http mapping (server)", cmd, web, b"GET /small.txt HTTP/1.1\r\nHost: web.bench\r\n\r\n",
                 requests, before=with_client)
