"""Center link benchmark: throughput of one stream through client -> link -> server, TLS and
plain, beside a direct run, a two-socat relay chain and a socat TLS pair; and the memory of
idle virtual connections (RSS of both processes per connection).

Both ends of every chain run on CPU 0 (as the socat pairs do), the load on CPU 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import idle
from bench import LOAD_CPU, ROOT, cpu_seconds, free_port


def certs(tmp: Path) -> Path:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("center.bench")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    (tmp / "both.pem").write_bytes((tmp / "server.pem").read_bytes() + (tmp / "server.key").read_bytes())
    return tmp


def start_pair(b, tls: bool, tmp: Path, window: str = "256k") -> tuple[int, list]:
    """A center server and client on CPU 0; returns the client's proxy port and the two processes."""
    center, proxy = free_port(), free_port()
    tls_line = "tls = true" if tls else "tls = false"
    server = tmp / f"server-{tls}.toml"
    server.write_text(f'log_level = "warning"\n[center]\nbind = "127.0.0.1:{center}"\n{tls_line}\n'
                      f'cert = "{tmp}/server.pem"\nkey = "{tmp}/server.key"\nwindow = "{window}"\n')
    client = tmp / f"client-{tls}.toml"
    client.write_text(f'log_level = "warning"\n[center]\nserver = "127.0.0.1:{center}"\n{tls_line}\n'
                      f'ca = "{tmp}/ca.pem"\nserver_name = "center.bench"\nwindow = "{window}"\n'
                      f'[proxy]\nbind = "127.0.0.1:{proxy}"\nmax_connections = 20000\nmax_connections_per_ip = 0\n')
    procs = [b.start(f"center-server-{tls}", [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "-c", str(server)],
                     center),
             b.start(f"center-client-{tls}", [sys.executable, str(ROOT / "bin" / "wmproxy-client"), "-c", str(client)],
                     proxy)]
    time.sleep(1.5)  # the link comes up
    return proxy, procs


def start_mapped(b, name: str, mappings: str, ready: int, server_extra: str = "") -> list:
    """A center server and a client joined by a TLS link (both on CPU 0), the client publishing
    ``mappings`` (its [[mappings]] tables); waits until ``ready``, a port they open, listens.
    Returns the two processes."""
    tmp = certs(b.tmp)
    center = free_port()
    server = tmp / f"{name}-server.toml"
    server.write_text(f'log_level = "warning"\n[center]\nbind = "127.0.0.1:{center}"\ncert = "{tmp}/server.pem"\n'
                      f'key = "{tmp}/server.key"\n{server_extra}\n')
    client = tmp / f"{name}-client.toml"
    client.write_text(f'log_level = "warning"\n[center]\nserver = "127.0.0.1:{center}"\nca = "{tmp}/ca.pem"\n'
                      f'server_name = "center.bench"\n{mappings}')
    return [b.start(f"{name}-server", [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "-c", str(server)],
                    center),
            b.start(f"{name}-client", [sys.executable, str(ROOT / "bin" / "wmproxy-client"), "-c", str(client)],
                    ready)]


def measured(b, name: str, port: int, procs, prefix=(), extra=None) -> float:
    """b.iperf through a relay made of ``procs``, plus their CPU seconds per GiB moved (steadier
    than the rate on a machine whose speed drifts)."""
    before = cpu_seconds(procs)
    time.sleep(0.2)
    gbit = b.iperf(name, port, list(prefix), extra=extra)
    time.sleep(0.5)  # socat's parent reaps its child
    per_gib = (cpu_seconds(procs) - before) * (1 << 30) / b.bytes_total
    print(f"  {'':<22} CPU {per_gib:.2f} s per GiB moved (both ends)")
    b.results.setdefault("center_cpu_s_per_gib", {})[name] = round(per_gib, 2)
    return gbit


