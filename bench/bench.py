"""Forward proxy benchmark: wmproxy beside its peers, in one run, printed as ratios.

- iperf3 single-stream throughput: direct, through `socat -b 65536` (a plain relay), and
  through CONNECT and SOCKS5 (proxychains4) of wmproxy and pproxy;
- requests/s and p99 latency of small GETs through the HTTP proxy with keep-alive (wrk with a
  Lua script that sends absolute-form requests) to an nginx origin, for wmproxy, pproxy, squid
  and tinyproxy;
- the center link (bench/center.py): one 1 GiB stream through client -> link -> server, TLS and
  plain, beside socat chains, and the memory of idle virtual connections;
- mappings (bench/mapping.py): iperf3 through a tcp mapping beside direct and a socat chain,
  and small GETs through an http mapping beside the same nginx reached directly;
- [http] (bench/web.py): a small static file from wmproxy vs nginx, and a reverse-proxied small
  response through wmproxy, nginx and haproxy to an nginx origin;
- UDP (bench/udp.py): 1,200-byte datagrams at fixed rates (iperf3 -u), received per second and
  lost, directly, through socat, the [stream] UDP forwarder and a udp mapping of the center link;
- workers (bench/workers.py): workers = 2 beside workers = 1, requests/s and CPU per request
  where wmproxy is the bound and against nginx, and CONNECT with 4 streams;
- with ``--only instructions`` (bench/instructions.py): user-space instructions per small GET
  under callgrind (the forward and reverse proxy, static files over HTTP/1.1 and h2c, an http
  mapping's server), wmproxy beside pproxy and the floors of the design: a count that does not
  drift with the machine's speed.

Proxies run pinned to CPU 0 (taskset), the load and the origin on CPU 1. Run through `bench/run`,
which installs the peers and puts the whole run in a loopback-only network namespace. A run
starts by timing a fixed pure-Python loop on CPU 0 (:func:`calibrate`): the machine's Python
speed, to read Python-bound figures of different days by.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import psutil

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PROXY_CPU, LOAD_CPU = "0", "1"
SETTLE = 3.0  # seconds of quiet before each measured run (see Bench.in_rounds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A fixed pure-Python workload (parse a small request head and rebuild it), timed on the proxy
# CPU: this machine's Python speed, which drifted threefold between sessions here.
_CALIBRATION = """
import sys, time
sys.path.insert(0, sys.argv[1])
from wmproxy.prot import http1
raw = b"GET http://127.0.0.1:8080/small.txt HTTP/1.1\\r\\nHost: 127.0.0.1:8080\\r\\nUser-Agent: wrk\\r\\n\\r\\n"
best = 1e9
for _ in range(5):
    t = time.perf_counter()
    for _ in range(20000):
        http1.encode_head("GET /small.txt HTTP/1.1", http1.parse_request_head(raw).end_to_end())
    best = min(best, (time.perf_counter() - t) / 20000)
