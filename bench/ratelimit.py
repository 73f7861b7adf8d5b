"""Bandwidth limits (rate_limit): how close a limited transfer stays to the set rate, beside
nginx's limit_rate on the same download, in one run.

- a file download (curl, one connection) from nginx with ``limit_rate`` and from wmproxy's
  file_server with ``rate_limit``, at 1, 4 and 16 MiB/s;
- a TCP stream (iperf3 -R, one connection) through a ``[stream]`` server with ``rate_limit``.

Each line prints the achieved rate, its ratio to the set rate (goal: within 15%, 0.85 to 1.15)
and, for the download, the ratio to nginx's. Each transfer lasts about ``--seconds``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import LOAD_CPU, ROOT, free_port

RATES = (1 << 20, 4 << 20, 16 << 20)


def _record(b, name: str, rate: int, got: float, peer: float | None = None) -> None:
    ratio = got / rate
    flag = "" if 0.85 <= ratio <= 1.15 else "  (outside 15%)"
    vs = f", {got / peer:.2f}x nginx" if peer else ""
    print(f"  {name:<32} set {rate / (1 << 20):5.1f} MiB/s: got {got / (1 << 20):6.2f} MiB/s = {ratio:.3f} of "
          f"the rate{vs}{flag}")
    b.results.setdefault("ratelimit", {}).setdefault(name, {})[str(rate)] = {"bytes_per_s": round(got),
                                                                             "of_rate": round(ratio, 3)}


def _download(url: str) -> float:
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "curl", "-sS", "-o", "/dev/null", "-w",
                          "%{size_download} %{time_total}", url], capture_output=True, text=True, timeout=300)
    size, took = out.stdout.split()
    return int(size) / float(took)


def _iperf(port: int, seconds: int) -> float:
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-R", "-t",
                          str(seconds), "-J"], capture_output=True, text=True, timeout=seconds + 60)
    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8


def run(b) -> None:
    print("\n== rate_limit: a limited transfer against its set rate ==")
    www = b.www()
    for rate in RATES:
        size = rate * b.seconds
        name = f"blob-{rate}.bin"
        with open(www / name, "wb") as f:
            f.write(os.urandom(size))
        os.chmod(www / name, 0o644)
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
