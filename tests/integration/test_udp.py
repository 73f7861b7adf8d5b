"""[stream] UDP forwarding: per-client sessions (no cross-talk), expiry, stickiness, DNS."""

from __future__ import annotations

import random
import signal
import socket
import threading
import time

import dns.message
import dns.query
import dns.rrset
import psutil
import pytest

from conftest import free_port


def udp_config(port: int, servers: list[int], extra: str = "", method: str = "round_robin",
               host: str = "127.0.0.1") -> str:
    at = f"[{host}]" if ":" in host else host
    listed = ", ".join(f'{{ addr = "{at}:{p}" }}' for p in servers)
    return (f'[[stream.upstream]]\nname = "u"\nmethod = "{method}"\nserver = [{listed}]\n'
            f'[[stream.server]]\nbind = "{at}:{port}"\nbind_mode = "udp"\nup_name = "u"\n{extra}\n')


def wait_udp(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    try:
        for _ in range(50):
            s.sendto(b"probe", ("127.0.0.1", port))
            try:
                s.recv(100)
                return
            except socket.timeout:
                continue
        raise TimeoutError("the forwarder does not answer")
    finally:
        s.close()


@pytest.mark.timeout(180)
def test_fifty_clients_get_exactly_their_own_datagrams(start_proxy, udp_echo):
    echo = udp_echo()
    port = free_port()
    start_proxy(config=udp_config(port, [echo.port]), bind=False, wait=False)
    wait_udp(port)
    errors = []

    def client(n: int) -> None:
        rng = random.Random(n)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.settimeout(1)
        try:
            for i in range(200):
                size = rng.choice((1, 17, 512, 1200, 8000, 30000, 60000))
                head = f"{n}:{i}:".encode()
                data = (head + rng.randbytes(max(0, size - len(head))))[:max(size, len(head))]
                answered = False
                for _ in range(10):  # loopback UDP may drop under load: resend
                    s.sendto(data, ("127.0.0.1", port))
                    try:
                        while True:
                            got = s.recv(65535)
                            if got == data:
                                answered = True
                                break
                            if not got.startswith(f"{n}:".encode()):
                                errors.append(f"client {n} got another client's datagram {got[:12]!r}")
                            # else: a late answer to one of our own resends: skip it
                    except socket.timeout:
                        continue
                    break
                if not answered:
                    errors.append(f"client {n} datagram {i} ({size} bytes): no answer")
        finally:
            s.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert errors == []


def test_sessions_expire_and_come_back(start_proxy, udp_echo):
    echo = udp_echo()
    port = free_port()
    p = start_proxy(config=udp_config(port, [echo.port], 'client_timeout = "1s"'), bind=False, wait=False)
    wait_udp(port)
    proc = psutil.Process(p.popen.pid)

    def udp_sockets() -> int:
        return len(proc.net_connections(kind="udp"))

    time.sleep(2)  # the probe's session expires
    base = udp_sockets()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"one", ("127.0.0.1", port))
    assert s.recv(100) == b"one"
    assert udp_sockets() == base + 1
    deadline = time.monotonic() + 5
    while udp_sockets() > base and time.monotonic() < deadline:
        time.sleep(0.1)
    assert udp_sockets() == base  # expired: its socket is gone
    s.sendto(b"two", ("127.0.0.1", port))
    assert s.recv(100) == b"two"  # a new session
    s.close()
    assert p.log().count("new session") >= 3 and "session expired" in p.log()


def test_a_session_sticks_to_one_server(start_proxy, udp_echo):
    a, b = udp_echo(b"A:"), udp_echo(b"B:")
    port = free_port()
    start_proxy(config=udp_config(port, [a.port, b.port]), bind=False, wait=False)
    wait_udp(port)
    seen = set()
    for _ in range(4):  # four clients: round robin spreads them, each sticks
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        answers = set()
        for i in range(5):
            s.sendto(b"x%d" % i, ("127.0.0.1", port))
            answers.add(s.recv(100)[:2])
        s.close()
        assert len(answers) == 1
        seen |= answers
    assert seen == {b"A:", b"B:"}


def test_dns_query_through_the_forwarder(start_proxy):
    dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns_sock.bind(("127.0.0.1", 0))

    def serve_dns():
        while True:
            try:
                wire, addr = dns_sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(wire)
            answer = dns.message.make_response(query)
            answer.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "10.9.8.7"))
            dns_sock.sendto(answer.to_wire(), addr)

    threading.Thread(target=serve_dns, daemon=True).start()
    port = free_port()
    start_proxy(config=udp_config(port, [dns_sock.getsockname()[1]]), bind=False, wait=False)
    time.sleep(1)
    try:
        response = dns.query.udp(dns.message.make_query("service.test.", "A"), "127.0.0.1", port=port, timeout=5)
        assert [r.address for r in response.answer[0]] == ["10.9.8.7"]
    finally:
        dns_sock.close()


def test_max_sessions_drops_the_least_recently_active(start_proxy, udp_echo):
    echo = udp_echo()
    port = free_port()
    p = start_proxy(config=udp_config(port, [echo.port], "max_sessions = 2"), bind=False, wait=False)
    wait_udp(port)
    clients = []
    for i in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(b"c%d" % i, ("127.0.0.1", port))
        assert s.recv(100) == b"c%d" % i
        clients.append(s)
    log = p.wait_log("max_sessions 2 reached, dropped the session of")
    assert log.count("max_sessions 2 reached") == 2  # the probe's session, then the first client's
    for s in clients:
        s.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_ipv4_ipv6_and_the_largest_datagram(start_proxy, udp_echo, host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    echo = udp_echo(host=host)
    port = free_port(family, host)
    start_proxy(config=udp_config(port, [echo.port], host=host), bind=False, wait=False)
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    try:
        for size in (1, 1200, 65507):  # 65,507: the largest UDP payload over IPv4
            data = random.randbytes(size)
            for _ in range(20):
                s.sendto(data, (host, port))
                try:
                    if s.recv(65535) == data:
                        break
                except socket.timeout:
                    continue
            else:
                raise AssertionError(f"no answer for {size} bytes to {host}")
    finally:
        s.close()


def test_reload_sends_new_sessions_to_the_new_upstream(start_proxy, udp_echo, tmp_path):
    a, b = udp_echo(b"A:"), udp_echo(b"B:")
    port = free_port()
    p = start_proxy(config=udp_config(port, [a.port]), bind=False, wait=False)
    wait_udp(port)
    old = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    old.settimeout(5)
    old.sendto(b"x", ("127.0.0.1", port))
    assert old.recv(100) == b"A:x"
    (tmp_path / f"conf-{p.port}.toml").write_text(udp_config(port, [b.port]))
    p.popen.send_signal(signal.SIGHUP)
    p.wait_log("reloaded")
    new = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    new.settimeout(5)
    try:
        for _ in range(3):
            new.sendto(b"y", ("127.0.0.1", port))
            old.sendto(b"z", ("127.0.0.1", port))
            assert new.recv(100) == b"B:y"  # a new session: the new upstream
            assert old.recv(100) == b"A:z"  # a live session keeps its server
    finally:
        new.close()
        old.close()
