"""Mapping benchmark (intranet penetration), in one run:

- iperf3 single-stream throughput through a tcp mapping (public port -> TLS link -> client ->
  iperf3 server), beside iperf3 direct and through a chain of two socat relays;
- requests/s and p99 of small GETs (wrk, keep-alive) through an http mapping on the server's
  map_http_bind (routed by Host), beside the same nginx reached directly.

Both wmproxy processes and the socat chain on CPU 0; iperf3, wrk and nginx on CPU 1.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

from bench import LOAD_CPU, ROOT, free_port, wait_port
from center import certs


def start_mapping_pair(b, iperf_port: int, nginx_port: int) -> tuple[int, int]:
    """A center server (TLS link, map_http_bind) and a client with a tcp mapping to iperf3 and
    an http mapping to nginx. Returns (tcp mapping's public port, map_http_bind port)."""
    tmp = certs(b.tmp)
    center, public, web = free_port(), free_port(), free_port()
    server = tmp / "map-server.toml"
    server.write_text(f'log_level = "warning"\n[center]\nbind = "127.0.0.1:{center}"\ncert = "{tmp}/server.pem"\n'
                      f'key = "{tmp}/server.key"\nmap_http_bind = "127.0.0.1:{web}"\n')
    client = tmp / "map-client.toml"
    client.write_text(f'log_level = "warning"\n[center]\nserver = "127.0.0.1:{center}"\nca = "{tmp}/ca.pem"\n'
                      f'server_name = "center.bench"\n'
                      f'[[mappings]]\nname = "iperf"\nmode = "tcp"\nlocal_addr = "127.0.0.1:{iperf_port}"\n'
                      f'remote_bind = "127.0.0.1:{public}"\n'
                      f'[[mappings]]\nname = "web"\nmode = "http"\nlocal_addr = "127.0.0.1:{nginx_port}"\n'
                      f'domain = "web.bench"\n')
    b.start("map-server", [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "-c", str(server)], center)
    b.start("map-client", [sys.executable, str(ROOT / "bin" / "wmproxy-client"), "-c", str(client)], public)
    wait_port(web)
    return public, web


def wrk_get(b, name: str, port: int, host: str = "") -> float:
    header = ["-H", f"Host: {host}"] if host else []
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{b.connections}", f"-d{b.seconds}s", "--latency", *header,
           f"http://127.0.0.1:{port}/small.txt"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=b.seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if not rps or not p99:
        print(f"  {name}: wrk failed: {out[-300:]}")
        return 0.0
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    note = f"   {bad.group(0)}" if bad else ""
    print(f"  {name:<26} {float(rps.group(1)):9.0f} req/s   p99 {p99_ms:7.2f} ms{note}   ({' '.join(cmd)})")
    b.results.setdefault("mapping_http", {})[name] = {"rps": round(float(rps.group(1))), "p99_ms": round(p99_ms, 2)}
    return float(rps.group(1))


def run(b) -> None:
    iperf_port = free_port()
    b.start("iperf3-server-map", ["iperf3", "-s", "-p", str(iperf_port)], iperf_port, cpu=LOAD_CPU)
    nginx_port = b.nginx()
    public, web = start_mapping_pair(b, iperf_port, nginx_port)
    time.sleep(1.5)  # the link comes up, the mappings are published
    print(f"\ntcp mapping, iperf3 single stream {b.seconds}s (wmproxy and socat on CPU 0, iperf3 on CPU {LOAD_CPU}):")
    direct = b.iperf("direct (map)", iperf_port)
    mid, front = free_port(), free_port()
    b.start("socat-map-2", ["socat", "-b", "65536", f"TCP-LISTEN:{mid},fork,reuseaddr,bind=127.0.0.1",
                            f"TCP:127.0.0.1:{iperf_port}"], mid)
    b.start("socat-map-1", ["socat", "-b", "65536", f"TCP-LISTEN:{front},fork,reuseaddr,bind=127.0.0.1",
                            f"TCP:127.0.0.1:{mid}"], front)
    chain = b.iperf("socat chain (map)", front)
    mapped = b.iperf("wmproxy tcp mapping (TLS)", public)
    if chain and direct:
        print(f"  ratios: tcp mapping / socat chain {mapped / chain:.2f}x, / direct {mapped / direct:.2f}x")
    print(f"\nhttp mapping, small GETs with keep-alive, wrk -c{b.connections} {b.seconds}s (wmproxy on CPU 0; "
          f"wrk and nginx on CPU {LOAD_CPU}):")
    nginx = wrk_get(b, "nginx direct", nginx_port)
    mapped = wrk_get(b, "wmproxy http mapping", web, host="web.bench")
    if nginx:
        print(f"  ratio: http mapping / nginx direct {mapped / nginx:.2f}x")
