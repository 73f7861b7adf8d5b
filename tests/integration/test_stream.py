"""[stream] TCP forwarding: weighted round robin, failover, half-close through the relay."""

from __future__ import annotations

import hashlib
import socket

from conftest import free_port, read_response, recv_all, websocket_echo


def stream_config(upstream_servers: str, extra: str = "") -> str:
    return f"""
[[stream.upstream]]
name = "web"
server = [{upstream_servers}]

[[stream.server]]
bind = "127.0.0.1:{{port}}"
up_name = "web"
{extra}
"""


def whoami(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_response(s)[1]


def test_weighted_round_robin(start_proxy, origin, origin_b):
    p = start_proxy(config=stream_config(
        f'{{ addr = "127.0.0.1:{origin.port}", weight = 2 }}, {{ addr = "127.0.0.1:{origin_b.port}" }}'))
    seen = [whoami(p.port) for _ in range(9)]
    assert seen.count(b"origin-A") == 6 and seen.count(b"origin-B") == 3
    # smooth: every run of three connections has two for A and one for B, never A A A B B
    assert all(seen[i:i + 3].count(b"origin-A") == 2 for i in range(7)), seen


def test_dead_server_is_skipped(start_proxy, origin):
    dead = free_port()
    p = start_proxy(config=stream_config(
        f'{{ addr = "127.0.0.1:{dead}" }}, {{ addr = "127.0.0.1:{origin.port}" }}'))
    assert [whoami(p.port) for _ in range(4)] == [b"origin-A"] * 4


def test_all_servers_dead_closes_the_client(start_proxy):
    p = start_proxy(config=stream_config(f'{{ addr = "127.0.0.1:{free_port()}" }}'))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        assert recv_all(s) == b""
    p.wait_log("every server failed")


def test_half_close_through_stream(start_proxy, echo_server):
    p = start_proxy(config=stream_config(f'{{ addr = "127.0.0.1:{echo_server.port}" }}'))
    payload = bytes(range(256)) * 4000
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        answer = recv_all(s)
    assert answer.decode() == f"got {len(payload)} {hashlib.sha256(payload).hexdigest()}"


# -- websocket bridges (wsproto) ----------------------------------------------------------------

def bridge_config(mode: str, server: str, extra: str = "") -> str:
    return (f'[[stream.upstream]]\nname = "u"\nserver = [{{ addr = "{server}" }}]\n'
            f'[[stream.server]]\nbind = "127.0.0.1:{{port}}"\nbind_mode = "{mode}"\nup_name = "u"\n{extra}\n')


def test_ws2tcp_to_an_echo_server(start_proxy):
    import os

    from websockets.sync.client import connect

    from conftest import TcpServer

    def mirror(conn):
        while data := conn.recv(65536):
            conn.sendall(data)

    tcp = TcpServer(mirror)
    try:
        p = start_proxy(config=bridge_config("ws2tcp", f"127.0.0.1:{tcp.port}"), bind=False)
        sent = b""
        got = b""
        with connect(f"ws://127.0.0.1:{p.port}/", open_timeout=10, max_size=None) as ws:
            for i in range(20):
                data = os.urandom(1 + i * 3000)
                ws.send(data)
                sent += data
            ws.send("text is bytes too")
            sent += b"text is bytes too"
            while len(got) < len(sent):  # TCP keeps no message boundaries: the bytes come back, in order
                got += ws.recv(timeout=10)
        assert got == sent
        # a plain HTTP request is not a websocket: 400, nothing dialled
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s)[0].startswith(b"HTTP/1.1 400")
    finally:
        tcp.close()