print(f"{best * 1e6:.2f}")
"""


def calibrate() -> dict:
    """The interpreter the proxies run on and its speed on the reference workload."""
    out = subprocess.run(["taskset", "-c", PROXY_CPU, sys.executable, "-c", _CALIBRATION, str(ROOT)],
                         capture_output=True, text=True, timeout=120)
    machine = {"python": f"{os.path.realpath(sys.executable)} {sys.version.split()[0]}",
               "reference_us": float(out.stdout) if out.returncode == 0 else None}
    print(f"python: {machine['python']}; reference loop (parse and rebuild one request head, CPU {PROXY_CPU}): "
          f"{machine['reference_us']} us")
    return machine


def core_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the load CPU so far (/proc/stat): how much of that core the load
    generator and the origin left idle during a run tells whether they, not the server, bound it."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{LOAD_CPU} "):
                fields = [int(x) for x in line.split()[1:]]
                idle = fields[3] + fields[4]  # idle, iowait
                return float(sum(fields) - idle), float(sum(fields))
    return 0.0, 0.0


LOAD_BOUND = 0.9  # the load CPU this busy during a run: the load generator's side bounds requests/s


def cpu_seconds(procs) -> float:
    """User + system CPU seconds of ``procs`` (Popen objects; the wrapping taskset execs the
    program, so the pid is the program's), of their live children (squid's kid) and of their
    reaped ones (socat's forks)."""
    total = 0.0
    for p in procs:
        try:
            proc = psutil.Process(p.pid)
            for q in (proc, *proc.children(recursive=True)):
                t = q.cpu_times()
                total += t.user + t.system + (t.children_user + t.children_system if q is proc else 0.0)
        except psutil.Error:
            continue
    return total


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


class Bench:
    def __init__(self, seconds: int, connections: int, bytes_total: int = 1 << 30, rounds: int = 3) -> None:
        self.seconds = seconds
        self.rounds = rounds
        self.bytes_total = bytes_total
        self.connections = connections
        self.tmp = Path(tempfile.mkdtemp(prefix="wmproxy-bench-"))
        os.chmod(self.tmp, 0o777)
        self.procs: list[subprocess.Popen] = []
        self.results: dict = {"throughput_gbit": {}, "http": {}}
        self.nginx_port = 0
        self.last_cpu = 0.0  # the CPU per request run_wrk measured last (us; 0: none)

    def start(self, name: str, cmd: list[str], port: int, cpu: str = PROXY_CPU, wait: bool = True) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(["taskset", "-c", cpu, *cmd], stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        if wait:
            wait_port(port)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.stop(p)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- proxies under test ------------------------------------------------------------
    def wmproxy(self) -> tuple[subprocess.Popen, int]:
        port = free_port()
        cmd = [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "--bind", f"127.0.0.1:{port}",
               "--log-level", "warning"]
        return self.start("wmproxy", cmd, port), port

    def pproxy(self) -> tuple[subprocess.Popen, int]:
        port = free_port()
        return self.start("pproxy", [str(VENV_BIN / "pproxy"), "-l", f"http+socks5://127.0.0.1:{port}"], port), port

    def squid(self) -> tuple[subprocess.Popen, int]:
        port = free_port()
        d = self.tmp / "squid"
        d.mkdir(mode=0o777)
        os.chmod(d, 0o777)
        conf = d / "squid.conf"
        conf.write_text(f"""http_port 127.0.0.1:{port}
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
workers 1
shutdown_lifetime 0 seconds
dns_v4_first on
""")
        return self.start("squid", ["squid", "-N", "-f", str(conf)], port), port

    def tinyproxy(self) -> tuple[subprocess.Popen, int]:
        port = free_port()
        conf = self.tmp / "tinyproxy.conf"
        conf.write_text(f"""User nobody
Group nogroup
Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients 2000
Allow 127.0.0.1
LogLevel Critical
DisableViaHeader Yes
""")
        return self.start("tinyproxy", ["tinyproxy", "-d", "-c", str(conf)], port), port

    def socat(self, target: int) -> tuple[subprocess.Popen, int]:
        port = free_port()
        cmd = ["socat", "-b", "65536", f"TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1", f"TCP:127.0.0.1:{target}"]
        return self.start("socat", cmd, port), port

    # -- loads --------------------------------------------------------------------------
    def chains(self, kind: str, port: int) -> list[str]:
        conf = self.tmp / f"proxychains-{kind}-{port}.conf"
        conf.write_text(f"strict_chain\nquiet_mode\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n"
                        f"[ProxyList]\n{kind} 127.0.0.1 {port}\n")
        return ["proxychains4", "-q", "-f", str(conf)]

    def iperf(self, name: str, port: int, prefix: list[str] = (), extra: list[str] | None = None) -> float:
        length = extra if extra is not None else ["-t", str(self.seconds)]
        cmd = ["taskset", "-c", LOAD_CPU, *prefix, "iperf3", "-c", "127.0.0.1", "-p", str(port), *length, "-J"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=self.seconds + 300)
        try:
            gbit = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        except (ValueError, KeyError):
            print(f"  {name}: iperf3 failed: {out.stdout[-300:]} {out.stderr[-300:]}")
            return 0.0
        print(f"  {name:<22} {gbit:7.2f} Gbit/s   ({' '.join(cmd)})")
        self.results["throughput_gbit"][name] = round(gbit, 2)
        return gbit

    def absolute_script(self, origin_port: int) -> Path:
        """wrk's Lua script sending absolute-form GETs of the origin's /small.txt."""
        script = self.tmp / "absolute.lua"
        script.write_text(f'local target = "http://127.0.0.1:{origin_port}/small.txt"\n'
                          'request = function() return wrk.format("GET", target) end\n')
        return script

    def wrk(self, name: str, proxy_port: int, origin_port: int, procs=()) -> float:
        """Small GETs through the HTTP proxy: a Lua script sends absolute-form requests."""
        script = self.absolute_script(origin_port)
        return self.run_wrk(name, ["-s", str(script), f"http://127.0.0.1:{proxy_port}/"], "http", procs)

    def warm_up(self, proxy_port: int, origin_port: int) -> None:
        """Two unrecorded seconds of that load: the first seconds of a fresh process (pproxy's
        more than wmproxy's) are slower than its steady state."""
        subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{self.connections}", "-d2s", "-s",
                        str(self.absolute_script(origin_port)), f"http://127.0.0.1:{proxy_port}/"],
                       capture_output=True, timeout=60)

    def load(self, cmd: list[str], procs=()) -> tuple[str, float, float]:
        """Run the load generator ``cmd`` on the load CPU -> (its output, the CPU seconds
        ``procs`` used meanwhile, how busy the load CPU was: 0-1)."""
        before = cpu_seconds(procs)
        busy_before, total_before = core_busy()
        out = subprocess.run(["taskset", "-c", LOAD_CPU, *cmd], capture_output=True, text=True,
                             timeout=self.seconds + 60).stdout
        used = cpu_seconds(procs) - before
        busy_after, total_after = core_busy()
        return out, used, (busy_after - busy_before) / max(1.0, total_after - total_before)

    def run_wrk(self, name: str, args: list[str], section: str, procs=()) -> float:
        """wrk with keep-alive on the load CPU; prints and records req/s and p99 under
        ``section``, and with ``procs`` (the server under test) their CPU time per request,
        steadier than the rate on this machine; returns req/s (0 when wrk failed)."""
        out, used, load = self.load(["wrk", "-t1", f"-c{self.connections}", f"-d{self.seconds}s", "--latency", *args],
                                    procs)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        total = re.search(r"(\d+) requests in", out)
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
        if not rps or not p99 or not total:
            print(f"  {name}: wrk failed: {out[-400:]}")
            return 0.0
        p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
        note = f"   {errors.group(0)}" if errors else ""
        record = {"rps": round(float(rps.group(1))), "p99_ms": round(p99_ms, 2), "load_cpu_busy": round(load, 3)}
        cpu = ""
        if procs and int(total.group(1)):
            record["cpu_us_per_request"] = round(used * 1e6 / int(total.group(1)), 1)
            self.last_cpu = record["cpu_us_per_request"]
            cpu = f"CPU {record['cpu_us_per_request']:5.1f} us/request   "
        bound = f"   (load CPU {load:.0%} busy: wrk and the origin bound req/s)" if load >= LOAD_BOUND else ""
        print(f"  {name:<26} {cpu}{float(rps.group(1)):9.0f} req/s   p99 {p99_ms:7.2f} ms{note}{bound}")
        self.results.setdefault(section, {})[name] = record
        return float(rps.group(1))

    def nginx(self) -> int:
        """An nginx origin serving /small.txt on CPU 1 (one per run, shared by the parts)."""
        if not self.nginx_port:
            self.nginx_port = self.start_nginx("nginx", f"location / {{ root {self.www()}; }}", LOAD_CPU)
        return self.nginx_port

    def www(self) -> Path:
        """The origin's files: /small.txt (17 bytes)."""
        www = self.tmp / "www"
        if not www.exists():
            www.mkdir()
            (www / "small.txt").write_text("hello from nginx\n")
            os.chmod(www, 0o755)
            os.chmod(www / "small.txt", 0o644)
        return www

    def start_nginx(self, name: str, server_body: str, cpu: str, http_extra: str = "", listen: str = "") -> int:
        """An nginx (one worker, on ``cpu``) whose one server has ``server_body`` (``listen``:
        what its listen line adds, " http2"); its port."""
        port = free_port()
        conf = self.tmp / f"{name}.conf"
        conf.write_text(f"""worker_processes 1;
daemon off;
pid {self.tmp}/{name}.pid;
error_log {self.tmp}/{name}.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {self.tmp}/{name}-body;
  proxy_temp_path {self.tmp}/{name}-proxy;
  fastcgi_temp_path {self.tmp}/{name}-fcgi;
  uwsgi_temp_path {self.tmp}/{name}-uwsgi;
  scgi_temp_path {self.tmp}/{name}-scgi;
  {http_extra}
  server {{ listen 127.0.0.1:{port}{listen}; {server_body} }}
}}
""")
        self.start(name, ["nginx", "-c", str(conf)], port, cpu=cpu)
        return port

    # -- rounds ---------------------------------------------------------------------------
    def in_rounds(self, key: str, runs: list[tuple[str, Callable[[], float]]],
                  ratios: list[tuple[str, str, str, float]],
                  cpu_ratios: Sequence[tuple[str, str, str, float]] = ()) -> None:
        """Run every (name, run) once per round, in turn, for ``self.rounds`` rounds: this
        machine's speed drifts 15-30% from one minute to the next, so each ratio is taken within
        a round (a few seconds apart) and the median over the rounds is the figure. Each round
        starts one further along the list, so no run always follows the same one, and each run
        starts after a pause of SETTLE seconds: a peer that was slow to finish (tinyproxy, with
        thousands of closed connections) slowed whichever run came next by up to a third.
        ``ratios``: (label, numerator name, denominator name, goal or 0). Prints each round's
        ratios and the medians, records them under results["ratios"][key]. ``cpu_ratios``, the
        same of the CPU per request the runs measured (run_wrk with the server's processes), come
        first: lower is better, a goal is met at or under it (results["cpu_ratios"][key])."""
        values: dict[str, list[float]] = {name: [] for name, _ in runs}
        cpu: dict[str, list[float]] = {name: [] for name, _ in runs}
        for r in range(self.rounds):
            if self.rounds > 1:
                print(f"  round {r + 1} of {self.rounds}:")
            for name, run in runs[r % len(runs):] + runs[:r % len(runs)]:
                time.sleep(SETTLE)
                self.last_cpu = 0.0
                values[name].append(run())
                cpu[name].append(self.last_cpu)
        if cpu_ratios:
            print(f"  CPU per request (user + system of the server's processes; lower is better), median of "
                  f"{self.rounds} round(s):")
            self._ratios(cpu, cpu_ratios, self.results.setdefault("cpu_ratios", {}).setdefault(key, {}), lower=True)
        print(f"  {'requests/s ' if cpu_ratios else ''}ratios, median of {self.rounds} round(s) (each round's in "
              f"brackets):")
        self._ratios(values, ratios, self.results.setdefault("ratios", {}).setdefault(key, {}), lower=False)

    @staticmethod
    def _ratios(values: dict[str, list[float]], ratios: Sequence[tuple[str, str, str, float]], record: dict,
                lower: bool) -> None:
        """Print and record each ratio's median over the rounds; a goal is met at or under it
        (``lower``) or at or over it."""
        for label, num, den, goal in ratios:
            each = [n / d for n, d in zip(values[num], values[den]) if n and d]
            if not each:
                print(f"    {label}: no figure (a run failed)")
                continue
            median = statistics.median(each)
            met = median <= goal if lower else median >= goal
            verdict = f"   goal {'<= ' if lower else ''}{goal}x: {'met' if met else 'NOT met'}" if goal else ""
            print(f"    {label:<40} {median:.2f}x  ({', '.join(f'{x:.2f}' for x in each)}){verdict}")
            record[label] = {"median": round(median, 3), "rounds": [round(x, 3) for x in each], "goal": goal}

    # -- the run ------------------------------------------------------------------------
    def throughput(self) -> None:
        print(f"\niperf3 single stream, {self.seconds}s each (proxy on CPU {PROXY_CPU}, iperf3 on CPU {LOAD_CPU}):")
        iperf_port = free_port()
        self.start("iperf3-server", ["iperf3", "-s", "-p", str(iperf_port)], iperf_port, cpu=LOAD_CPU)
        self.iperf("direct", iperf_port)
        _, socat = self.socat(iperf_port)
        _, wm = self.wmproxy()
        _, pp = self.pproxy()
        runs = [("socat", lambda: self.iperf("socat -b 65536", socat))]
        for name, port in (("wmproxy", wm), ("pproxy", pp)):
            for kind, chain in (("CONNECT", "http"), ("SOCKS5", "socks5")):
                runs.append((f"{name} {kind}", lambda port=port, name=f"{name} {kind}", chain=chain:
                             self.iperf(name, iperf_port, self.chains(chain, port))))
        self.in_rounds("throughput", runs, [(f"{name} / socat", name, "socat",
                                             1.2 if name.startswith("wmproxy") else 0.0) for name, _ in runs[1:]])

    def http(self) -> None:
        print(f"\nHTTP proxy, small GETs with keep-alive, wrk -c{self.connections} {self.seconds}s "
              f"(proxy on CPU {PROXY_CPU}; wrk and nginx on CPU {LOAD_CPU}):")
        origin = self.nginx()
        runs = []
        for name, factory in (("wmproxy", self.wmproxy), ("pproxy", self.pproxy), ("squid", self.squid),
                              ("tinyproxy", self.tinyproxy)):
            if name in ("squid", "tinyproxy") and not shutil.which(name):
                print(f"  {name}: not installed")
                continue
            p, port = factory()
            runs.append((name, lambda name=name, port=port, p=p: self.wrk(name, port, origin, [p])))
            self.warm_up(port, origin)
        self.in_rounds("http", runs, [(f"{name} / pproxy", name, "pproxy", 1.0 if name == "wmproxy" else 0.0)
                                      for name, _ in runs if name != "pproxy"],
                       [(f"{name} / pproxy", name, "pproxy", 0.6 if name == "wmproxy" else 0.0)
                        for name, _ in runs if name != "pproxy"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=8, help="length of each measurement")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections")
    ap.add_argument("--only", choices=("throughput", "proxy-memory", "http", "center", "center-memory", "mapping",
                                       "udp", "web", "h2", "workers", "accept", "ratelimit", "instructions"),
                    help="run one part (instructions: callgrind counts, not in a full run)")
    ap.add_argument("--requests", type=int, default=2000, help="requests counted by --only instructions")
    ap.add_argument("--bytes", type=int, default=1 << 30, help="size of the center link transfer")
    ap.add_argument("--streams", default="1000,10000", help="idle virtual connection counts to measure")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds of the compared runs; ratios are the median over them")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    b = Bench(args.seconds, args.connections, args.bytes, args.rounds)
    b.results["machine"] = calibrate()
    try:
        if args.only in (None, "throughput"):
            b.throughput()
        if args.only in (None, "proxy-memory"):
            import idle

            idle.forward_proxies(b)
        if args.only in (None, "http"):
            b.http()
        if args.only in (None, "center", "center-memory"):
            import center

            if args.only != "center-memory":
                center.throughput(b)
            center.memory(b, [int(n) for n in args.streams.split(",")])
        if args.only in (None, "mapping"):
            import mapping

            mapping.run(b)
        if args.only in (None, "udp"):
            import udp

            udp.run(b)
        if args.only in (None, "web"):
            import web

            web.run(b)
        if args.only in (None, "h2"):
            import h2bench

            h2bench.run(b)
        if args.only in (None, "workers"):
            import workers

            workers.run(b)
        if args.only in (None, "accept"):
            import accept

            accept.run(b)
        if args.only in (None, "ratelimit"):
            import ratelimit

            ratelimit.run(b)
        if args.only == "instructions":
            import instructions

            instructions.run(b, args.requests)
    finally:
        b.close()
    if args.json:
        Path(args.json).write_text(json.dumps(b.results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
