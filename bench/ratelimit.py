"""Bandwidth limits (rate_limit): how close a limited transfer stays to the set rate, beside
nginx's limit_rate on the same download, in one run.

- a file download (curl, one connection) from nginx with ``limit_rate`` and from wmproxy's
  file_server with ``rate_limit``, at 1, 4 and 16 MiB/s;
- a TCP stream (iperf3 -R, one connection) through a ``[stream]`` server with ``rate_limit``;
- quotas shared by many connections: an account's ``bandwidth`` on the center server
  ([[center.users]]), four iperf3 streams (-P 4) through its tcp mapping, and a forward proxy
  user's ``bandwidth`` ([[proxy.users]]), two curl downloads at once through the proxy: the sum
  against the set rate.

Each line prints the achieved rate, its ratio to the set rate (goal: within 15%, 0.85 to 1.15)
and, for the download, the ratio to nginx's. Each transfer lasts about ``--seconds``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from bench import LOAD_CPU, ROOT, free_port
from center import start_mapped

RATES = (1 << 20, 4 << 20, 16 << 20)


def _record(b, name: str, rate: int, got: float, peer: float | None = None) -> None:
    ratio = got / rate
    flag = "" if 0.85 <= ratio <= 1.15 else "  (outside 15%)"
    vs = f", {got / peer:.2f}x nginx" if peer else ""
    print(f"  {name:<32} set {rate / (1 << 20):5.1f} MiB/s: got {got / (1 << 20):6.2f} MiB/s = {ratio:.3f} of "
          f"the rate{vs}{flag}")
    b.results.setdefault("ratelimit", {}).setdefault(name, {})[str(rate)] = {"bytes_per_s": round(got),
                                                                             "of_rate": round(ratio, 3)}


def _blob(www, name: str, size: int) -> str:
    """A file of ``size`` random bytes the origin serves; its name."""
    with open(www / name, "wb") as f:
        f.write(os.urandom(size))
    os.chmod(www / name, 0o644)
    return name


def _download(url: str) -> float:
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "curl", "-sS", "-o", "/dev/null", "-w",
                          "%{size_download} %{time_total}", url], capture_output=True, text=True, timeout=300)
    size, took = out.stdout.split()
    return int(size) / float(took)


def _iperf(port: int, seconds: int, parallel: int = 1) -> float:
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-R", "-t",
                          str(seconds), "-P", str(parallel), "-J"], capture_output=True, text=True,
                         timeout=seconds + 60)
    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8


def _downloads(url: str, proxy: str, count: int) -> float:
    """``count`` curl downloads of ``url`` at once through ``proxy``: their bytes over the time
    the last one took."""
    results: list[tuple[int, float]] = []

    def one() -> None:
        out = subprocess.run(["taskset", "-c", LOAD_CPU, "curl", "-sS", "-x", proxy, "-o", "/dev/null", "-w",
                              "%{size_download} %{time_total}", url], capture_output=True, text=True, timeout=300)
        size, took = out.stdout.split()
        results.append((int(size), float(took)))

    jobs = [threading.Thread(target=one) for _ in range(count)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    return sum(size for size, _ in results) / max(took for _, took in results)


def run(b) -> None:
    print("\n== rate_limit: a limited transfer against its set rate ==")
    www = b.www()
    for rate in RATES:
        size = rate * b.seconds
        name = _blob(www, f"blob-{rate}.bin", size)
        nginx = b.start_nginx(f"nginx-limit-{rate}", f"location / {{ root {www}; limit_rate {rate}; }}", "0")
        peer = _download(f"http://127.0.0.1:{nginx}/{name}")
        _record(b, "nginx limit_rate (download)", rate, peer)
        port = free_port()
        conf = b.tmp / f"ratelimit-web-{rate}.toml"
        conf.write_text(f'log_level = "warning"\n[[http.server]]\nbind = "127.0.0.1:{port}"\n'
                        f'[[http.server.location]]\nrate_limit = {rate}\nfile_server = {{ root = "{www}" }}\n')
        p = b.start(f"wmproxy-ratelimit-{rate}", [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "-c",
                                                  str(conf)], port)
        _record(b, "wmproxy rate_limit (download)", rate, _download(f"http://127.0.0.1:{port}/{name}"), peer)
        b.stop(p)
        os.unlink(www / name)
    iperf = free_port()
    b.start("iperf3-ratelimit", ["iperf3", "-s", "-p", str(iperf)], iperf, cpu=LOAD_CPU)
    for rate in RATES:
        port = free_port()
        conf = b.tmp / f"ratelimit-stream-{rate}.toml"
        conf.write_text(f'log_level = "warning"\n[[stream.upstream]]\nname = "i"\n'
                        f'server = [{{ addr = "127.0.0.1:{iperf}" }}]\n'
                        f'[[stream.server]]\nbind = "127.0.0.1:{port}"\nup_name = "i"\nrate_limit = {rate}\n')
        p = b.start(f"wmproxy-ratelimit-stream-{rate}", [sys.executable, str(ROOT / "bin" / "wmproxy-server"),
                                                         "-c", str(conf)], port)
        _record(b, "wmproxy [stream] rate_limit (iperf3)", rate, _iperf(port, b.seconds))
        b.stop(p)
    quotas(b, iperf)


def quotas(b, iperf: int) -> None:
    """Limits many connections share: an account's on the center server, a proxy user's."""
    for rate in RATES:
        public = free_port()
        start_mapped(b, f"quota-{rate}", f'username = "bench"\npassword = "pw"\n[[mappings]]\nname = "iperf"\n'
                                         f'mode = "tcp"\nlocal_addr = "127.0.0.1:{iperf}"\n'
                                         f'remote_bind = "127.0.0.1:{public}"\n', public,
                     f'[[center.users]]\nusername = "bench"\npassword = "pw"\nbandwidth = {rate}\n')
        time.sleep(1.5)  # the link comes up, the mapping is published
        _record(b, "account bandwidth (iperf3 -P 4)", rate, _iperf(public, b.seconds, parallel=4))
    www = b.www()
    nginx = b.nginx()
    for rate in RATES:
        size = rate * b.seconds // 2  # (two at once: together about --seconds)
        name = _blob(www, f"quota-{rate}.bin", size)
        port = free_port()
        conf = b.tmp / f"quota-proxy-{rate}.toml"
        conf.write_text(f'log_level = "warning"\n[proxy]\nbind = "127.0.0.1:{port}"\n[[proxy.users]]\n'
                        f'username = "u"\npassword = "p"\nbandwidth = {rate}\n')
        p = b.start(f"wmproxy-quota-proxy-{rate}", [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "-c",
                                                    str(conf)], port)
        _record(b, "proxy user bandwidth (2 x curl)", rate,
                _downloads(f"http://127.0.0.1:{nginx}/{name}", f"http://u:p@127.0.0.1:{port}", 2))
        b.stop(p)
        os.unlink(www / name)
