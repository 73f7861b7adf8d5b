"""Graceful stop: stop accepting at once, let live connections finish up to the grace period."""

from __future__ import annotations

import signal
import socket
import time

from conftest import recv_all


def open_tunnel(port: int, target_port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    return s


def test_sigterm_lets_live_connection_finish(start_proxy, echo_server):
    p = start_proxy(config='grace = "20s"\n[proxy]\nbind = "127.0.0.1:{port}"\n')
    live = open_tunnel(p.port, echo_server.port)
    live.sendall(b"before stop ")
    p.popen.send_signal(signal.SIGTERM)
    p.wait_log("SIGTERM: stopping")
    time.sleep(0.3)
    try:  # no new connections are accepted
        socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    assert refused
    live.sendall(b"and after")
    live.shutdown(socket.SHUT_WR)
    assert recv_all(live).startswith(b"got 21 ")
    live.close()
    assert p.popen.wait(timeout=10) == 0
    assert "stopped" in p.log()


def test_grace_period_expiry_closes_the_rest(start_proxy, echo_server):
    p = start_proxy(config='grace = "1s"\n[proxy]\nbind = "127.0.0.1:{port}"\n')
    live = open_tunnel(p.port, echo_server.port)
    t0 = time.monotonic()
    p.popen.send_signal(signal.SIGINT)
    assert p.popen.wait(timeout=10) == 0
    assert 0.8 < time.monotonic() - t0 < 5
    live.settimeout(5)
    assert live.recv(100) == b""  # closed by the proxy
    live.close()
    assert "still open after the 1.0s grace period" in p.log()


def test_idle_timeout_closes_a_silent_tunnel(start_proxy, echo_server):
    p = start_proxy(config='[proxy]\nbind = "127.0.0.1:{port}"\nidle_timeout = "1s"\n')
    live = open_tunnel(p.port, echo_server.port)
    live.settimeout(5)
    t0 = time.monotonic()
    assert live.recv(100) == b""
    assert 0.9 < time.monotonic() - t0 < 3
    live.close()
    p.wait_log("(idle)")