def throughput(b) -> None:
    """One 1 GiB stream through each path (iperf3 -n)."""
    tmp = certs(b.tmp)
    gb = b.bytes_total
    print(f"\ncenter link, one stream of {gb >> 20} MiB (iperf3 -n; both ends on CPU 0, iperf3 on CPU {LOAD_CPU}):")
    iperf_port = free_port()
    b.start("iperf3-server-c", ["iperf3", "-s", "-p", str(iperf_port)], iperf_port, cpu=LOAD_CPU)
    n = ["-n", str(gb)]
    direct = b.iperf("direct", iperf_port, extra=n)
    # two plain socat relays in a row
    mid = free_port()
    chain_procs = [b.start("socat-2", ["socat", "-b", "65536", f"TCP-LISTEN:{mid},fork,reuseaddr,bind=127.0.0.1",
                                       f"TCP:127.0.0.1:{iperf_port}"], mid)]
    front = free_port()
    chain_procs.append(b.start("socat-1", ["socat", "-b", "65536",
                                           f"TCP-LISTEN:{front},fork,reuseaddr,bind=127.0.0.1",
                                           f"TCP:127.0.0.1:{mid}"], front))
    # a socat TLS pair: plain -> TLS -> plain
    tls_mid = free_port()
    tls_procs = [b.start("socat-tls-2", ["socat", "-b", "65536",
                                         f"OPENSSL-LISTEN:{tls_mid},fork,reuseaddr,bind=127.0.0.1,"
                                         f"cert={tmp}/both.pem,verify=0", f"TCP:127.0.0.1:{iperf_port}"], tls_mid)]
    tls_front = free_port()
    tls_procs.append(b.start("socat-tls-1", ["socat", "-b", "65536",
                                             f"TCP-LISTEN:{tls_front},fork,reuseaddr,bind=127.0.0.1",
                                             f"OPENSSL:127.0.0.1:{tls_mid},verify=0"], tls_front))
    proxy_plain, plain_procs = start_pair(b, False, tmp)
    proxy_tls, tls_link_procs = start_pair(b, True, tmp)
    runs = [("socat chain", lambda: measured(b, "socat chain (plain)", front, chain_procs, extra=n)),
            ("socat TLS pair", lambda: measured(b, "socat TLS pair", tls_front, tls_procs, extra=n)),
            ("wmproxy link (plain)", lambda: measured(b, "wmproxy link (plain)", iperf_port, plain_procs,
                                                       b.chains("socks5", proxy_plain), extra=n)),
            ("wmproxy link (TLS)", lambda: measured(b, "wmproxy link (TLS)", iperf_port, tls_link_procs,
                                                     b.chains("socks5", proxy_tls), extra=n))]
    b.in_rounds("center", runs, [("plain link / socat chain", "wmproxy link (plain)", "socat chain", 0.5),
                                 ("TLS link / socat TLS pair", "wmproxy link (TLS)", "socat TLS pair", 0.7)])
    print(f"  (direct {direct:.1f} Gbit/s)")


def memory(b, counts=(1000, 10000)) -> None:
    tmp = certs(b.tmp)
    print("\nidle virtual connections (SOCKS5 CONNECT through the client, held open; RSS of client + server):")
    holder_port = idle.holder(b)
    proxy, pair = start_pair(b, True, tmp)
    idle.measure(b, "center", proxy, holder_port, pair, counts, "center_memory_kib")
    idle_links(b, tmp)


def idle_links(b, tmp: Path, counts=(100, 500)) -> None:
    """The server's RSS per idle TLS link (logged in, one client id each, no mapping, no
    stream), and after each link carried one 1 MiB burst and went quiet for two heartbeats."""
    import socket
    import ssl

    import psutil
    sys.path.insert(0, str(ROOT))
    from wmproxy.prot import frame as fr

    center = free_port()
    conf = tmp / "links-server.toml"
    conf.write_text(f'log_level = "warning"\n[center]\nbind = "127.0.0.1:{center}"\ncert = "{tmp}/server.pem"\n'
                    f'key = "{tmp}/server.key"\nheartbeat = "3s"\nmax_connections_per_ip = 0\n')
    server = b.start("links-server", [sys.executable, str(ROOT / "bin" / "wmproxy-server"), "-c", str(conf)], center)
    proc = psutil.Process(server.pid)
    context = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    links: list = []
    ping = fr.encode_header(fr.PING_SIZE, fr.Kind.PING, 0, 0) + b"p" * fr.PING_SIZE

    def keep(seconds: float) -> None:  # the links alive (a PING each second), the server's PINGs read
        for _ in range(int(seconds)):
            for s in links:
                s.sendall(ping)
                s.setblocking(False)
                try:
                    s.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    pass
                s.setblocking(True)
            time.sleep(1)

    base = proc.memory_info().rss
    print("\nidle center links (TLS, logged in, no stream; RSS of the server over its start):")
    try:
        for count in counts:
            while len(links) < count:
                s = context.wrap_socket(socket.create_connection(("127.0.0.1", center), timeout=30),
                                        server_hostname="center.bench")
                hello = b""
                while len(hello) < 8 + 17:
                    hello += s.recv(8 + 17 - len(hello))
                token = fr.encode_token("", "", f"bench-{len(links)}")
                mappings = fr.encode_mappings([])
                s.sendall(fr.encode_header(len(token), fr.Kind.TOKEN, fr.Flag.ID, 0) + token
                          + fr.encode_header(len(mappings), fr.Kind.MAPPING, 0, 0) + mappings)
                links.append(s)
            keep(2)
            rss = proc.memory_info().rss
            print(f"  {count:>5} idle links: {(rss - base) / count / 1024:.1f} KiB per link")
            b.results.setdefault("center_link_kib", {})[count] = round((rss - base) / count / 1024, 1)
        # a burst on each (DATA for a stream the server does not know: read, refused with CLOSE), then quiet
        data = fr.encode_header(65536, fr.Kind.DATA, 0, 1) + b"x" * 65536
        for s in links:
            s.sendall(data * 16)
        keep(1)
        rss_busy = proc.memory_info().rss
        keep(7)  # quiet heartbeats (3 s), then a PING the reader takes
        rss = proc.memory_info().rss
        print(f"  {len(links):>5} links after a 1 MiB burst each: {(rss_busy - base) / len(links) / 1024:.1f} KiB "
              f"per link; then quiet for 7 s (3 s heartbeats): {(rss - base) / len(links) / 1024:.1f} KiB per link")
        b.results.setdefault("center_link_kib", {})["after_burst_quiet"] = round((rss - base) / len(links) / 1024, 1)
    finally:
        for s in links:
            s.close()
        b.stop(server)
