"""The attacks of issue 18, each tried from the attacker's side on real sockets: what one
hostile client can do must stay with its own connection."""

from __future__ import annotations

import socket
import time

from conftest import read_response, recv_all


def _web_to(origin_port: int, extra: str = "") -> str:
    return (f'[[http.upstream]]\nname = "app"\nserver = [{{ addr = "127.0.0.1:{origin_port}", max_fails = 1, '
            f'fail_timeout = "30s" }}]\n[[http.server]]\nbind = "127.0.0.1:{{port}}"\n{extra}'
            f'[[http.server.location]]\nrule = "/"\nproxy_url = "http://app"\n')


def _get(port: int, path: str = "/", host: str = "a.test") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return read_response(s)[0]


# -- 4: client faults are not upstream faults ----------------------------------------------------

def test_broken_client_body_does_not_take_the_upstream_out(start_proxy, origin):
    p = start_proxy(config=_web_to(origin.port), bind=False)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n\r\n")
        answer = recv_all(s)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    for _ in range(3):  # with max_fails = 1 a failure counted against the server would give 502 here
        assert _get(p.port).startswith(b"HTTP/1.1 200 ")
    assert "failed" not in p.log()


def test_abandoned_upload_does_not_take_the_upstream_out(start_proxy, origin):
    p = start_proxy(config=_web_to(origin.port), bind=False)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.3)
    time.sleep(0.3)
    for _ in range(3):
        assert _get(p.port).startswith(b"HTTP/1.1 200 ")


def test_forward_proxy_bad_chunk_is_400_not_502(start_proxy, origin):
    p = start_proxy()
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(f"POST http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-3\r\n\r\n".encode())
        answer = recv_all(s)
    assert answer.startswith(b"HTTP/1.1 400 "), answer


# -- 6: one root check for every file the file server opens --------------------------------------

def _files_conf(root, extra: str = "") -> str:
    return (f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\nrule = "/"\n'
            f'file_server = {{ root = "{root}"{extra} }}\n')


def _get_body(port: int, path: str, headers: str = "") -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n{headers}\r\n".encode())
        return read_response(s)


def test_no_file_outside_the_root_through_siblings_index_or_fallbacks(start_proxy, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("SECRET")
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("plain a")
    (root / "a.txt.gz").symlink_to(secret)
    (root / "b.txt").write_text("plain b")
    (root / "b.txt.br").symlink_to(secret)
    (root / "sub" / "index.html").symlink_to(secret)
    (root / "fallback.html").symlink_to(secret)
    (root / "missing.html").symlink_to(secret)
    p = start_proxy(config=_files_conf(root, ', try_paths = ["/fallback.html"], path404 = "missing.html"'), bind=False)
    head, body = _get_body(p.port, "/a.txt", "Accept-Encoding: gzip\r\n")
    assert body == b"plain a" and b"Content-Encoding" not in head
    head, body = _get_body(p.port, "/b.txt", "Accept-Encoding: br\r\n")
    assert body == b"plain b" and b"Content-Encoding" not in head
    for path in ("/sub/", "/nothing-here"):  # a symlinked index, a try_paths fallback
        head, body = _get_body(p.port, path)
        assert b"SECRET" not in body and head.split(b" ")[1] == b"403", (path, head)
    p2 = start_proxy(config=_files_conf(root, ', path404 = "missing.html"'), bind=False)
    head, body = _get_body(p2.port, "/nothing-here")
    assert b"SECRET" not in body and head.split(b" ")[1] == b"403", head
    # with follow_symlinks the operator allows them all
    p3 = start_proxy(config=_files_conf(root, ", follow_symlinks = true"), bind=False)
    head, body = _get_body(p3.port, "/a.txt", "Accept-Encoding: gzip\r\n")
    assert body == b"SECRET" and b"Content-Encoding: gzip" in head
