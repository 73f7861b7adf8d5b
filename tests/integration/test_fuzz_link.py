"""A fuzz run of a live center link: an authenticated peer sends random frame sequences (valid
and invalid kinds, stream ids, credits, bodies, in random splits, sometimes never reading what
comes back). The server must never crash, never log a traceback, stay within its memory bound,
and keep serving a well-behaved center client beside it. And the login itself, from strangers:
random TOKENs (names, proofs right, wrong or past ASCII, ids, certificates, lying lengths).

The budget is WMPROXY_FUZZ_SECONDS (default 8 s in ``make test``; ``make fuzz`` runs longer)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import time

import psutil
import pytest

from conftest import Proc, assert_logs_clean, free_port, http_get, wait_port
from wmproxy.prot import frame as fr

BUDGET = float(os.environ.get("WMPROXY_FUZZ_SECONDS", "8"))
RSS_BOUND = 200 << 20  # growth over the start allowed to the server (outbox and windows are bounded far below)


def _login(port: int, user: str = "alice", password: str = "s3cret", client_id: str | None = None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = b""
    while len(head) < 8 + 17:
        head += s.recv(8 + 17 - len(head))
    nonce = fr.decode_hello(head[8:])[1]
    token = fr.encode_token(user, fr.proof(password, nonce), client_id)
    s.sendall(fr.encode_header(len(token), fr.Kind.TOKEN, fr.Flag.ID if client_id else 0, 0) + token)
    mappings = fr.encode_mappings([])
    s.sendall(fr.encode_header(len(mappings), fr.Kind.MAPPING, 0, 0) + mappings)
    return s


def _random_frames(rng: random.Random, target: str) -> bytes:
    out = []
    sids = [rng.choice((1, 3, 5, 7, 2, 0, fr.MAX_SOCK_MAP, rng.randrange(1 << 24))) for _ in range(3)]
    for _ in range(rng.randrange(1, 40)):
        sid = rng.choice(sids)
        roll = rng.random()
        flag = rng.choice((0, 0, fr.Flag.ACK, fr.Flag.FIN, 0xFF))
        if roll < 0.2:
            mode = rng.choice(list(fr.CreateMode))
            body = fr.encode_create(mode, target if mode == fr.CreateMode.CONNECT else "x" * rng.randrange(20))
            kind = fr.Kind.CREATE
        elif roll < 0.45:
            kind, body = fr.Kind.DATA, rng.randbytes(rng.choice((0, 1, 100, 5000, 70000)))
        elif roll < 0.6:
            credit = rng.choice((0, 1, 65536, 1 << 20, 4 << 20, 0xFFFFFFFF, rng.randrange(1 << 32)))
            kind, body = fr.Kind.WINDOW, credit.to_bytes(4, "big") if rng.random() < 0.9 else rng.randbytes(3)
        elif roll < 0.7:
            kind, body = fr.Kind.CLOSE, fr.encode_close(rng.choice(("", "bye", "x" * 200)))
        elif roll < 0.8:
            kind, body = fr.Kind.PING, rng.randbytes(rng.choice((8, 8, 8, 3)))
        elif roll < 0.87:
            kind, body = fr.Kind.MAPPING, rng.randbytes(rng.randrange(30))
        elif roll < 0.93:
            kind, body = rng.choice((fr.Kind.TOKEN, fr.Kind.HELLO)), rng.randbytes(rng.randrange(30))
        else:
            raw = rng.randbytes(rng.randrange(1, 16))
            out.append(raw)  # not a frame at all
            continue
        out.append(fr.encode_header(len(body), kind, flag, sid) + body)
    return b"".join(out)


@pytest.mark.timeout(120 + 2 * BUDGET)
def test_random_frames_from_an_authenticated_peer(tmp_path, origin):
    center, proxy, cport = free_port(), free_port(), free_port()
    conf = tmp_path / "server.toml"
    conf.write_text(f'control = "127.0.0.1:{cport}"\n[center]\nbind = "127.0.0.1:{center}"\ntls = false\n'
                    f'username = "alice"\npassword = "s3cret"\nheartbeat = "2s"\nauth_fail_limit = 0\n')
    server = Proc(["-c", str(conf)], center, tmp_path, name="server")
    client_conf = tmp_path / "client.toml"
    client_conf.write_text(f'[center]\nserver = "127.0.0.1:{center}"\ntls = false\nusername = "alice"\n'
                           f'password = "s3cret"\nheartbeat = "2s"\n[proxy]\nbind = "127.0.0.1:{proxy}"\n')
    client = None
    try:
        wait_port(center, proc=server.popen)
        client = Proc(["-c", str(client_conf)], proxy, tmp_path, program="wmproxy-client", name="client")
        wait_port(proxy, proc=client.popen)
        client.wait_log("is up", timeout=15)
        url = f"http://127.0.0.1:{origin.port}/whoami"
        assert http_get(proxy, url)[1] == b"origin-A"
        rss0 = psutil.Process(server.popen.pid).memory_info().rss
        rng = random.Random(int(os.environ.get("WMPROXY_FUZZ_SEED", "18")))
        deadline, rounds, peak = time.monotonic() + BUDGET, 0, 0
        while time.monotonic() < deadline:
            rounds += 1
            s = _login(center)
            try:
                data = _random_frames(rng, f"127.0.0.1:{origin.port}")
                reads = rng.random() < 0.7  # else: never read what comes back
                pos = 0
                while pos < len(data):
                    step = rng.choice((1, 7, 64, 4096, len(data)))
                    s.sendall(data[pos:pos + step])
                    pos += step
                    if reads:
                        s.setblocking(False)
                        try:
                            while s.recv(1 << 20):
                                pass
                        except (BlockingIOError, ConnectionError):
                            pass
                        s.setblocking(True)
            except (ConnectionError, socket.timeout):
                pass  # the server closed the link: a protocol error, as it should
            finally:
                s.close()
            assert server.popen.poll() is None, "the server died"
            peak = max(peak, psutil.Process(server.popen.pid).memory_info().rss - rss0)
            if rounds % 25 == 0:
                assert http_get(proxy, url)[1] == b"origin-A"  # the good client is served meanwhile
        assert rounds >= 10
        assert peak < RSS_BOUND, f"the server grew by {peak >> 20} MiB"
        assert http_get(proxy, url)[1] == b"origin-A"
        log = server.log()
        assert "Traceback" not in log and "internal error" not in log, log[-3000:]
        assert "protocol error" in log  # the fuzzer did reach the frame checks
    finally:
        if client is not None:
            client.stop()
        server.stop()


def _stranger_token(rng: random.Random, nonce: bytes) -> bytes:
    """A TOKEN (and sometimes a MAPPING after it) as a stranger could send it: any name, a
    right, wrong or non-ASCII proof, an id and a certificate or not, bytes changed, lengths and
    kinds that lie."""
    def short(b: bytes) -> bytes:
        return bytes([len(b) & 255]) + b

    user = rng.choice((b"alice", b"", b"a\nb", b"\xff\xfe", b"x" * 255))
    proof = rng.choice((fr.proof("s3cret", nonce).encode(), rng.randbytes(rng.randint(0, 80)),
                        "\u00e9".encode() * rng.randint(1, 40)))
    body, flag = short(user) + short(proof), 0
    if rng.random() < 0.4:
        flag |= fr.Flag.ID
        body += short(rng.choice((b"id-1", b"", b"a b", b"x" * 80, rng.randbytes(10))))
    if rng.random() < 0.3:
        flag |= fr.Flag.CERT
        cert = rng.randbytes(rng.choice((0, 10, 2000, 20000)))
        body += len(cert).to_bytes(2, "big") + cert
    if rng.random() < 0.3:
        changed = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            if changed:
                changed[rng.randrange(len(changed))] = rng.randrange(256)
        body = bytes(changed)
    kind = fr.Kind.TOKEN if rng.random() < 0.85 else rng.choice(list(fr.Kind))
    length = len(body) if rng.random() < 0.9 else rng.choice((0, 1 << 20, (1 << 24) - 1, len(body) + 3))
    data = fr.encode_header(length, kind, flag if rng.random() < 0.9 else rng.randrange(256), rng.choice((0, 0, 1)))
    data += body
    if rng.random() < 0.5:
        mappings = fr.encode_mappings([]) if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 60))
        data += fr.encode_header(len(mappings), fr.Kind.MAPPING, rng.choice((0, fr.Flag.ID, fr.Flag.PEER)), 0)
        data += mappings
    return data


@pytest.mark.timeout(120 + 2 * BUDGET)
def test_random_handshakes_from_strangers(tmp_path, origin):
    """The center port before the login: what anyone who reaches it may send. A proof past
    ASCII was a TypeError from compare_digest (a traceback per connection, and a failed login
    the throttle never counted); no log line may hold an internal error or be anything but one
    of ours, and a real client links and is served afterwards."""

    center, proxy = free_port(), free_port()
    conf = tmp_path / "server.toml"
    conf.write_text(f'[center]\nbind = "127.0.0.1:{center}"\ntls = false\nusername = "alice"\npassword = "s3cret"\n'
                    f'auth_fail_limit = 0\n')
    server = Proc(["-c", str(conf)], center, tmp_path, name="server")
    client = None
    try:
        server.wait_ready()
        seed = int(os.environ.get("WMPROXY_FUZZ_SEED") or random.randrange(1 << 32))
        rng = random.Random(seed)
        deadline, rounds = time.monotonic() + BUDGET, 0
        while time.monotonic() < deadline:
            rounds += 1
            try:
                with socket.create_connection(("127.0.0.1", center), timeout=5) as s:
                    hello = b""
                    while len(hello) < 8 + 17 and (chunk := s.recv(8 + 17 - len(hello))):
                        hello += chunk
                    s.sendall(_stranger_token(rng, hello[9:25]))
                    s.shutdown(socket.SHUT_WR)
                    while s.recv(65536):
                        pass
            except OSError:
                pass
        assert rounds > 100 and server.popen.poll() is None, (seed, rounds)
        client_conf = tmp_path / "client.toml"
        client_conf.write_text(f'[center]\nserver = "127.0.0.1:{center}"\ntls = false\nusername = "alice"\n'
                               f'password = "s3cret"\n[proxy]\nbind = "127.0.0.1:{proxy}"\n')
        client = Proc(["-c", str(client_conf)], proxy, tmp_path, program="wmproxy-client", name="client")
        client.wait_log("is up", timeout=15)
        assert http_get(proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
        assert_logs_clean([server], seed)
    finally:
        if client is not None:
            client.stop()
        server.stop()


def _frames(s: socket.socket, seconds: float, done=lambda: False):
    """The frames the server sends, (kind, flag, sid, body), until ``done()`` or ``seconds``."""
    buf, deadline = b"", time.monotonic() + seconds
    s.settimeout(0.2)
    while not done() and time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 20)
        except socket.timeout:
            continue
        assert chunk, "the server closed the link"
        buf += chunk
        while len(buf) >= fr.HEADER_SIZE:
            length, kind, flag, sid = fr.decode_header(buf[:fr.HEADER_SIZE], 1 << 24)
            if len(buf) < fr.HEADER_SIZE + length:
                break
            body, buf = buf[fr.HEADER_SIZE:fr.HEADER_SIZE + length], buf[fr.HEADER_SIZE + length:]
            yield kind, flag, sid, body


def _open_streams(s: socket.socket, sids: set[int]) -> dict[int, str]:
    """CREATE PROXY for each of ``sids`` at once; the server's answer to each: 'ack', or the
    reason of its CLOSE."""
    create = fr.encode_create(fr.CreateMode.PROXY, "")
    s.sendall(b"".join(fr.encode_header(len(create), fr.Kind.CREATE, 0, sid) + create for sid in sids))
    got: dict[int, str] = {}
    for kind, flag, sid, body in _frames(s, 15, lambda: len(got) == len(sids)):
        if sid in sids and sid not in got:
            if kind == fr.Kind.CREATE and flag & fr.Flag.ACK:
                got[sid] = "ack"
            elif kind == fr.Kind.CLOSE:
                got[sid] = fr.decode_close(body)
    return got


def _mapping_answers(s: socket.socket, seconds: float) -> list[list[fr.MappingAnswer]]:
    """Every MAPPING+ACK the server sends within ``seconds`` (other frames skipped)."""
    return [fr.decode_mapping_answers(body) for kind, flag, _, body in _frames(s, seconds)
            if kind == fr.Kind.MAPPING and flag & fr.Flag.ACK]


@contextlib.contextmanager
def _server_beside_bob(tmp_path, center: int, center_lines: str):
    """A center server (plain link) with ``center_lines`` in its [center] (its accounts
    included, bob's among them), and bob's center client linked to it: yields the server and
    bob's local proxy port, for a request that must be served whatever another account does."""
    proxy = free_port()
    conf = tmp_path / "server.toml"
    conf.write_text(f'[center]\nbind = "127.0.0.1:{center}"\ntls = false\n{center_lines}\n')
    server = Proc(["-c", str(conf)], center, tmp_path, name="server")
    client_conf = tmp_path / "client.toml"
    client_conf.write_text(f'[center]\nserver = "127.0.0.1:{center}"\ntls = false\nusername = "bob"\n'
                           f'password = "b0b"\n[proxy]\nbind = "127.0.0.1:{proxy}"\n')
    client = None
    try:
        wait_port(center, proc=server.popen)
        client = Proc(["-c", str(client_conf)], proxy, tmp_path, program="wmproxy-client", name="client")
        client.wait_log("is up", timeout=15)
        yield server, proxy
    finally:
        if client is not None:
            client.stop()
        server.stop()


@pytest.mark.timeout(120)
def test_an_account_cannot_open_streams_without_end(tmp_path, origin):
    """Each stream a client opens is a handler and its memory on the server: 100,000 CREATEs
    (1 MB sent) took 1.26 GiB there before max_streams. Now an account has at most max_streams
    open over all its links (more links bring no more); the rest are refused with CLOSE(sid,
    reason), the link goes on, the refusals are logged (a line a second at most, every one
    counted), another account is served meanwhile, and the slots come back when the streams end.
    An account may have its own max_streams."""
    center = free_port()
    links: list[socket.socket] = []
    with _server_beside_bob(tmp_path, center, 'max_streams = 50\nusers = [{ username = "alice", password = "s3cret" }, '
                            '{ username = "bob", password = "b0b" }, '
                            '{ username = "carol", password = "c4rol", max_streams = 5 }]') as (server, proxy):
        try:
            url = f"http://127.0.0.1:{origin.port}/whoami"
            answers: dict[int, str] = {}
            for client_id in ("one", "two"):  # two links of one account
                s = _login(center, client_id=client_id)
                links.append(s)
                got = _open_streams(s, set(range(1, 800, 2)))
                assert len(got) == 400
                answers.update({(client_id, sid): why for sid, why in got.items()})
                assert http_get(proxy, url)[1] == b"origin-A"  # bob is served meanwhile
            accepted = [k for k, why in answers.items() if why == "ack"]
            refused = [why for why in answers.values() if why != "ack"]
            assert len(accepted) == 50, len(accepted)
            assert len(refused) == 750 and set(refused) == {"too many streams (max_streams 50)"}
            time.sleep(1.5)  # (the refusals of the last second are told within one)
            told = [int(n) for n in re.findall(r"refused (\d+) stream\(s\): the far end has max_streams \(50\)",
                                               server.log())]
            assert sum(told) == 750 and len(told) <= 6, told
            for s in links:
                s.close()
            links.clear()
            time.sleep(0.5)
            s = _login(center, client_id="three")  # the account's streams came back with its links' end
            links.append(s)
            got = _open_streams(s, set(range(1, 120, 2)))
            assert sorted(got.values()).count("ack") == 50, got
            s = _login(center, "carol", "c4rol")  # an account's own max_streams
            links.append(s)
            got = _open_streams(s, set(range(1, 20, 2)))
            assert sorted(got.values()).count("ack") == 5 and "too many streams (max_streams 5)" in got.values(), got
            assert_logs_clean([server])
        finally:
            for s in links:
                s.close()


@pytest.mark.timeout(120)
def test_a_flood_of_big_mapping_updates_neither_stalls_the_server_nor_floods_its_log(tmp_path, origin):
    """A MAPPING may list tens of thousands of mappings (up to max_frame), and a client may send
    one after another. Publishing 20,000 under max_mappings took time growing with the square of
    their count (10,000: 3.3 s, all of it with the server's loop stopped for every client), and
    each update wrote a log line per mapping published and per mapping withdrawn. Now an update
    takes time in proportion, updates that come faster than they are applied are coalesced (the
    latest wins, applied after MAPPING_EVERY or ten times what the last one took), and past 20
    mappings the log says how many more in one line. Another account is served throughout."""
    center, web = free_port(), free_port()
    s = None
    with _server_beside_bob(tmp_path, center, f'map_http_bind = "127.0.0.1:{web}"\nusers = [{{ username = "alice", '
                            f'password = "s3cret", max_mappings = 100000 }}, {{ username = "bob", password = "b0b" }}]'
                            ) as (server, proxy):
        try:
            url = f"http://127.0.0.1:{origin.port}/whoami"
            s = _login(center)
            _mapping_answers(s, 0.5)  # (the handshake's)
            for r in range(4):
                specs = [fr.MappingSpec(f"m{r}-{i}", "http", f"d{r}-{i}.test") for i in range(20000)]
                body = fr.encode_mappings(specs)
                s.sendall(fr.encode_header(len(body), fr.Kind.MAPPING, 0, 0) + body)
            for _ in range(8):  # bob's requests are answered at once meanwhile
                started = time.monotonic()
                assert http_get(proxy, url)[1] == b"origin-A"
                assert time.monotonic() - started < 3, "the server's loop stalled"
                time.sleep(0.25)
            answers = _mapping_answers(s, 12)
            assert [len(a) for a in answers] == [20000, 20000]  # the first, then only the latest
            assert all(a.accepted for a in answers[0]) and answers[1][0].name == "m3-0"
            log = server.log()
            assert log.count("published on http Host") <= 3 * 20
            assert "19980 more mappings of client alice published" in log
            assert log.count(" withdrawn") <= 2 * 21 and "19980 more mappings withdrawn" in log
            s.close()  # (its routes stay known, offline: 502; a Host never routed is a 404)
            s = None
            server.wait_log(" ended: ")
            with socket.create_connection(("127.0.0.1", web), timeout=10) as c:  # the latest update holds
                c.sendall(b"GET / HTTP/1.1\r\nHost: d3-7.test\r\nConnection: close\r\n\r\n")
                assert c.recv(100).startswith(b"HTTP/1.1 502 ")
            with socket.create_connection(("127.0.0.1", web), timeout=10) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: d1-7.test\r\nConnection: close\r\n\r\n")
                assert c.recv(100).startswith(b"HTTP/1.1 404 ")  # (never applied: coalesced away)
            assert_logs_clean([server])
        finally:
            if s is not None:
                s.close()
