"""The attacks of issue 18, each tried from the attacker's side on real sockets: what one
hostile client can do must stay with its own connection."""

from __future__ import annotations

import resource
import socket
import time

import psutil

from conftest import control, drip, free_port, read_response, recv_all, wait_port


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


# -- 3: no SSRF through the proxy ------------------------------------------------------------------

def _socks5(port: int, host: str, target_port: int) -> int:
    """The SOCKS5 reply code to a CONNECT (a domain or an IPv4 literal)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        try:
            addr = b"\x01" + socket.inet_aton(host)
        except OSError:
            addr = b"\x03" + bytes([len(host)]) + host.encode()
        s.sendall(b"\x05\x01\x00" + addr + target_port.to_bytes(2, "big"))
        return s.recv(10)[1]


def _through(port: int, request: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return recv_all(s)


def test_control_api_and_own_ports_are_not_reachable_through_the_proxy(start_proxy, origin):
    cport = free_port()
    p = start_proxy(config=f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{{port}}"\n')
    wait_port(cport)
    answer = _through(p.port, f"GET http://127.0.0.1:{cport}/status HTTP/1.1\r\nHost: 127.0.0.1:{cport}\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ") and b"own listening" in answer, answer
    answer = _through(p.port, f"POST http://localhost:{cport}/stop HTTP/1.1\r\nHost: localhost\r\n"
                              f"Content-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    answer = _through(p.port, f"CONNECT 127.0.0.1:{p.port} HTTP/1.1\r\nHost: 127.0.0.1:{p.port}\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 "), answer  # no CONNECT nested into itself
    assert _socks5(p.port, "127.0.0.1", cport) == 0x02
    assert _socks5(p.port, "0.0.0.0", p.port) == 0x02
    # a loopback proxy may still reach loopback services that are not its own
    assert _through(p.port, f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    ).startswith(b"HTTP/1.1 200 ")
    assert p.popen.poll() is None and control(cport, "GET", "/status")[0] == 200


def test_exposed_proxy_refuses_local_targets_after_dns(start_proxy, origin):
    p = start_proxy(config='[proxy]\nbind = "0.0.0.0:{port}"\n')
    for host in ("127.0.0.1", "localhost", "0.0.0.0", "127.1.2.3"):
        answer = _through(p.port, f"GET http://{host}:{origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 403 "), (host, answer)
        assert _socks5(p.port, host, origin.port) == 0x02, host
    answer = _through(p.port, f"CONNECT [::1]:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    assert origin.hits == 0
    # the operator allows one service back
    p2 = start_proxy(config=f'[proxy]\nbind = "0.0.0.0:{{port}}"\nallow_targets = ["127.0.0.1:{origin.port}"]\n'
                            f'deny_targets = ["*:25"]\n')
    assert _through(p2.port, f"GET http://localhost:{origin.port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    ).startswith(b"HTTP/1.1 200 ")
    assert _socks5(p2.port, "127.0.0.1", 25) == 0x02


def test_control_api_refuses_connections_relayed_by_the_process(start_proxy):
    cport = free_port()
    conf = (f'control = "127.0.0.1:{cport}"\n[stream]\n[[stream.upstream]]\nname = "c"\n'
            f'server = [{{ addr = "127.0.0.1:{cport}" }}]\n[[stream.server]]\nbind = "127.0.0.1:{{port}}"\nup_name = "c"\n')
    p = start_proxy(config=conf, bind=False)
    wait_port(cport)
    answer = _through(p.port, "POST /stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    time.sleep(0.3)
    assert p.popen.poll() is None and control(cport, "GET", "/status")[0] == 200


def test_via_loop_is_refused(start_proxy, origin):
    p = start_proxy()
    answer = _through(p.port, f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\nVia: 1.1 wmproxy\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ") and b"loop" in answer, answer
    assert origin.hits == 0


# -- 1: deadlines, not idle timers -----------------------------------------------------------------

def _trickle(port: int, data: bytes, every: float = 0.25, first: bytes = b"", limit: float = 8.0) -> tuple[bytes, float]:
    """Send ``first`` at once, then ``data`` a byte every ``every`` seconds until the server
    answers or closes; -> (what it sent back, seconds from the first trickled byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        got = b""
        if first:
            s.sendall(first)
            got = read_response(s)[0]
        started = time.monotonic()
        s.setblocking(False)
        for i in range(len(data)):
            try:
                s.send(data[i:i + 1])
            except OSError:
                break
            time.sleep(every)
            try:
                chunk = s.recv(65536)
                got += chunk
                break  # answered or closed
            except BlockingIOError:
                pass
            except OSError:
                break
            if time.monotonic() - started > limit:
                break
        s.setblocking(True)
        try:
            got += recv_all(s)
        except OSError:
            pass
        return got, time.monotonic() - started


SLOW = '[proxy]\nbind = "127.0.0.1:{port}"\nhandshake_timeout = "1s"\nidle_timeout = "30s"\n'


def test_slow_http_head_is_cut_at_its_deadline(start_proxy, origin):
    p = start_proxy(config=SLOW)
    request = f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\n" + "X-Pad: y\r\n" * 10 + "\r\n"
    got, took = _trickle(p.port, request.encode())
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert took < 3.0, took  # a byte every 0.25 s never leaves a read idle for 1 s: only a deadline cuts it
    assert "handshake_timeout" in p.wait_log("handshake_timeout")
    # a later request on a kept connection: its head gets the same time from its first byte
    first = f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    got, took = _trickle(p.port, request.encode(), first=first)
    assert b"HTTP/1.1 408 " in got and took < 3.0, (got, took)


def test_slow_socks_handshake_is_cut_at_its_deadline(start_proxy, origin):
    p = start_proxy(config=SLOW)
    request = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x09" + b"localhost" + origin.port.to_bytes(2, "big")
    got, took = _trickle(p.port, request)
    assert took < 3.0 and not got.endswith(b"\x05\x00\x00\x01"), (got, took)
    assert "cut: handshake not complete" in p.wait_log("cut: handshake")
    # a prompt client is unaffected
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(request)
        assert s.recv(2) == b"\x05\x00" and s.recv(10)[1] == 0


def test_reverse_proxy_slow_head_and_slow_body_are_cut(start_proxy, origin):
    timeouts = 'client_read_timeout = "30s"\nclient_header_timeout = "1s"\nclient_body_timeout = "1s"\n'
    p = start_proxy(config=_web_to(origin.port, timeouts), bind=False)
    got, took = _trickle(p.port, b"GET / HTTP/1.1\r\nHost: a.test\r\n" + b"X-Pad: y\r\n" * 10 + b"\r\n")
    assert got.startswith(b"HTTP/1.1 408 ") and took < 3.0, (got, took)
    assert "client_header_timeout" in p.wait_log("client_header_timeout")
    # a body of 100 bytes has 1 s + 100 B / 1 KiB/s to arrive; one byte each 0.25 s is too slow
    answer, took = drip(p.port, [b"y"] * 60, b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ") and took < 3.5, (answer, took)
    assert _get(p.port).startswith(b"HTTP/1.1 200 ")  # the upstream was not blamed


def test_one_address_cannot_take_every_slot(start_proxy, origin):
    p = start_proxy(config='[proxy]\nbind = "127.0.0.1:{port}"\nmax_connections_per_ip = 3\n')
    held = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(3)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as fourth:
            assert fourth.recv(10) == b""  # closed at once
        assert "max_connections_per_ip (3) reached" in p.wait_log("max_connections_per_ip")
        held.pop().close()
        time.sleep(0.2)
        assert _through(p.port, f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                        ).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()


# -- 7: failed-auth throttling -----------------------------------------------------------------------

def _socks5_login(port: int, user: bytes, password: bytes, source: str = "127.0.0.1") -> int:
    """The RFC 1929 status of a login (0: accepted)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(b"\x05\x01\x02")
        assert s.recv(2) == b"\x05\x02"
        s.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        return s.recv(2)[1]


def test_failed_logins_are_throttled_per_address(start_proxy, origin):
    p = start_proxy(config='[proxy]\nbind = "127.0.0.1:{port}"\nusername = "u"\npassword = "right"\n'
                           'auth_fail_limit = 5\nauth_fail_window = "2s"\n')
    for _ in range(5):
        assert _socks5_login(p.port, b"u", b"wrong") != 0
    assert _socks5_login(p.port, b"u", b"right") != 0  # refused unheard, even with the right password
    assert "5 failed logins from 127.0.0.1" in p.wait_log("failed logins")
    answer = _through(p.port, f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\n"
                              f"Proxy-Authorization: Basic dTpyaWdodA==\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 429 "), answer
    assert _socks5_login(p.port, b"u", b"right", source="127.0.0.2") == 0  # another address is not affected
    time.sleep(2.1)
    assert _socks5_login(p.port, b"u", b"right") == 0  # and the window passes


# -- 8: running out of descriptors -----------------------------------------------------------------

def test_out_of_descriptors_is_one_line_a_second_and_serving_goes_on(start_proxy, origin):
    p = start_proxy(config='[proxy]\nbind = "127.0.0.1:{port}"\nhandshake_timeout = "30s"\n')
    proc = psutil.Process(p.popen.pid)
    limit = proc.num_fds() + 4
    resource.prlimit(p.popen.pid, resource.RLIMIT_NOFILE, (limit, limit))
    held = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(12)]
    try:
        time.sleep(2.5)
        log = p.log()
        assert "cannot accept: Too many open files" in log and "Traceback" not in log, log[-2000:]
        assert log.count("cannot accept") <= 4  # about one line a second, not one per attempt
        for s in held:
            s.close()
        held = []
        time.sleep(0.5)
        answer = _through(p.port, f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert p.popen.poll() is None
    finally:
        for s in held:
            s.close()


def test_tls_server_closes_after_connection_close(start_proxy, ca, tmp_path):
    """A TLS [http] server answering 'Connection: close' closes the connection (it used to
    keep the socket, and its slot, until the garbage collector found it)."""
    from conftest import write_cert
    import ssl

    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_cert(ca, tmp_path, "site", "site.test")
    p = start_proxy(config=f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\ncert = "{tmp_path}/site.pem"\n'
                           f'key = "{tmp_path}/site.key"\n[[http.server.location]]\nstatic_response = "hi"\n',
                    bind=False)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="site.test") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
            got = b""
            started = time.monotonic()
            try:
                while chunk := s.recv(65536):
                    got += chunk
            except ssl.SSLError:
                pass
            assert time.monotonic() - started < 3, "the server kept the connection open"
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\nhi"), got


def test_a_slow_answer_after_the_body_is_no_client_timeout(start_proxy):
    """The body's deadline and silence limit end once the body is sent: a server that thinks
    longer than client_body_timeout before answering is waited for (proxy_read_timeout)."""
    from conftest import TcpServer, next_head

    def slow(conn):
        head, rest = next_head(conn, b"")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += conn.recv(65536)
        time.sleep(2.0)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")

    server = TcpServer(slow)
    try:
        p = start_proxy(config=_web_to(server.port, 'client_body_timeout = "1s"\n'), bind=False)
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"slow", head
    finally:
        server.close()


def test_a_chunked_body_slower_than_the_minimum_rate_is_cut(start_proxy, origin):
    p = start_proxy(config=_web_to(origin.port, 'client_body_timeout = "1s"\nclient_body_min_rate = "1k"\n'),
                    bind=False)
    # a chunk of one byte every 0.25 s: never silent for 1 s, far under 1 KiB/s
    answer, took = drip(p.port, [b"1\r\nx\r\n"] * 40,
                        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ") and took < 4.0, (answer, took)
    assert _get(p.port).startswith(b"HTTP/1.1 200 ")
    # a prompt chunked upload is untouched
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n")
        assert read_response(s)[0].startswith(b"HTTP/1.1 200 ")
