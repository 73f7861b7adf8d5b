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


def run(b) -> None:
    origin = b.nginx()
    url = "/small.txt"
    print(f"\n[http] small GETs with keep-alive, wrk -c{b.connections} {b.seconds}s (server on CPU {PROXY_CPU}; "
          "wrk and the origin on the other CPU):")
    static_nginx = b.start_nginx("nginx-static", f"location / {{ root {b.www()}; }}", PROXY_CPU)
    static_wm = wmproxy_web(b, "wmproxy-static", f'file_server = {{ root = "{b.www()}" }}')
    nginx_static = b.run_wrk("nginx static", [f"http://127.0.0.1:{static_nginx}{url}"], "web")
    wm_static = b.run_wrk("wmproxy static", [f"http://127.0.0.1:{static_wm}{url}"], "web")
    proxy_nginx = b.start_nginx("nginx-proxy", "location / { proxy_pass http://origin; proxy_http_version 1.1; "
                                'proxy_set_header Connection ""; }', PROXY_CPU,
                                f"upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}")
    proxy_wm = wmproxy_web(b, "wmproxy-proxy", f'proxy_url = "http://127.0.0.1:{origin}"')
    nginx_proxy = b.run_wrk("nginx -> nginx", [f"http://127.0.0.1:{proxy_nginx}{url}"], "web")
    if shutil.which("haproxy"):
        b.run_wrk("haproxy -> nginx", [f"http://127.0.0.1:{haproxy(b, origin)}{url}"], "web")
    wm_proxy = b.run_wrk("wmproxy -> nginx", [f"http://127.0.0.1:{proxy_wm}{url}"], "web")
    if nginx_static and nginx_proxy:
        print(f"  ratios: wmproxy static / nginx static {wm_static / nginx_static:.2f}x (goal 0.25x), "
              f"wmproxy -> nginx / nginx -> nginx {wm_proxy / nginx_proxy:.2f}x (goal 0.4x)")
