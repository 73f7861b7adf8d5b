"""[stream] TCP forwarding: weighted round robin, failover, half-close through the relay."""

from __future__ import annotations

import hashlib
import socket

from conftest import free_port, read_response, recv_all


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
