"""Mapping benchmark (intranet penetration), in one run, in alternating rounds:

- iperf3 single-stream throughput through a tcp mapping (public port -> TLS link -> client ->
  iperf3 server), beside iperf3 direct, a chain of two plain socat relays and, on an equal
  footing, a chain of two socat with TLS between them (the same path: plain in, TLS across,
  plain out), with the CPU seconds per GiB of each relay pair;
- requests/s, p99 and CPU per request of small GETs (wrk, keep-alive) through an http mapping
  on the server's map_http_bind (routed by Host), beside the same nginx reached directly.

Both wmproxy processes and the socat chains on CPU 0; iperf3, wrk and nginx on CPU 1.
"""

from __future__ import annotations

import time

from bench import LOAD_CPU, free_port, wait_port
from center import measured, certs, start_mapped


def start_mapping_pair(b, iperf_port: int, nginx_port: int) -> tuple[int, int, list]:
    """A tcp mapping of iperf3 and an http mapping of nginx through a TLS link. Returns (the
    tcp mapping's public port, map_http_bind's port, the two processes)."""
    public, web = free_port(), free_port()
    procs = start_mapped(b, "map", f'[[mappings]]\nname = "iperf"\nmode = "tcp"\n'
                                   f'local_addr = "127.0.0.1:{iperf_port}"\nremote_bind = "127.0.0.1:{public}"\n'
                                   f'[[mappings]]\nname = "web"\nmode = "http"\nlocal_addr = "127.0.0.1:{nginx_port}"\n'
                                   f'domain = "web.bench"\n', public, f'map_http_bind = "127.0.0.1:{web}"')
    wait_port(web)
    return public, web, procs


def run(b) -> None:
    iperf_port = free_port()
    b.start("iperf3-server-map", ["iperf3", "-s", "-p", str(iperf_port)], iperf_port, cpu=LOAD_CPU)
    nginx_port = b.nginx()
    public, web, procs = start_mapping_pair(b, iperf_port, nginx_port)
    time.sleep(1.5)  # the link comes up, the mappings are published
    print(f"\ntcp mapping, iperf3 single stream of {b.bytes_total >> 20} MiB (wmproxy and socat on CPU 0, iperf3 "
          f"on CPU {LOAD_CPU}):")
    b.iperf("direct (map)", iperf_port)
    mid, front = free_port(), free_port()
    chain = [b.start("socat-map-2", ["socat", "-b", "65536", f"TCP-LISTEN:{mid},fork,reuseaddr,bind=127.0.0.1",
                                     f"TCP:127.0.0.1:{iperf_port}"], mid),
             b.start("socat-map-1", ["socat", "-b", "65536", f"TCP-LISTEN:{front},fork,reuseaddr,bind=127.0.0.1",
                                     f"TCP:127.0.0.1:{mid}"], front)]
    tmp = certs(b.tmp)
    tls_mid, tls_front = free_port(), free_port()
    tls_chain = [b.start("socat-map-tls-2", ["socat", "-b", "65536",
                                             f"OPENSSL-LISTEN:{tls_mid},fork,reuseaddr,bind=127.0.0.1,"
                                             f"cert={tmp}/both.pem,verify=0", f"TCP:127.0.0.1:{iperf_port}"], tls_mid),
                 b.start("socat-map-tls-1", ["socat", "-b", "65536",
                                             f"TCP-LISTEN:{tls_front},fork,reuseaddr,bind=127.0.0.1",
                                             f"OPENSSL:127.0.0.1:{tls_mid},verify=0"], tls_front)]
    n = ["-n", str(b.bytes_total)]  # (a size, not a time: the CPU per GiB is of a known count)
    runs = [("socat chain", lambda: measured(b, "socat chain (map)", front, chain, extra=n)),
            ("socat TLS chain", lambda: measured(b, "socat TLS chain (map)", tls_front, tls_chain, extra=n)),
            ("wmproxy tcp mapping", lambda: measured(b, "wmproxy tcp mapping (TLS)", public, procs, extra=n))]
    b.in_rounds("mapping_tcp", runs, [("tcp mapping / socat TLS chain", "wmproxy tcp mapping", "socat TLS chain", 0.9),
                                      ("tcp mapping / socat chain", "wmproxy tcp mapping", "socat chain", 0.0)])
    print(f"\nhttp mapping, small GETs with keep-alive, wrk -c{b.connections} {b.seconds}s (wmproxy on CPU 0; "
          f"wrk and nginx on CPU {LOAD_CPU}):")
    runs = [("nginx direct", lambda: b.run_wrk("nginx direct", [f"http://127.0.0.1:{nginx_port}/small.txt"],
                                               "mapping_http")),
            ("wmproxy http mapping", lambda: b.run_wrk("wmproxy http mapping", [
                "-H", "Host: web.bench", f"http://127.0.0.1:{web}/small.txt"], "mapping_http", procs))]
    b.in_rounds("mapping_http", runs, [("http mapping / nginx direct", "wmproxy http mapping", "nginx direct", 0.8)])
