"""UDP benchmark: 1,200-byte datagrams at fixed rates (iperf3 -u), received per second and lost,
directly, through `socat UDP-LISTEN:...,fork`, through the `[stream]` UDP forwarder, and through
a udp mapping of the center link (TLS), in one run.

iperf3 needs its TCP control connection beside the UDP data on the same port number, so each
path forwards TCP too: socat with a TCP-LISTEN twin, wmproxy with a tcp `[[stream.server]]` (or a
tcp mapping) on the same port. Relays run on CPU 0, iperf3 (both ends) on CPU 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench import LOAD_CPU, ROOT, free_port
from center import start_mapped

RATES = (10_000, 20_000, 40_000)  # iperf3 itself fails here beyond about 60,000/s  # datagrams per second offered
SIZE = 1200


def iperf_udp(b, name: str, port: int, pps: int) -> None:
    cmd = ["taskset", "-c", LOAD_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "-l", str(SIZE),
           "-b", str(pps * SIZE * 8), "-t", str(b.seconds), "-J"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=b.seconds + 60)
    report: dict = {}
    try:
        report = json.loads(out.stdout)
        got = report["end"]["sum_received"]
        received = (got["packets"] - got["lost_packets"]) / got["seconds"]
        lost = got["lost_percent"]
    except (ValueError, KeyError):
        why = report.get("error") or out.stderr[-200:] or "no report"
        print(f"  {name:<24} {pps:>6}/s offered: iperf3 failed: {why}")
        return
    print(f"  {name:<24} {pps:>6}/s offered: {received:8.0f}/s received, {lost:5.1f}% lost")
    b.results.setdefault("udp", {}).setdefault(name, {})[str(pps)] = {"received_per_s": round(received),
                                                                      "lost_percent": round(lost, 2)}


def wmproxy_forwarder(b, target: int) -> int:
    port = free_port()
    conf = b.tmp / "udp-forwarder.toml"
    conf.write_text(f'log_level = "warning"\n[[stream.upstream]]\nname = "iperf"\n'
                    f'server = [{{ addr = "127.0.0.1:{target}" }}]\n'
                    f'[[stream.server]]\nbind = "127.0.0.1:{port}"\nup_name = "iperf"\n'
                    f'[[stream.server]]\nbind = "127.0.0.1:{port}"\nbind_mode = "udp"\nup_name = "iperf"\n')
    b.start("wmproxy-udp", [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "-c", str(conf)], port)
    return port


def wmproxy_mapping(b, target: int) -> int:
    """A tcp and a udp mapping of the iperf3 server on one public port, through a TLS link."""
    public = free_port()
    start_mapped(b, "udp-center", "".join(f'[[mappings]]\nname = "iperf-{mode}"\nmode = "{mode}"\n'
                                          f'local_addr = "127.0.0.1:{target}"\nremote_bind = "127.0.0.1:{public}"\n'
                                          for mode in ("tcp", "udp")), public)
    return public


def socat_udp(b, target: int) -> int:
    port = free_port()
    b.start("socat-udp", ["socat", "-b", "65536", f"UDP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1",
                          f"UDP:127.0.0.1:{target}"], 0, wait=False)
    b.start("socat-udp-control", ["socat", f"TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1",
                                  f"TCP:127.0.0.1:{target}"], port)
    return port


def run(b) -> None:
    print(f"\nUDP, {SIZE}-byte datagrams, iperf3 -u for {b.seconds}s per rate (relays on CPU 0, iperf3 on CPU "
          f"{LOAD_CPU}):")
    target = free_port()
    b.start("iperf3-server-udp", ["iperf3", "-s", "-p", str(target)], target, cpu=LOAD_CPU)
    paths = [("direct", target), ("socat UDP-LISTEN fork", socat_udp(b, target)),
             ("wmproxy [stream] udp", wmproxy_forwarder(b, target)),
             ("wmproxy udp mapping", wmproxy_mapping(b, target))]
    time.sleep(1.5)  # the link comes up, the mappings are published
    for pps in RATES:
        for name, port in paths:
            iperf_udp(b, name, port, pps)
    udp = b.results.get("udp", {})
    socat = udp.get("socat UDP-LISTEN fork", {})
    for name in ("wmproxy [stream] udp", "wmproxy udp mapping"):
        ratios = [f"{pps}/s {udp[name][str(pps)]['received_per_s'] / socat[str(pps)]['received_per_s']:.2f}x"
                  for pps in RATES if str(pps) in udp.get(name, {}) and socat.get(str(pps), {}).get("received_per_s")]
        print(f"  {name} received / socat's: {', '.join(ratios)}")