def test_a_websocket_upgrade_dribbled_in_is_cut_at_the_handshake_deadline(start_proxy):
    """ws2tcp from the attacker's side: an upgrade request sent a byte at a time, each well
    within the idle timeout, must still be whole within handshake_timeout from the connection's
    start (a deadline, not an idle timer: else 64 KiB of head at one byte per 9 s holds a slot
    for a week); nothing is dialled for it, and a real client is served meanwhile."""
    import time

    from websockets.sync.client import connect

    from conftest import TcpServer

    dialled = []

    def mirror(conn):
        dialled.append(1)
        while data := conn.recv(65536):
            conn.sendall(data)

    tcp = TcpServer(mirror)
    try:
        p = start_proxy(config=bridge_config("ws2tcp", f"127.0.0.1:{tcp.port}", 'handshake_timeout = "1.5s"'),
                        bind=False)
        head = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nX-Slow: " + b"a" * 200)
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            started = time.monotonic()
            cut = None
            for byte in head:
                try:
                    s.sendall(bytes([byte]))
                    s.settimeout(0.2)
                    if s.recv(1024) == b"":
                        cut = time.monotonic() - started
                        break
                except socket.timeout:
                    continue
                except OSError:
                    cut = time.monotonic() - started
                    break
            assert cut is not None, "the dribbled handshake was never cut"
            assert 1.2 < cut < 4, cut
        p.wait_log("websocket handshake not complete within 1.5s")
        assert not dialled
        with connect(f"ws://127.0.0.1:{p.port}/", open_timeout=10) as ws:  # a real client: served
            ws.send(b"ping")
            assert ws.recv(timeout=10) == b"ping"
    finally:
        tcp.close()


def test_bytes_outside_ascii_in_a_websocket_handshake_are_a_bad_handshake_both_ways(start_proxy):
    """A header value with a byte past ASCII (wsproto decodes Connection, Upgrade and the
    extension lists as ASCII unchecked: an exception of its own kind): from a ws2tcp client,
    a 400 and one log line; from a tcp2ws server, its client's connection ends, logged as that
    server's failure. Neither is an internal error, and the listener serves on."""
    from websockets.sync.client import connect

    from conftest import TcpServer

    def mirror(conn):
        while data := conn.recv(65536):
            conn.sendall(data)

    def bad_answer(conn):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Up\xd5grade\r\n"
                     b"Sec-WebSocket-Accept: x\r\n\r\n")
        conn.recv(65536)

    tcp, bad = TcpServer(mirror), TcpServer(bad_answer)
    try:
        p = start_proxy(config=bridge_config("ws2tcp", f"127.0.0.1:{tcp.port}"), bind=False)
        for name in (b"Connection: Up\xd5grade", b"Upgrade: web\xffsocket", b"Sec-WebSocket-Extensions: \xe9"):
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + name +
                          b"\r\n\r\n")
                assert read_response(s)[0].startswith(b"HTTP/1.1 400"), name
        with connect(f"ws://127.0.0.1:{p.port}/", open_timeout=10) as ws:
            ws.send(b"ping")
            assert ws.recv(timeout=10) == b"ping"
        log = p.wait_log("not a websocket handshake")
        assert "Traceback" not in log and "internal error" not in log, log
        q = start_proxy(config=bridge_config("tcp2ws", f"127.0.0.1:{bad.port}"), bind=False)
        with socket.create_connection(("127.0.0.1", q.port), timeout=10) as s:
            s.sendall(b"hello")
            try:
                assert recv_all(s) == b""
            except ConnectionResetError:
                pass
        log = q.wait_log("not a websocket handshake")
        assert "Traceback" not in log and "internal error" not in log, log
    finally:
        tcp.close()
        bad.close()


