"""net.health.probe against servers that misbehave: it answers within its timeout, whatever they
send, and reads one bounded line."""

from __future__ import annotations

import time

from conftest import TcpServer, free_port
from wmproxy.net.dns import Resolver
from wmproxy.net.health import MAX_STATUS_LINE, get_request, probe


def test_probe_answers_in_time_whatever_the_server_does():
    def silent(conn):
        time.sleep(3)

    def flood(conn):
        conn.recv(1024)
        try:
            conn.sendall(b"H" * (MAX_STATUS_LINE * 4))  # a status line that never ends
        except OSError:
            pass

    def dribble(conn):
        conn.recv(1024)
        for b in b"HTTP/1.1 200 OK\r\n":
            conn.sendall(bytes([b]))
            time.sleep(0.2)

    def fine(conn):
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    servers = {name: TcpServer(serve) for name, serve in
               (("silent", silent), ("flood", flood), ("dribble", dribble), ("fine", fine))}
    request = get_request("/health", "a.test")
    try:
        for name in ("silent", "dribble"):
            started = time.monotonic()
            status, why = probe(Resolver(), "127.0.0.1", servers[name].port, 1.0, request)
            assert status is None and "within 1s" in why and time.monotonic() - started < 2, (name, why)
        status, why = probe(Resolver(), "127.0.0.1", servers["flood"].port, 5.0, request)
        assert status is None and why, why
        assert probe(Resolver(), "127.0.0.1", servers["fine"].port, 5.0, request) == (204, "")
        assert probe(Resolver(), "127.0.0.1", servers["fine"].port, 5.0) == (0, "")  # a bare connect
        status, why = probe(Resolver(), "127.0.0.1", free_port(), 5.0)
        assert status is None and "refused" in why.lower(), why
    finally:
        for server in servers.values():
            server.close()
