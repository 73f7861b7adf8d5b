"""HTTP/2 benchmark (#27; named h2bench: bench/ is on the path, and h2 is the library): h2load against nginx with http2 and against wmproxy, side by side in
alternating rounds, the server under test pinned to CPU 0 and h2load (and the origin) on CPU 1:

- a small static file (17 bytes) over h2c (prior knowledge): nginx's static vs wmproxy's file_server;
- the same file reverse-proxied to an nginx origin (HTTP/1.1 upstream): nginx vs wmproxy.

h2load opens ``--connections`` connections with 10 concurrent streams each, for ``--seconds``.
Printed: requests/s and CPU per request (user + system of the server's processes), and the
ratios with their goal (wmproxy's static files at least 0.3x nginx's requests/s over h2); first,
the floor the h2 library sets: its own CPU per request (a request's HEADERS in, the answer's
HEADERS and DATA out, in memory, no sockets, on the proxy CPU).
"""

from __future__ import annotations

import re
import subprocess
import sys

from bench import LOAD_BOUND, LOAD_CPU, PROXY_CPU
import web
from web import wmproxy_web

STREAMS = 10  # concurrent streams per connection (h2load -m)


def h2load(b, name: str, url: str, procs) -> float:
    out, used, load = b.load(["h2load", "-t1", f"-c{b.connections}", f"-m{STREAMS}", f"-D{b.seconds}", url], procs)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not rps or not done or not int(done.group(2)):
        print(f"  {name}: h2load failed: {out[-400:]}")
        return 0.0
    n = int(done.group(2))
    b.last_cpu = round(used * 1e6 / n, 1)
    failed = f"   {done.group(3)} failed" if int(done.group(3)) else ""
    bound = f"   (load CPU {load:.0%} busy: h2load and the origin bound req/s)" if load >= LOAD_BOUND else ""
    print(f"  {name:<26} CPU {b.last_cpu:5.1f} us/request   {float(rps.group(1)):9.0f} req/s{failed}{bound}")
    b.results.setdefault("h2", {})[name] = {"rps": round(float(rps.group(1))), "cpu_us_per_request": b.last_cpu,
                                            "load_cpu_busy": round(load, 3)}
    return float(rps.group(1))


def nginx_h2(b, name: str, body: str, extra: str = "") -> int:
    return b.start_nginx(name, body, PROXY_CPU, extra, " http2")  # (h2c with prior knowledge)


FLOOR = r"""
import time, h2.config, h2.connection, h2.events
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
s = h2.connection.H2Connection(h2.config.H2Configuration(
    client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False,
    normalize_inbound_headers=False))
c.initiate_connection(); s.initiate_connection()
for _ in range(2):
    s.receive_data(c.data_to_send()); c.receive_data(s.data_to_send())
spent, n = 0.0, 5000
for _ in range(n):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(b":method", b"GET"), (b":path", b"/small.txt"), (b":scheme", b"http"),
                         (b":authority", b"127.0.0.1:8080"), (b"user-agent", b"h2load nghttp2/1.52.0")], end_stream=True)
    data = c.data_to_send()
    t = time.perf_counter()
    events = s.receive_data(data)
    sid = next(e for e in events if isinstance(e, h2.events.RequestReceived)).stream_id
    s.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"17"),
                         (b"etag", b'"18eee725-11"'), (b"last-modified", b"Mon, 07 Dec 2026 07:10:47 GMT")])
    s.send_data(sid, b"hello from nginx\n", end_stream=True)
    out = s.data_to_send()
    spent += time.perf_counter() - t
    for e in c.receive_data(out):
        if isinstance(e, h2.events.DataReceived):
            c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
print(f"{spent / n * 1e6:.1f}")
"""


def floor(b) -> None:
    out = subprocess.run(["taskset", "-c", PROXY_CPU, sys.executable, "-c", FLOOR], capture_output=True, text=True,
                         timeout=120)
    try:
        us = float(out.stdout.strip())
    except ValueError:
        print(f"  the h2 library's floor: failed: {out.stderr[-300:]}")
        return
    print(f"  the h2 library alone (server side, in memory): {us:.1f} us/request: at most {1e6 / us:,.0f} req/s "
          f"on one core before any of wmproxy's work")
    b.results.setdefault("h2", {})["h2 library floor"] = {"cpu_us_per_request": us}


def run(b) -> None:
    origin = b.nginx()
    url = "/small.txt"
    print(f"\nHTTP/2 (h2c), small GETs, h2load -c{b.connections} -m{STREAMS} {b.seconds}s (server on CPU {PROXY_CPU}; "
          f"h2load and the origin on CPU {LOAD_CPU}; one server under test running at a time):")
    floor(b)
    proxied = 'location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }'
    pool = f"upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}"
    runs = [
        ("nginx h2 static", lambda: web.measure(b, "nginx h2 static", lambda: nginx_h2(
            b, "nginx-h2-static", f"location / {{ root {b.www()}; }}"), url, h2load)),
        ("wmproxy h2 static", lambda: web.measure(b, "wmproxy h2 static", lambda: wmproxy_web(
            b, "wmproxy-h2-static", f'file_server = {{ root = "{b.www()}" }}'), url, h2load)),
        ("nginx h2 -> nginx", lambda: web.measure(b, "nginx h2 -> nginx", lambda: nginx_h2(
            b, "nginx-h2-proxy", proxied, pool), url, h2load)),
        ("wmproxy h2 -> nginx", lambda: web.measure(b, "wmproxy h2 -> nginx", lambda: wmproxy_web(
            b, "wmproxy-h2-proxy", f'proxy_url = "http://127.0.0.1:{origin}"'), url, h2load)),
    ]
    b.in_rounds("h2", runs, [("wmproxy h2 static / nginx h2 static", "wmproxy h2 static", "nginx h2 static", 0.3),
                             ("wmproxy h2 -> nginx / nginx h2 -> nginx", "wmproxy h2 -> nginx", "nginx h2 -> nginx",
                              0.0)],
                [("wmproxy h2 static / nginx h2 static", "wmproxy h2 static", "nginx h2 static", 0.0),
                 ("wmproxy h2 -> nginx / nginx h2 -> nginx", "wmproxy h2 -> nginx", "nginx h2 -> nginx", 0.0)])
