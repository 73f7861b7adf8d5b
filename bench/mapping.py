"""Mapping benchmark (intranet penetration), in one run:

- iperf3 single-stream throughput through a tcp mapping (public port -> TLS link -> client ->
  iperf3 server), beside iperf3 direct and through a chain of two socat relays;
- requests/s and p99 of small GETs (wrk, keep-alive) through an http mapping on the server's
  map_http_bind (routed by Host), beside the same nginx reached directly.

Both wmproxy processes and the socat chain on CPU 0; iperf3, wrk and nginx on CPU 1.
"""

from __future__ import annotations

import time

from bench import LOAD_CPU, free_port, wait_port
from center import start_mapped


def start_mapping_pair(b, iperf_port: int, nginx_port: int) -> tuple[int, int]:
    """A tcp mapping of iperf3 and an http mapping of nginx through a TLS link. Returns (the
    tcp mapping's public port, map_http_bind's port)."""
    public, web = free_port(), free_port()
    start_mapped(b, "map", f'[[mappings]]\nname = "iperf"\nmode = "tcp"\nlocal_addr = "127.0.0.1:{iperf_port}"\n'
                           f'remote_bind = "127.0.0.1:{public}"\n'
                           f'[[mappings]]\nname = "web"\nmode = "http"\nlocal_addr = "127.0.0.1:{nginx_port}"\n'
                           f'domain = "web.bench"\n', public, f'map_http_bind = "127.0.0.1:{web}"')
    wait_port(web)
    return public, web


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
    nginx = b.run_wrk("nginx direct", [f"http://127.0.0.1:{nginx_port}/small.txt"], "mapping_http")
    mapped = b.run_wrk("wmproxy http mapping", ["-H", "Host: web.bench", f"http://127.0.0.1:{web}/small.txt"],
                       "mapping_http")
    if nginx:
        print(f"  ratio: http mapping / nginx direct {mapped / nginx:.2f}x")
