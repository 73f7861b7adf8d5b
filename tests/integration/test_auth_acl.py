"""Authentication and client allow/deny lists: checked before any upstream is dialled."""

from __future__ import annotations

import socket

import pytest

from conftest import curl, read_response


def test_http_and_connect_auth(start_proxy, origin):
    p = start_proxy("--username", "u", "--password", "p w")
    url = f"http://127.0.0.1:{origin.port}/whoami"
    r = curl("-x", p.url, "--proxy-user", "u:p w", url)
    assert r.stdout == b"origin-A", r.stderr
    r = curl("-p", "-x", p.url, "--proxy-user", "u:p w", url)
    assert r.stdout == b"origin-A", r.stderr
    hits = origin.hits
    for creds in ("u:wrong", "x:p w", "u:"):
        r = curl("-x", p.url, "--proxy-user", creds, "-o", "/dev/null", "-w", "%{http_code}", url)
        assert r.stdout == b"407", creds
    r = curl("-x", p.url, "-D", "-", "-o", "/dev/null", url)  # no credentials at all
    assert b"407" in r.stdout.split(b"\r\n")[0]
    assert b'proxy-authenticate: basic realm="wmproxy"' in r.stdout.lower()
    r = curl("-p", "-x", p.url, "--proxy-user", "u:bad", url)
    assert r.returncode != 0
    assert origin.hits == hits, "a refused request reached the origin"


def test_socks5_auth(start_proxy, origin):
    p = start_proxy(env={"WMPROXY_USERNAME": "alice", "WMPROXY_PASSWORD": "s3cret"})
    url = f"http://localhost:{origin.port}/whoami"
    r = curl("-x", f"socks5h://alice:s3cret@127.0.0.1:{p.port}", url)
    assert r.stdout == b"origin-A", r.stderr
    hits = origin.hits
    r = curl("-x", f"socks5h://alice:nope@127.0.0.1:{p.port}", url)
    assert r.returncode != 0
    r = curl("--socks5-hostname", f"127.0.0.1:{p.port}", url)  # offers no auth method
    assert r.returncode != 0
    r = curl("--socks4a", f"127.0.0.1:{p.port}", url)  # SOCKS4 cannot carry a password
    assert r.returncode != 0
    assert origin.hits == hits
    p.wait_log("bad credentials for user 'alice'")
    p.wait_log("no acceptable auth method")


def test_denied_client_gets_each_protocols_refusal(start_proxy, origin):
    p = start_proxy("--deny", "127.0.0.0/8")
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 403")
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + origin.port.to_bytes(2, "big"))
        assert s.recv(10)[:2] == b"\x05\x02"  # connection not allowed by ruleset
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"\x04\x01" + origin.port.to_bytes(2, "big") + b"\x7f\x00\x00\x01\x00")
        assert s.recv(8)[:2] == b"\x00\x5b"
    assert origin.hits == 0


def test_allow_list(start_proxy, origin):
    p = start_proxy("--allow", "10.0.0.0/8")
    r = curl("-x", p.url, "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{origin.port}/")
    assert r.stdout == b"403"
    p2 = start_proxy("--allow", "10.0.0.0/8", "--allow", "127.0.0.1/32")
    r = curl("-x", p2.url, f"http://127.0.0.1:{origin.port}/whoami")
    assert r.stdout == b"origin-A"


