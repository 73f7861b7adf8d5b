"""net/: the reader, HTTP body moves and the relay, over real (gevent) socket pairs;
the DNS resolver's hosts file and cache."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import gevent
import pytest
from gevent import socket as gsocket

from wmproxy.config import DnsConfig
from wmproxy.errors import DnsError, ProtocolError
from wmproxy.net import httpio
from wmproxy.net.dns import Resolver, parse_hosts
from wmproxy.net.reader import PeerClosed, Reader
from wmproxy.net import splice
from wmproxy.net.relay import relay, relay_then
from wmproxy.prot import framing


def feeder(data: bytes, piece: int, gap: float = 0):
    """A socket pair whose far end sends ``data`` in ``piece``-byte writes (``gap`` seconds
    apart), then closes."""
    a, b = gsocket.socketpair()

    def send():
        for i in range(0, len(data), piece):
            b.sendall(data[i:i + piece])
            gevent.sleep(gap)
        b.close()

    return a, gevent.spawn(send)


CHUNKED = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\nNEXT"


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_chunked_body_any_split(piece):
    sock, g = feeder(CHUNKED, piece)
    reader = Reader(sock)
    out = []
    assert httpio.copy_body(reader, out.append, framing.CHUNKED, chunked_out=False) == 11
    assert b"".join(out) == b"hello world"
    assert reader.read_exact(4) == b"NEXT"  # the next message is left in place
    g.join()
    sock.close()


WHOLE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"


@pytest.mark.parametrize("data,piece,whole,rest", [
    (WHOLE, 1000, True, b""),  # head and body in the first read: the body comes back, nothing buffered
    (WHOLE, len(WHOLE) - 2, False, b""),  # the body's end in a second read: buffered, copy_body ends it
    (WHOLE, 20, False, b""),  # the head in pieces: the reader's buffer collects it
    (b"HTTP/1.1 100 Continue\r\n\r\n" + WHOLE, 1000, False, b""),  # an interim answer first
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 1000, False, b""),
    (WHOLE + b"HTTP/1.1 200 OK", 1000, False, b"HTTP/1.1 200 OK"),  # more than the answer: left buffered
])
def test_read_response_whole_or_buffered(data, piece, whole, rest):
    sock, g = feeder(data, piece, 0.05)
    reader = Reader(sock)
    seen = []
    response, body = httpio.read_response_whole(reader, 8192, "GET", seen.append)
    assert response.status == 200 and (body is not None) == whole
    if body is None:
        body = bytearray()
        httpio.copy_body(reader, body.extend, response.framing, False)
    assert bytes(body) == b"hello" and bytes(reader.buf) == rest
    assert [h.status for h in seen] == ([100] if b"100 Continue" in data else [])
    g.join()
    sock.close()


def test_chunked_reencoded_keeps_trailers():
    sock, g = feeder(CHUNKED, 4)
    out = []
    httpio.copy_body(Reader(sock), out.append, framing.CHUNKED, chunked_out=True)
    assert b"".join(out) == b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    g.join()
    sock.close()


def test_bad_chunk_and_early_close():
    sock, g = feeder(b"zz\r\n", 10)
    with pytest.raises(ProtocolError):
        httpio.copy_body(Reader(sock), lambda d: None, framing.CHUNKED, True)
    g.join()
    sock.close()
    sock, g = feeder(b"abc", 10)
    with pytest.raises(PeerClosed):
        httpio.copy_body(Reader(sock), lambda d: None, ("length", 10), True)
    g.join()
    sock.close()


def test_read_until_limit_is_431():
    sock, g = feeder(b"x" * 5000, 100)
    with pytest.raises(ProtocolError) as e:
        Reader(sock).read_until(b"\r\n\r\n", 1024)
    assert e.value.http_status == 431
    g.kill()
    sock.close()


def test_kept_read_watcher_wakes_its_reader_and_is_released():
    loop = gevent.get_hub().loop
    base = loop.activecnt
    a, b = gsocket.socketpair()
    reader = Reader(a, keep_watching=True)
    try:
        gevent.spawn_later(0.05, b.sendall, b"x")
        assert reader.receive() == b"x"
        assert loop.activecnt == base + 1  # still started between waits
        b.sendall(b"y")  # readiness while nobody waits: the watcher stops, nothing spins
        gevent.sleep(0.05)
        assert loop.activecnt == base
        with gevent.Timeout(1):
            assert reader.receive() == b"y"  # started again: the waiting byte wakes it at once
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):
                reader.receive()  # a waiter killed mid-wait leaves nothing behind
        b.sendall(b"z")
        gevent.sleep(0.05)
        assert loop.activecnt == base
        assert reader.receive() == b"z"
        assert reader.reads == 3
    finally:
        reader.release()
        a.close()
        b.close()
    assert loop.activecnt == base


def test_relay_half_close_and_counts():
    a_out, a_in = gsocket.socketpair()  # client side: a_out is ours, a_in goes to relay
    b_in, b_out = gsocket.socketpair()  # server side
    payload = b"p" * 1_000_000
    g = gevent.spawn(relay, a_in, b_in, 5.0)
    sender = gevent.spawn(lambda: (a_out.sendall(payload), a_out.shutdown(socket.SHUT_WR)))
    got = b""
    while data := b_out.recv(65536):
        got += data
    assert got == payload  # EOF passed through as a half-close
    sender.get(timeout=5)
    b_out.sendall(b"answer after half-close")
    b_out.close()
    back = b""
    while data := a_out.recv(65536):
        back += data
    assert back == b"answer after half-close"
    stats = g.get(timeout=5)
    assert (stats.a_to_b, stats.b_to_a, stats.reason) == (len(payload), 23, "eof")
    a_out.close()


def test_relay_idle_timeout():
    a_out, a_in = gsocket.socketpair()
    b_in, b_out = gsocket.socketpair()
    stats = gevent.spawn(relay, a_in, b_in, 0.3).get(timeout=3)
    assert stats.reason == "idle"
    assert a_out.recv(10) == b"" and b_out.recv(10) == b""
    a_out.close()
    b_out.close()


def tcp_pair() -> tuple:
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    near = gsocket.create_connection(listener.getsockname())
    far, _ = listener.accept()
    listener.close()
    return near, far


class SocketLike:
    """A socket behind a Python object (as a TLS socket or a websocket is): relay() pumps it
    with greenlets instead of relaying it by callbacks."""

    def __init__(self, sock) -> None:
        self.sock = sock

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.mark.parametrize("pumped", [False, True], ids=["callbacks", "greenlet pumps"])
def test_relay_ends_its_own_pump_when_the_other_direction_fails(pumped):
    """A reset on b's side must end the a -> b direction too (with pumps: the caller's own
    inline pump), reset a's side as well, and nothing may reach the caller afterwards."""
    a_in, a_out = tcp_pair()
    b_in, b_out = tcp_pair()
    stats = None

    def run():
        nonlocal stats
        stats = relay(SocketLike(a_in) if pumped else a_in, b_in, 5)
        gevent.sleep(0.2)  # a stray stop request would land here
        return "clean"

    g = gevent.spawn(run)
    gevent.sleep(0.05)
    b_out.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    b_out.close()  # a reset: the b -> a pump fails while a -> b waits for the client
    assert g.get(timeout=3) == "clean"
    assert stats.reason.startswith("error")
    with pytest.raises(ConnectionResetError):  # the client's connection was reset too: a cut, not an end
        a_out.recv(10)
    a_out.close()


