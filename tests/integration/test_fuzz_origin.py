"""A fuzz run of what an origin sends back: answers taken from well-formed ones and mutated
(status lines with odd codes, versions and reasons; interim 1xx and 101; the response headers
wmproxy reads (Content-Length, Transfer-Encoding, Connection and the headers it names,
Keep-Alive, Upgrade, Location, Trailer) with values an attacker picks; header names and
values with control bytes, spaces, colons and bytes past ASCII; chunked bodies with odd sizes,
extensions and trailers; bytes past the answer; connections cut anywhere), through the
forward proxy (whose origins are any web server on the internet), ``[http]``'s proxy_url and an
http mapping, to HTTP/1.1 clients and to HTTP/2 clients. What the client gets must be an
answer a strict client (h11, h2) accepts, or a connection closed after a head it accepted:
never a head that h11 or h2 refuses (a header an origin made up, passed on). No log may hold
an internal error or a line that is not one of ours, and a good request must be served after.

The budget is WMPROXY_FUZZ_SECONDS (default 8 s in ``make test``; ``make fuzz`` runs longer)."""

from __future__ import annotations

import os
import queue
import random
import re
import socket
import time

import h11
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from conftest import TcpServer, free_port, next_head, wait_port
from test_center import http_mapping

BUDGET = float(os.environ.get("WMPROXY_FUZZ_SECONDS", "8"))
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) wmproxy[.a-z]*: ")
GOOD = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Type: text/plain\r\n\r\ngood"

STATUS = ("HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.0 200 OK", "HTTP/1.1 204 No Content", "HTTP/1.1 304 Not Modified",
          "HTTP/1.1 302 Found", "HTTP/1.1 404", "HTTP/1.1 500 ", "HTTP/1.1 999 X", "HTTP/1.1 099 X", "HTTP/1.1 -1 X",
          "HTTP/1.1 2000 X", "HTTP/1.1 20 X", "HTTP/1.1 \u00b200 X", "HTTP/2 200", "HTTP/2.0 200 OK", "HTTP/1.2 200 OK",
          "HTTP/0.9 200 OK", "ICY 200 OK", "HTTP/1.1 200 \x1b[31mred", "HTTP/1.1 200 a\x00b", "HTTP/1.1 200 caf\u00e9",
          "HTTP/1.1  200 OK", "http/1.1 200 OK", "HTTP/1.1 101 Switching Protocols", "HTTP/1.1 100 Continue",
          "HTTP/1.1 103 Early Hints", "HTTP/1.1 200 OK\rX", "")
INTERIM = ("HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
           "HTTP/1.1 102 Processing\r\n\r\n", "HTTP/1.1 199 X\r\nX-A: 1\r\n\r\n")
NAMES = ("Content-Length", "Content-Length", "Transfer-Encoding", "Transfer-Encoding", "Connection", "Keep-Alive",
         "Upgrade", "Location", "Trailer", "Set-Cookie", "Content-Type", "Content-Encoding", "Date", "Server",
         "Content-Range", "ETag", "Last-Modified", "Vary", "Proxy-Authenticate", "Proxy-Connection", "TE", "Alt-Svc",
         "X-Accel-Redirect", "Via", "Host", ":status", ":path", "X-Upper", "x-lower", "Bad Name", "Bad:Name", "", " X",
         "X ", "N\u00e9", "X\x00", "X\x7f", "Sec-WebSocket-Accept", "HTTP2-Settings", "Grpc-Status", "Content-Length ")
VALUES = ("0", "1", "4", "-1", "+4", "4 ", " 4", "4,4", "4, 5", "0x4", "04", "99999999999999999999", "9" * 400,
          "\u00b2", "chunked", "gzip, chunked", "chunked, gzip", "chunked, chunked", "identity", "Chunked", "close",
          "keep-alive", "upgrade", "Content-Length", "Transfer-Encoding", "x-upper", "timeout=0, max=-1", "websocket",
          "h2c", "/relative", "http://a.test/x", "//evil.test/", "\x1b[2J", "a\x00b", "a\rb", "caf\u00e9", "", " ",
          "a" * 9000, "trailers", "text/html", "bytes 0-3/4", '"e"', "Mon, 07 Dec 2026 07:10:47 GMT", "*")


