"""rate_limit: bandwidth per connection, each way, as a token bucket (net/throttle.py), on the
forward proxy, [stream], [http] locations and mappings. The held rate's accuracy is a bench
figure (bench/ratelimit.py); here: the bucket's arithmetic, and that a limited transfer takes
at least the time its rate allows while the same transfer unlimited is faster."""

from __future__ import annotations

import os
import socket
import time

import pytest

from conftest import Pair, TcpServer, curl, free_port, recv_all, tunnel, wait_port
from wmproxy.config.keys import Invalid, to_bandwidth
from wmproxy.net.throttle import Bucket

SIZE = 2 << 20  # bytes moved
RATE = "2m/s"
RATE_BYTES = 2 << 20
SLOWEST_UNLIMITED = 0.8  # s: loopback moves 2 MiB far faster; a limited transfer takes >= about 0.97 s
LEAST_LIMITED = (SIZE - 2 * 65536) / RATE_BYTES  # the rate after at most a burst each side


@pytest.mark.parametrize("text,rate", [("4m/s", 4 << 20), ("512k/s", 512 << 10), ("1g/s", 1 << 30),
                                       ("10m/2s", 5 << 20), ("100kb/s", 100 << 10), (1000, 1000), ("", 0), (0, 0),
                                       ("3MiB / 1 min", (3 << 20) / 60)])
def test_bandwidths_are_read(text, rate):
    assert to_bandwidth(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["4m", "fast", "-1m/s", "4x/s", True])
def test_bad_bandwidths_are_refused(text):
    with pytest.raises(Invalid, match="expected a bandwidth like '4m/s'"):
        to_bandwidth(text)


def test_the_bucket_lends_a_burst_then_charges_the_rate():
    b = Bucket(1000, burst=100)
    t = b.stamp
    assert b.spend(100, t) == 0  # the burst, at once
    assert b.spend(50, t) == pytest.approx(0.05)  # then debt: wait until it is paid back
    assert b.spend(0, t + 0.05) == pytest.approx(0.0)
    assert b.spend(0, t + 10) == 0 and b.tokens == 100  # credit never beyond the burst
    total, now = 0, t + 10
    for _ in range(1000):  # 1000 writes of 70 bytes, each waiting what it is told: 70 s less the burst
        now += b.spend(70, now)
        total += 70
    assert now - (t + 10) == pytest.approx((total - 100) / 1000)


def test_the_default_burst_is_a_tenth_of_a_second_within_4k_and_64k():
    assert Bucket(256 << 10).burst == (256 << 10) // 10
    assert Bucket(1000).burst == 4096 and Bucket(1 << 30).burst == 65536


@pytest.fixture
def source():
    """Sends SIZE bytes to each connection, then closes."""
    blob = os.urandom(SIZE)

    def serve(conn):
        conn.sendall(blob)

    server = TcpServer(serve)
    yield server
    server.close()


def timed_read(sock: socket.socket) -> float:
    started = time.monotonic()
    got = recv_all(sock)
    assert len(got) == SIZE
    return time.monotonic() - started


def test_a_stream_server_holds_its_rate(start_proxy, source):
    limited, free = free_port(), free_port()
    start_proxy(config=f'[[stream.upstream]]\nname = "u"\nserver = [{{ addr = "127.0.0.1:{source.port}" }}]\n'
                       f'[[stream.server]]\nbind = "127.0.0.1:{limited}"\nup_name = "u"\nrate_limit = "{RATE}"\n'
                       f'[[stream.server]]\nbind = "127.0.0.1:{free}"\nup_name = "u"\n', bind=False, wait=False)
    wait_port(limited)
    wait_port(free)
    with socket.create_connection(("127.0.0.1", free), timeout=30) as s:
        fast = timed_read(s)
    with socket.create_connection(("127.0.0.1", limited), timeout=30) as s:
        slow = timed_read(s)
    assert fast < SLOWEST_UNLIMITED and slow >= LEAST_LIMITED * 0.95 and slow > fast, (fast, slow)