def test_relay_spliced_between_tcp_sockets():
    """Real TCP sockets on both sides: the splice path, with a sha256 check."""
    lst = gsocket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    port = lst.getsockname()[1]
    client = gsocket.create_connection(("127.0.0.1", port))
    relay_a, _ = lst.accept()
    server_side = gsocket.create_connection(("127.0.0.1", port))
    relay_b, _ = lst.accept()
    data = bytes(range(256)) * 20000
    g = gevent.spawn(relay, relay_a, relay_b, 5.0)
    sender = gevent.spawn(lambda: (client.sendall(data), client.shutdown(socket.SHUT_WR)))
    h, n = hashlib.sha256(), 0
    while chunk := server_side.recv(65536):
        h.update(chunk)
        n += len(chunk)
    sender.get(timeout=5)
    server_side.close()
    assert client.recv(10) == b""
    assert (n, h.hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())
    assert g.get(timeout=5).a_to_b == len(data)
    client.close()
    lst.close()


def test_hosts_file_and_literals(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost box.test # comment\n::1 box.test\nbad line\n")
    assert parse_hosts(hosts.read_text())["box.test"] == [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    r = Resolver(DnsConfig(hosts_file=str(hosts), nameservers=("127.0.0.1",), timeout=1.0))
    assert r.resolve("BOX.test.") == [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    assert r.resolve("::1") == [(socket.AF_INET6, "::1")]


def test_failed_lookup_is_a_dns_error_and_negatively_cached(tmp_path):
    silent = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a name server that never answers
    silent.bind(("127.0.0.1", 0))
    r = Resolver(DnsConfig(hosts_file="", nameservers=("127.0.0.1",), timeout=0.5, negative_ttl=60))
    r._dns.port = silent.getsockname()[1]
    with pytest.raises(DnsError):
        r.resolve("nothing.test")
    t = gevent.get_hub().loop.now()
    with pytest.raises(DnsError):
        r.resolve("nothing.test")  # from the cache: immediate
    assert gevent.get_hub().loop.now() - t < 0.2
    silent.close()


@pytest.mark.parametrize("spliced", [True, False], ids=["splice", "copy"])
def test_relay_then_lets_two_sockets_go_on_without_the_caller(spliced, monkeypatch):
    """Two plain sockets: relay_then returns at once and the relay runs on callbacks (no
    greenlet), with half-close, counters, the owner's slot freed once, and copy where the
    kernel refuses splice."""
    if not spliced:
        monkeypatch.setattr(splice, "HAVE_SPLICE", False)  # the pipes' stand-in: a buffer
    a_out, a_in = tcp_pair()
    b_in, b_out = tcp_pair()
    slots, ended = [], []

    def adopt(stop):
        slots.append(stop)
        return lambda: slots.remove(stop)

    up, down = os.urandom(3 << 20), os.urandom(1 << 20)
    assert relay_then(a_in, b_in, ended.append, adopt, 5.0, a_pending=b"early:") is True
    assert len(slots) == 1 and not ended
    sender = gevent.spawn(lambda: (a_out.sendall(up), a_out.shutdown(socket.SHUT_WR)))
    got = bytearray()
    while data := b_out.recv(65536):
        got += data
    assert bytes(got) == b"early:" + up  # then EOF, passed through as a half-close
    sender.get(timeout=5)
    b_out.sendall(down)
    b_out.close()
    back = bytearray()
    a_out.settimeout(5)
    while data := a_out.recv(65536):
        back += data
    assert hashlib.sha256(back).digest() == hashlib.sha256(down).digest()
    gevent.sleep(0.05)
    assert [(s.a_to_b, s.b_to_a, s.reason) for s in ended] == [(len(up) + 6, len(down), "eof")]
    assert slots == []
    a_out.close()


def test_relay_then_stop_closes_both_ends():
    a_out, a_in = tcp_pair()
    b_in, b_out = tcp_pair()
    slots, ended = [], []
    relay_then(a_in, b_in, ended.append, lambda stop: slots.append(stop) or (lambda: None), None)
    a_out.sendall(b"x")
    assert b_out.recv(1) == b"x"
    slots[0]()  # a drain past its grace period
    a_out.settimeout(5)
    b_out.settimeout(5)
    assert a_out.recv(1) == b"" and b_out.recv(1) == b""
    assert ended[0].reason == "stopped"
    a_out.close()
    b_out.close()


def _kernel_buffer_bound() -> int:
    """The most payload a loopback TCP pair's buffers can hold here, summed over the sockets in the
    slow-destination test, plus a pipe and a spare MiB."""
    def most(name):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as f:
                return int(f.read().split()[2])
        except (OSError, ValueError, IndexError):
            return 32 << 20
    return most("tcp_rmem") + 2 * most("tcp_wmem") + (256 << 10) + splice.PIPE_SIZE + (1 << 20)


@pytest.mark.parametrize("spliced", [True, False], ids=["splice", "copy"])
def test_relay_then_slow_destination_then_reset(spliced, monkeypatch):
    """A destination that stops reading fills its socket: the bridge stops reading the source
    (what it holds is one pipe or one buffer); when the destination then resets, the relay
    ends with an error and the source side is closed."""
    if not spliced:
        monkeypatch.setattr(splice, "HAVE_SPLICE", False)
    a_out, a_in = tcp_pair()
    b_in, b_out = tcp_pair()
    b_out.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ended = []
    relay_then(a_in, b_in, ended.append, lambda stop: (lambda: None), None)
    sent = [0]

    def flood():
        chunk = b"z" * 65536
        try:
            while True:
                a_out.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass

    sender = gevent.spawn(flood)
    stalled, deadline = -1, time.monotonic() + 10
    while sent[0] != stalled:  # nobody reads b_out: the flood stops once everything upstream is full
        assert time.monotonic() < deadline, "the source is still being read"
        stalled = sent[0]
        gevent.sleep(0.3)
    assert not ended
    # bounded by what the kernel may buffer (a_out's send, a_in's receive and b_in's send buffers at
    # their autotuning maxima, b_out's small receive buffer) plus one pipe or one user buffer: a relay
    # that kept reading into memory would go past it (the maxima differ between machines: read them)
    assert stalled < _kernel_buffer_bound()
    b_out.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    b_out.close()  # a reset
    sender.join(timeout=5)
    assert sender.dead and ended and ended[0].reason.startswith("error")
    a_out.close()


def test_the_one_stale_connection_rule():
    from wmproxy.errors import ProtocolError
    from wmproxy.net import httpio
    from wmproxy.net.reader import PeerClosed

    for error in (PeerClosed("x"), ConnectionResetError(), BrokenPipeError(), ProtocolError("garbage")):
        assert httpio.stale_retry(True, framing.NO_BODY, error)
        assert not httpio.stale_retry(False, framing.NO_BODY, error)  # a new connection failing is the server
        assert not httpio.stale_retry(True, ("length", 5), error)  # a body may not be sent twice
    assert not httpio.stale_retry(True, framing.NO_BODY, socket.timeout("slow"))  # slow is not stale


def test_auth_throttle_is_bounded_under_a_flood_of_addresses():
    from wmproxy.net.limits import AuthThrottle

    class Small(AuthThrottle):
        MAX_ADDRESSES = 50

    t = Small(3, 60.0, "test")
    for _ in range(3):
        t.failed("10.0.0.1")
    assert t.blocked("10.0.0.1") and not t.blocked("10.0.0.2")
    table = None
    for i in range(5000):  # a flood of new addresses, each failing once
        t.failed(f"fd00::{i:x}")
        assert len(t.failures) <= Small.MAX_ADDRESSES
        if i == 100:
            table = t.failures
    assert t.failures is table  # full of recent entries: not rebuilt for every new address
    assert t.blocked("10.0.0.1")  # counted before the flood, still refused
    t.succeeded("10.0.0.1")
    assert not t.blocked("10.0.0.1")


def test_histogram_buckets_are_cumulative_and_merged_rows_add_up():
    from wmproxy.metrics import Histogram, merge_servers

    h = Histogram()
    for seconds in (0.001, 0.005, 0.2, 3.0, 60.0):
        h.observe(seconds)
    d = h.as_dict()
    assert d["buckets"]["0.005"] == 2 and d["buckets"]["0.25"] == 3 and d["buckets"]["5"] == 4
    assert d["buckets"]["+Inf"] == d["count"] == 5 and abs(d["sum"] - 63.206) < 1e-9
    row = {"kind": "http", "upstream": "app", "server": "a:1", "up": False, "active": 1, "requests": 2, "failures": 1,
           "connect_seconds": d, "first_byte_seconds": Histogram().as_dict()}
    (merged,) = merge_servers([row, {**row, "up": True}])
    # the C observation (prot/_speedups.c) and the Python one agree, bounds included
    from wmproxy.metrics import BUCKETS, observe_py

    speedups = pytest.importorskip("wmproxy.prot._speedups")
    values = [0.0, -1.0, *BUCKETS, *(b * 1.0000001 for b in BUCKETS), *(b * 0.9999999 for b in BUCKETS), 1e9]
    c_counts, py_counts = [0] * 12 + [0.0], [0] * 12 + [0.0]
    for v in values:
        speedups.observe(c_counts, v)
        observe_py(py_counts, v)
    assert c_counts == py_counts
    with pytest.raises(TypeError):
        speedups.observe([0, 0], 1.0)
    assert merged["up"] and merged["requests"] == 4 and merged["connect_seconds"]["buckets"]["+Inf"] == 10
    assert len(merge_servers([row, {**row, "server": "b:1"}])) == 2


def test_gevent_internals_are_there_and_gevent_is_within_the_tested_versions():
    import tomllib

    import gevent
    from packaging.requirements import Requirement
    from packaging.version import Version

    from wmproxy.net import gevent_io

    gevent_io.check()  # what a process checks when it starts
    deps = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if d.startswith("gevent")]
    assert str(req.specifier) == ",".join(sorted(gevent_io.GEVENT_TESTED.split(",")))
    assert Version(gevent.__version__) in req.specifier  # what CI installed is within the bound