def _socks5(port: int, user: str, password: str, target_port: int) -> tuple[socket.socket, int, int]:
    """A SOCKS5 CONNECT to 127.0.0.1:target_port as ``user``: (socket, login status, reply code)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    s.sendall(bytes([1, len(user)]) + user.encode() + bytes([len(password)]) + password.encode())
    status = s.recv(2)[1]
    if status:
        return s, status, -1
    s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + target_port.to_bytes(2, "big"))
    reply = s.recv(10)
    return s, status, reply[1]


@pytest.mark.timeout(120)
def test_proxy_users_each_with_their_own_limits(start_proxy, origin):
    """[[proxy.users]]: several accounts beside username; max_connections counts a user's
    connections over every address (SOCKS5 'not allowed by ruleset', HTTP 429 beyond it), a
    disabled user is told so once its password is right, bandwidth holds all of a user's
    connections together; a reload changes the limits."""
    import os
    import threading
    import time

    from conftest import TcpServer, control, free_port, recv_all

    blob = os.urandom(512 << 10)
    source = TcpServer(lambda conn: conn.sendall(blob))
    cport = free_port()
    users = ('[[proxy.users]]\nusername = "ann"\npassword = "a1"\nmax_connections = 1\n'
             '[[proxy.users]]\nusername = "ben"\npassword = "b2"\nbandwidth = "256k/s"\n'
             '[[proxy.users]]\nusername = "cat"\npassword = "c3"\ndisabled = true\n')
    conf = f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{{port}}"\nusername = "root"\n' \
           f'password = "r0"\n' + users
    p = start_proxy(config=conf)
    try:
        url = f"http://127.0.0.1:{origin.port}/whoami"
        for creds in ("root:r0", "ann:a1", "ben:b2"):
            assert curl("-x", p.url, "--proxy-user", creds, url).stdout == b"origin-A", creds
        for creds, code in (("ann:nope", b"407"), ("cat:nope", b"407"), ("cat:c3", b"403")):
            r = curl("-x", p.url, "--proxy-user", creds, "-o", "/dev/null", "-w", "%{http_code}", url)
            assert r.stdout == code, creds
        s, status, _ = _socks5(p.port, "cat", "c3", origin.port)
        assert status != 0  # (SOCKS5 has one failure status)
        s.close()
        p.wait_log("refused: user 'cat' is disabled")

        held, status, reply = _socks5(p.port, "ann", "a1", source.port)  # ann's one connection
        assert (status, reply) == (0, 0)
        second, status, reply = _socks5(p.port, "ann", "a1", source.port)
        assert (status, reply) == (0, 2)  # (logged in, but not allowed by ruleset: her limit)
        second.close()
        r = curl("-x", p.url, "--proxy-user", "ann:a1", "-o", "/dev/null", "-w", "%{http_code}", url)
        assert r.stdout == b"429"
        assert curl("-x", p.url, "--proxy-user", "root:r0", url).stdout == b"origin-A"  # (the others go on)
        p.wait_log("refused: user ann has 1 connections open (max_connections)")
        assert recv_all(held) == blob
        held.close()
        deadline = time.monotonic() + 5
        while curl("-x", p.url, "--proxy-user", "ann:a1", url).stdout != b"origin-A":  # (once its end is seen)
            assert time.monotonic() < deadline
            time.sleep(0.1)

        # ben's two transfers share 256 KiB/s: together they take as long as one of twice the size
        took: list[float] = []

        def fetch() -> None:
            s, status, reply = _socks5(p.port, "ben", "b2", source.port)
            assert (status, reply) == (0, 0)
            started = time.monotonic()
            assert recv_all(s) == blob
            took.append(time.monotonic() - started)
            s.close()

        jobs = [threading.Thread(target=fetch) for _ in range(2)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(timeout=30)
        assert len(took) == 2 and max(took) >= (2 * len(blob) - 65536) / (256 << 10) * 0.95, took

        # a reload: ann may have 2 now
        path = p.log_path.parent / f"conf-{p.port}.toml"
        path.write_text(path.read_text().replace("max_connections = 1", "max_connections = 2"))
        status, body = control(cport, "POST", "/reload")
        assert status == 200, body
        first, status, reply = _socks5(p.port, "ann", "a1", source.port)
        second, status2, reply2 = _socks5(p.port, "ann", "a1", source.port)
        assert (reply, reply2) == (0, 0)
        first.close()
        second.close()
    finally:
        source.close()
