"""Authentication and client allow/deny lists: checked before any upstream is dialled."""

from __future__ import annotations

import socket

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
