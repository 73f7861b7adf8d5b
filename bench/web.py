"""[http] benchmark: requests/s and p99 of small GETs (wrk, keep-alive, 50 connections), the
server under test pinned to CPU 0, wrk and the origin on CPU 1, in one run:

- a small static file (17 bytes) served by wmproxy's file_server vs by nginx;
- a small response reverse-proxied to an nginx origin by wmproxy vs nginx (upstream keepalive)
  vs haproxy (http-reuse).
"""

from __future__ import annotations

import shutil
import sys

from bench import PROXY_CPU, ROOT, free_port


def wmproxy_web(b, name: str, location: str) -> int:
    port = free_port()
    conf = b.tmp / f"{name}.toml"
    conf.write_text(f'log_level = "warning"\n[[http.server]]\nbind = "127.0.0.1:{port}"\n'
                    f'[[http.server.location]]\n{location}\n')
    b.start(name, [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "-c", str(conf)], port)
    return port


def haproxy(b, origin: int) -> int:
    port = free_port()
    conf = b.tmp / "haproxy.cfg"
    conf.write_text(f"""global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend front
  bind 127.0.0.1:{port}
  default_backend origin
backend origin
  http-reuse always
  server o 127.0.0.1:{origin}
""")
    b.start("haproxy", ["haproxy", "-f", str(conf), "-db"], port)
    return port


def measure(b, name: str, start, url: str, load=None) -> float:
    """Start a server (``start()`` -> its port), load it with wrk (or ``load(b, name, full
    url, the server's processes)``), stop it: one server on the measured CPU at a time."""
    before = len(b.procs)
    port = start()
    try:
        if load is not None:
            return load(b, name, f"http://127.0.0.1:{port}{url}", b.procs[before:])
        return b.run_wrk(name, [f"http://127.0.0.1:{port}{url}"], "web", b.procs[before:])
    finally:
        for p in b.procs[before:]:
            b.stop(p)


def run(b) -> None:
    origin = b.nginx()
    url = "/small.txt"
    print(f"\n[http] small GETs with keep-alive, wrk -c{b.connections} {b.seconds}s (server on CPU {PROXY_CPU}; "
          "wrk and the origin on the other CPU; one server under test running at a time):")
    proxied = 'location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }'
    pool = f"upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}"
    runs = [
        ("nginx static", lambda: measure(b, "nginx static", lambda: b.start_nginx(
            "nginx-static", f"location / {{ root {b.www()}; }}", PROXY_CPU), url)),
        ("wmproxy static", lambda: measure(b, "wmproxy static", lambda: wmproxy_web(
            b, "wmproxy-static", f'file_server = {{ root = "{b.www()}" }}'), url)),
        ("nginx -> nginx", lambda: measure(b, "nginx -> nginx", lambda: b.start_nginx(
            "nginx-proxy", proxied, PROXY_CPU, pool), url)),
    ]
    if shutil.which("haproxy"):
        runs.append(("haproxy -> nginx", lambda: measure(b, "haproxy -> nginx", lambda: haproxy(b, origin), url)))
    runs.append(("wmproxy -> nginx", lambda: measure(b, "wmproxy -> nginx", lambda: wmproxy_web(
        b, "wmproxy-proxy", f'proxy_url = "http://127.0.0.1:{origin}"'), url)))
    b.in_rounds("web", runs, [("wmproxy static / nginx static", "wmproxy static", "nginx static", 0.25),
                              ("wmproxy -> nginx / nginx -> nginx", "wmproxy -> nginx", "nginx -> nginx", 0.4)],
                [("wmproxy static / nginx static", "wmproxy static", "nginx static", 1.0),
                 ("wmproxy -> nginx / nginx -> nginx", "wmproxy -> nginx", "nginx -> nginx", 1.0),
                 *([("wmproxy -> nginx / haproxy -> nginx", "wmproxy -> nginx", "haproxy -> nginx", 0.0)]
                   if shutil.which("haproxy") else [])])
