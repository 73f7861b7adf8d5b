"""workers = 2 beside workers = 1 (wmproxy/workers.py), in alternating rounds of one run.

wmproxy runs on both CPUs here (it is the point), wrk on CPU 1 and the nginx origin, where there
is one, on CPU 1 too: on this 2-core machine the load generator and the origin take CPU from the
workers, so each figure says what bounds it.

- ``[http] static_response`` (an answer wmproxy makes itself): wmproxy is the bound;
- the forward proxy in front of such a location (another wmproxy with as many workers: a proxy
  never dials its own listeners): wmproxy is the bound, two hops of it per request;
- the forward proxy and ``[http]`` against an nginx origin: nginx and wrk share CPU 1, so
  workers = 2 has the rest of CPU 0 and what CPU 1 leaves;
- CONNECT throughput, 4 parallel iperf3 streams through proxychains4.

Each run prints requests/s and the CPU per request of the whole process tree (master and
workers: user + system), the figure that shows any cross-worker cost on the hot path.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from bench import LOAD_CPU, ROOT, free_port

BOTH = "0,1"


def start(b, name: str, workers: int, body: str, cpu: str = BOTH) -> tuple[list, int]:
    """wmproxy with ``workers`` on ``cpu`` (both), from ``body`` (with {port} for a free port):
    (its processes as b.start gives them, the port)."""
    port = free_port()
    conf = b.tmp / f"{name}.toml"
    conf.write_text(f'log_level = "warning"\nworkers = {workers}\n' + body.replace("{port}", str(port)))
    before = len(b.procs)
    b.start(name, [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "-c", str(conf)], port, cpu=cpu)
    return b.procs[before:], port


def warm(b, args: list[str]) -> None:
    subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{b.connections}", "-d2s", *args],
                   capture_output=True, timeout=60)


def run(b) -> None:
    origin = b.nginx()
    cpu: dict[str, list[float]] = {}

    def measured(name: str, workers: int, body: str, args, cpu_list: str = BOTH) -> float:
        procs = []
        if "{static}" in body:  # a wmproxy [http] static_response location behind, with as many workers
            procs, port = start(b, f"static-w{workers}", workers, made)
            body = body.replace("{static}", str(port))
            (made_script).write_text(f'local target = "http://127.0.0.1:{port}/small.txt"\n'
                                     'request = function() return wrk.format("GET", target) end\n')
        more, port = start(b, name.replace(" ", "-").replace("=", "").replace(">", "").replace("(", "")
                           .replace(")", ""), workers, body, cpu_list)
        procs += more
        try:
            wrk_args = args(port)
            warm(b, wrk_args)
            rps = b.run_wrk(name, wrk_args, "workers", procs)
            figure = b.results["workers"].get(name, {}).get("cpu_us_per_request")
            if rps and figure:
                cpu.setdefault(name, []).append(figure)
            return rps
        finally:
            for p in procs:
                b.stop(p)

    made = ('[[http.server]]\nbind = "127.0.0.1:{port}"\n'
            '[[http.server.location]]\nstatic_response = "hello from wmproxy\\n"\n')
    # the forward proxy in front of such a location (another wmproxy: a proxy never dials its own
    # listeners), both with the same workers: two hops of wmproxy per request
    forward_made = '[proxy]\nbind = "127.0.0.1:{port}"\n# {static}\n'
    forward_nginx = '[proxy]\nbind = "127.0.0.1:{port}"\n'
    web_nginx = (f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n'
                 f'[[http.server.location]]\nproxy_url = "http://127.0.0.1:{origin}"\n')
    made_script, nginx_script = b.tmp / "absolute-made.lua", b.tmp / "absolute-nginx.lua"
    nginx_script.write_text(f'local target = "http://127.0.0.1:{origin}/small.txt"\n'
                            'request = function() return wrk.format("GET", target) end\n')
    loads = [
        ("static_response", made, lambda port: [f"http://127.0.0.1:{port}/"]),
        ("forward -> static_response", forward_made,
         lambda port: ["-s", str(made_script), f"http://127.0.0.1:{port}/"]),
        ("forward -> nginx", forward_nginx, lambda port: ["-s", str(nginx_script), f"http://127.0.0.1:{port}/"]),
        ("[http] -> nginx", web_nginx, lambda port: [f"http://127.0.0.1:{port}/small.txt"]),
    ]
    print(f"\nworkers = 2 beside workers = 1: small GETs with keep-alive, wrk -c{b.connections} {b.seconds}s "
          f"(wmproxy on CPUs {BOTH}; wrk and the nginx origin on CPU {LOAD_CPU}):")
    runs = []
    ratios = []
    for label, body, args in loads:
        for workers in (1, 2):
            name = f"{label} w={workers}"
            runs.append((name, lambda name=name, workers=workers, body=body, args=args:
                         measured(name, workers, body, args)))
        # (the goal where wmproxy alone is the bound: two wmproxy hops fill both CPUs at w=1 already)
        ratios.append((f"{label}: w=2 / w=1", f"{label} w=2", f"{label} w=1", 1.3 if label == "static_response" else 0))
    # the model's own cost, apart from the CPU the origin and wrk take: two workers on CPU 0 alone
    # beside one (the same CPU time to share: any extra CPU per request is the model's)
    for label, body, args in loads[2:3]:
        for workers in (1, 2):
            name = f"{label} w={workers} (CPU 0)"
            runs.append((name, lambda name=name, workers=workers, body=body, args=args:
                         measured(name, workers, body, args, "0")))
        ratios.append((f"{label} on CPU 0: w=2 / w=1", f"{label} w=2 (CPU 0)", f"{label} w=1 (CPU 0)", 0))
    b.in_rounds("workers", runs, ratios)
    print("  CPU per request (master and workers), median of the rounds; w=2 / w=1 (goal at most 1.1x):")
    record = b.results.setdefault("ratios", {}).setdefault("workers-cpu", {})
    for label in [label for label, _, _ in loads] + [f"{loads[2][0]} (CPU 0)"]:
        base, _, where = label.partition(" (")
        where = f" ({where}" if where else ""
        one, two = cpu.get(f"{base} w=1{where}"), cpu.get(f"{base} w=2{where}")
        if one and two:
            ratio = statistics.median(two) / statistics.median(one)
            print(f"    {label:<30} w=1 {statistics.median(one):6.1f} us   w=2 {statistics.median(two):6.1f} us   "
                  f"{ratio:.2f}x")
            record[label] = round(ratio, 3)
    connect(b)


def connect(b) -> None:
    """CONNECT throughput with 4 parallel streams (iperf3 -P 4 through proxychains4)."""
    print(f"\nCONNECT, iperf3 -P 4 for {b.seconds}s through proxychains4 (wmproxy on CPUs {BOTH}, "
          f"iperf3 on CPU {LOAD_CPU}):")
    iperf_port = free_port()
    b.start("iperf3-server-w", ["iperf3", "-s", "-p", str(iperf_port)], iperf_port, cpu=LOAD_CPU)
    figures: dict[int, list[float]] = {1: [], 2: []}
    for r in range(b.rounds):
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            procs, port = start(b, f"connect-w{workers}", workers, '[proxy]\nbind = "127.0.0.1:{port}"\n')
            try:
                figures[workers].append(b.iperf(f"CONNECT x4 w={workers}", iperf_port, b.chains("http", port),
                                                ["-t", str(b.seconds), "-P", "4"]))
            finally:
                for p in procs:
                    b.stop(p)
    each = [two / one for one, two in zip(figures[1], figures[2]) if one and two]
    if each:
        print(f"    CONNECT x4: w=2 / w=1 {statistics.median(each):.2f}x  ({', '.join(f'{x:.2f}' for x in each)})")
        b.results.setdefault("ratios", {}).setdefault("workers", {})["CONNECT x4: w=2 / w=1"] = round(
            statistics.median(each), 3)