def _answer(rng: random.Random) -> bytes:
    """One answer: a status line, headers, a body (framed or not), sometimes interim answers
    before it, bytes after it and a mutation anywhere."""
    parts = [rng.choice(INTERIM) for _ in range(rng.choice((0, 0, 0, 1, 2)))]
    parts.append(rng.choice(STATUS) + "\r\n")
    body = rng.choice(("good", "", "x" * rng.randint(1, 70000)))
    chunked = rng.random() < 0.3
    if rng.random() < 0.7:
        parts.append("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {len(body)}\r\n")
    for _ in range(rng.randint(0, 5)):
        name = rng.choice(NAMES)
        value = "".join(rng.choice(VALUES) for _ in range(rng.choice((1, 1, 2))))
        parts.append(rng.choice((f"{name}: {value}\r\n", f"{name}:{value}\r\n", f" {name}: {value}\r\n",
                                 f"{name}: {value}\n", f"{name}\r\n")))
    parts.append(rng.choice(("\r\n", "\r\n", "\r\n", "\n", "\r\n\r\n")))
    if chunked:
        sizes = []
        left = body
        while left:
            n = rng.randint(1, len(left))
            sizes.append(left[:n])
            left = left[n:]
        for piece in sizes:
            size = rng.choice((f"{len(piece):x}", f"{len(piece):X}", f"{len(piece):x};ext=1", f"0{len(piece):x}"))
            parts.append(f"{size}\r\n{piece}\r\n")
        parts.append(rng.choice(("0\r\n\r\n", "0\r\n\r\n", "0\r\nX-T: 1\r\n\r\n", "0\r\nBad Trailer\r\n\r\n",
                                 "fffffffffffffffffff\r\n", "-1\r\n", "0x0\r\n\r\n", "0\r\n")))
    else:
        parts.append(body)
    data = "".join(parts).encode("utf-8", "surrogateescape")
    b = bytearray(data)
    for _ in range(rng.choice((0, 0, 1, 2))):  # (a mutation anywhere: a byte changed, the answer cut, bytes added)
        roll = rng.random()
        if roll < 0.4 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif roll < 0.7 and b:
            del b[rng.randrange(len(b)):]
        else:
            b[rng.randrange(len(b) + 1):0] = rng.randbytes(rng.randint(1, 12))
    if rng.random() < 0.2:
        b += rng.choice((GOOD, b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\nContent-Length: 0\r\n\r\n", rng.randbytes(30)))
    return bytes(b)


class EvilOrigin:
    """Answers each request head with the next answer from ``answers`` (GOOD when none is
    queued); then closes, or waits up to 0.5 s for the next request of the connection."""

    def __init__(self) -> None:
        self.answers: queue.Queue[bytes] = queue.Queue()
        self.server = TcpServer(self._serve)
        self.port = self.server.port

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        buf = b""
        while True:
            try:
                head, buf = next_head(conn, buf)
            except socket.timeout:
                return
            if head is None:
                return
            try:
                answer = self.answers.get_nowait()
            except queue.Empty:
                answer = GOOD
            conn.sendall(answer)
            if answer is not GOOD and random.random() < 0.6:
                return

    def close(self) -> None:
        self.server.close()


def _h1(port: int, target: str, host: str) -> str:
    """One GET over HTTP/1.1, read until the close; a word for what came: 'answer' (a whole
    answer h11 accepts), 'cut' (a head h11 accepts, then the close), 'none' (nothing);
    AssertionError for anything h11 refuses."""
    client = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    data = client.send(h11.Request(method="GET", target=f"{target}/fuzz", headers=[("Host", host),
                                                                                      ("Connection", "close")]))
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        try:
            while len(got) < 1 << 21 and (chunk := s.recv(65536)):
                got += chunk
        except ConnectionResetError:
            pass
    if not got:
        return "none"
    client.receive_data(got)
    client.receive_data(b"")
    seen = "none"
    try:
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return seen
            if isinstance(event, h11.Response):
                seen = "cut"
            elif isinstance(event, h11.EndOfMessage):
                return "answer"
            elif isinstance(event, h11.InformationalResponse):
                assert event.status_code != 101, got[:300]  # (a 101 nobody asked for: never passed on)
    except h11.RemoteProtocolError as e:
        if seen == "cut" and "without sending complete message body" in str(e):
            return "cut"  # (the body was cut short: the upstream's cut, passed on by a close)
        raise AssertionError(f"h11 refused what came: {e}: {got[:500]!r}") from e


def _h2(port: int, path: str, host: str) -> str:
    """The same over HTTP/2 (h2c with prior knowledge): 'answer' (headers, then END_STREAM),
    'reset' (the stream reset or the connection ended after headers), 'none'; AssertionError
    for a frame h2 refuses."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", host)],
                      end_stream=True)
    seen = "none"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(conn.data_to_send())
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return "reset" if seen == "headers" else seen
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                raise AssertionError(f"h2 refused what came: {e!r}") from e
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    seen = "headers"
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    return "answer"
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return "reset" if seen == "headers" or isinstance(event, h2.events.StreamReset) else "none"
            s.sendall(conn.data_to_send())


@pytest.mark.parametrize("listener,client", [("forward proxy", "h1"), ("http", "h1"), ("http", "h2"),
                                             ("http mapping", "h1"), ("http mapping", "h2")])
def test_random_answers_from_an_origin_reach_clients_well_formed_or_not_at_all(request, start_proxy, listener,
                                                                              client):
    evil = EvilOrigin()
    request.addfinalizer(evil.close)
    if listener == "forward proxy":
        p = start_proxy()
        port, target, procs = p.port, f"http://127.0.0.1:{evil.port}", [p]
    elif listener == "http":
        p = start_proxy(config=f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n'
                               f'[[http.server.location]]\nrule = "/"\nproxy_url = "http://127.0.0.1:{evil.port}"\n',
                        bind=False)
        port, target, procs = p.port, "", [p]
    else:  # map_http_bind of a center server, its client's mapping to the origin for Host a.test
        port = free_port()
        pair = request.getfixturevalue("pair")(start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{port}"\n')
        pair.client = pair.start_client(tail=http_mapping("app", evil.port, "a.test"))
        pair.client.wait_log("mapping 'app' published")
        wait_port(port)
        target, procs = "", [pair.server, pair.client]
    seed = int(os.environ.get("WMPROXY_FUZZ_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    deadline = time.monotonic() + BUDGET
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        answer = _answer(rng)
        while not evil.answers.empty():  # (one queued answer per request: none left from the last)
            evil.answers.get_nowait()
        evil.answers.put(answer)
        try:
            word = _h1(port, target, "a.test") if client == "h1" else _h2(port, "/fuzz", "a.test")
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: answer {answer[:600]!r}: {e}") from e
        seen[word] = seen.get(word, 0) + 1
    assert sum(seen.values()) > 50 and seen.get("answer", 0) > 10, (seed, seen)
    while not evil.answers.empty():
        evil.answers.get_nowait()
    assert (_h1(port, target, "a.test") if client == "h1" else _h2(port, "/fuzz", "a.test")) == "answer", seed
    for proc in procs:
        assert proc.popen.poll() is None, seed
        log = proc.log()
        assert "internal error" not in log and "Traceback" not in log, (seed, log[-3000:])
        bad = [line for line in log.splitlines() if not (line.isprintable() and LINE.match(line))]
        assert not bad, (seed, bad[:5])
