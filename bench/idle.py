"""Memory of idle tunnels: N SOCKS5 CONNECTs through a proxy to a holder process that accepts
and keeps them; the RSS of the proxy's processes over their start, per tunnel.

Used for the center link (client + server per virtual connection) and for the forward proxy
beside pproxy (``--only proxy-memory``).
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time

import psutil

from bench import free_port, wait_port

HOLDER = """
import socket, sys, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(4096)
held = []
while True:
    held.append(l.accept()[0])
"""


def holder(b) -> int:
    """Start the holder (it keeps every connection it accepts); returns its port."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    b.procs.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(port)]))
    wait_port(port)
    return port


def measure(b, label: str, proxy_port: int, holder_port: int, procs: list, counts, key: str) -> dict:
    """Open idle SOCKS5 tunnels through ``proxy_port`` up to each count; print and record the
    KiB per tunnel of ``procs`` (their RSS over the start). Closes the tunnels at the end."""
    ps = [psutil.Process(p.pid) for p in procs]  # taskset execs the program: same pid
    opened: list[socket.socket] = []
    base = sum(p.memory_info().rss for p in ps)
    out = {}
    for count in counts:
        try:
            while len(opened) < count:
                s = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
                s.sendall(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + holder_port.to_bytes(2, "big"))
                opened.append(s)
            for s in opened[-200:]:  # the last ones are through: the rest were before them
                s.settimeout(30)
                reply = b""
                while len(reply) < 12 and (chunk := s.recv(12 - len(reply))):
                    reply += chunk
                if reply[:4] != b"\x05\x00\x05\x00":
                    raise RuntimeError(f"SOCKS5 through {label} failed: {reply!r}")
        except (OSError, RuntimeError) as e:
            print(f"  {label}: {count} tunnels: failed after {len(opened)}: {e}")
            break
        time.sleep(1)
        rss = sum(p.memory_info().rss for p in ps)
        out[count] = round((rss - base) / count / 1024, 1)
        print(f"  {label:<10} {count:>6} idle tunnels: RSS {rss >> 20} MiB, {out[count]} KiB per tunnel "
              "(over the start)")
    for s in opened:
        s.close()
    b.results.setdefault(key, {})[label] = out
    return out


def forward_proxies(b, counts=(1000, 5000)) -> None:
    """Idle SOCKS5 tunnels through the forward proxy, wmproxy beside pproxy."""
    print("\nidle SOCKS5 tunnels through the forward proxy (proxy on one core, tunnels held open):")
    port = holder(b)
    figures = {}
    for name, factory in (("wmproxy", b.wmproxy), ("pproxy", b.pproxy)):
        p, proxy = factory()
        figures[name] = measure(b, name, proxy, port, [p], counts, "proxy_memory_kib")
        b.stop(p)
    for count in counts:
        w, pp = figures["wmproxy"].get(count), figures["pproxy"].get(count)
        if w and pp:
            print(f"  {count} tunnels: wmproxy / pproxy memory per tunnel {w / pp:.2f}x")