def test_the_forward_proxy_holds_its_rate_both_ways(start_proxy, source, mirror):
    p = start_proxy(config=f'[proxy]\nbind = "127.0.0.1:{{port}}"\nrate_limit = "{RATE}"\n')
    with tunnel(p.port, "socks5", source.port) as s:
        down = timed_read(s)
    assert down >= LEAST_LIMITED * 0.95, down
    blob = os.urandom(SIZE)
    with tunnel(p.port, "connect", mirror) as s:  # up (and back): SIZE bytes each way at the rate
        started = time.monotonic()
        s.sendall(blob)
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == blob
        took = time.monotonic() - started
    assert took >= LEAST_LIMITED * 0.95, took


def test_an_http_location_holds_its_rate_for_files_and_bodies(start_proxy, tmp_path, origin):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "big.bin").write_bytes(os.urandom(SIZE))
    port = free_port()
    start_proxy(config=f'[[http.server]]\nbind = "127.0.0.1:{port}"\n'
                       f'[[http.server.location]]\nrule = "/slow/"\nrate_limit = "{RATE}"\n'
                       f'file_server = {{ root = "{tmp_path / "site"}", prefix = "/slow" }}\n'
                       f'[[http.server.location]]\nrule = "/up"\nrate_limit = "{RATE}"\nclient_max_body_size = "4m"\n'
                       f'proxy_url = "http://127.0.0.1:{origin.port}"\n'
                       f'[[http.server.location]]\nrule = "/"\nfile_server = {{ root = "{tmp_path / "site"}" }}\n',
                bind=False, wait=False)
    wait_port(port)
    got = curl("-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", f"http://127.0.0.1:{port}/big.bin")
    size, fast = got.stdout.split()
    assert int(size) == SIZE and float(fast) < SLOWEST_UNLIMITED, got
    got = curl("-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
               f"http://127.0.0.1:{port}/slow/big.bin")
    size, slow = got.stdout.split()
    assert int(size) == SIZE and float(slow) >= LEAST_LIMITED * 0.95, got
    got = curl("-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--data-binary",
               f"@{tmp_path / 'site' / 'big.bin'}", f"http://127.0.0.1:{port}/up")
    status, up = got.stdout.split()
    assert status == b"200" and float(up) >= LEAST_LIMITED * 0.95, got


def test_a_mapping_holds_its_rate(tmp_path, certs, source):
    remote = free_port()
    p = Pair(tmp_path, certs, client_extra=f'[[mappings]]\nname = "blob"\nmode = "tcp"\n'
                                          f'local_addr = "127.0.0.1:{source.port}"\n'
                                          f'remote_bind = "127.0.0.1:{remote}"\nrate_limit = "{RATE}"\n')
    try:
        p.wait_link()
        wait_port(remote)
        with socket.create_connection(("127.0.0.1", remote), timeout=30) as s:
            slow = timed_read(s)
        assert slow >= LEAST_LIMITED * 0.95, slow
    finally:
        p.stop()


def test_a_dribbling_peer_through_a_limited_relay_gets_every_byte_and_no_spin(start_proxy, mirror):
    """A peer that sends a byte at a time through a relay held by its own rate and its user's
    shared bucket ([[proxy.users]] bandwidth): 1-byte reads, each paid to both buckets. Every
    byte comes back in order, and the process waits between them instead of spinning (its CPU
    over the dribble is a small part of the time: a busy loop would take all of it)."""
    import psutil

    p = start_proxy(config='[proxy]\nbind = "127.0.0.1:{port}"\nrate_limit = "4k/s"\n'
                           '[[proxy.users]]\nusername = "u"\npassword = "p"\nbandwidth = "8k/s"\n')
    proc = psutil.Process(p.popen.pid)
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as s:
        s.sendall(b"\x05\x01\x02")
        assert s.recv(2) == b"\x05\x02"
        s.sendall(b"\x01\x01u\x01p")
        assert s.recv(2) == b"\x01\x00"
        s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + mirror.to_bytes(2, "big"))
        assert s.recv(10)[:2] == b"\x05\x00"
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = bytes(range(256)) * 2
        before = sum(proc.cpu_times()[:2])
        started = time.monotonic()
        for i in range(len(sent)):
            s.sendall(sent[i:i + 1])
            time.sleep(0.004)
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == sent
        took = time.monotonic() - started
        used = sum(proc.cpu_times()[:2]) - before
    assert used < took / 3, (used, took)