def test_a_websocket_server_that_dribbles_its_answer_is_given_up_at_connect_timeout(start_proxy):
    """tcp2ws: the upstream's upgrade answer, a byte at a time, must be whole within
    connect_timeout (a deadline for TLS and the upgrade, not a timer per recv); the client's
    connection then ends, logged as the server's failure."""
    import time

    from conftest import TcpServer

    def dribble(conn):
        conn.recv(65536)
        for byte in b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: " \
                + b"a" * 100:
            conn.sendall(bytes([byte]))
            time.sleep(0.2)

    slow = TcpServer(dribble)
    try:
        p = start_proxy(config=bridge_config("tcp2ws", f"127.0.0.1:{slow.port}", 'connect_timeout = "1s"'),
                        bind=False)
        with socket.create_connection(("127.0.0.1", p.port), timeout=15) as s:
            started = time.monotonic()
            s.sendall(b"hello")
            try:
                assert recv_all(s) == b""
            except ConnectionResetError:
                pass  # (closed with the client's unread bytes in its buffer: a reset, as TCP does)
            took = time.monotonic() - started
        assert took < 5, took
        p.wait_log("not complete within 1s (connect_timeout)")
    finally:
        slow.close()


def test_tcp2ws_and_tcp2wss_to_a_websocket_echo_server(start_proxy, ca, tmp_path):
    import ssl

    plain = websocket_echo()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("ws.test").configure_cert(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    secure = websocket_echo(ctx)
    try:
        for mode, server, extra in (
                ("tcp2ws", plain, 'ws_path = "/chat"'),
                ("tcp2wss", secure, f'ws_host = "ws.test"\nws_ca = "{tmp_path}/ca.pem"')):
            p = start_proxy(config=bridge_config(mode, f"127.0.0.1:{server.socket.getsockname()[1]}", extra),
                            bind=False)
            payload = bytes(range(256)) * 400
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    got += s.recv(65536)
                assert got == payload, mode
                s.shutdown(socket.SHUT_WR)  # a close frame to the server, whose close ends the connection
                assert recv_all(s) == b""
    finally:
        plain.shutdown()
        secure.shutdown()


def test_health_checks_take_a_dead_server_out_and_bring_it_back(start_proxy):
    """health_check on an upstream: a TCP connect per interval; a server out is not dialled
    first any more (its failures stop growing), and comes back once it accepts again."""
    import json
    import time

    from conftest import TcpServer, control

    def says(text):
        return lambda conn: conn.sendall(text)

    a, b = TcpServer(says(b"A")), TcpServer(says(b"B"))
    a_port, cport = a.port, free_port()
    p = start_proxy(config=f'control = "127.0.0.1:{cport}"\n' + stream_config(
        f'{{ addr = "127.0.0.1:{a_port}" }}, {{ addr = "127.0.0.1:{b.port}" }}')
        .replace('server = [', 'health_check = { interval = "0.2s", timeout = "1s", fall = 2, rise = 1 }\nserver = ['))

    def through() -> bytes:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            return recv_all(s)

    def row(port: int) -> dict:
        rows = json.loads(control(cport, "GET", "/status")[1])["upstreams"]
        return next(r for r in rows if r["server"] == f"127.0.0.1:{port}")

    try:
        assert {through() for _ in range(4)} == {b"A", b"B"}
        a.close()
        p.wait_log(f"stream upstream web: server 127.0.0.1:{a_port} is out: 2 TCP checks failed")
        assert row(a_port)["up"] is False
        out = json.loads(control(cport, "GET", "/api/upstreams")[1])  # (its last check, as the dashboard shows)
        checked = next(r for r in out if r["server"] == f"127.0.0.1:{a_port}")
        assert checked["last_check_ok"] is False and time.time() - 5 < checked["last_check"] <= time.time()
        failures = row(a_port)["failures"]
        assert [through() for _ in range(6)] == [b"B"] * 6
        assert row(a_port)["failures"] == failures  # not even tried
        a = TcpServer(says(b"A"), port=a_port)
        p.wait_log(f"server 127.0.0.1:{a_port} is back")
        deadline = time.monotonic() + 5
        while b"A" not in {through() for _ in range(4)}:
            assert time.monotonic() < deadline
        assert row(a_port)["up"] is True and row(a_port)["last_check_ok"] is True
    finally:
        a.close()
        b.close()
