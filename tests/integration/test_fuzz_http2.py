"""A fuzz run of HTTP/2 (h2c with prior knowledge) on `[http]`: connections of random frames
(SETTINGS with odd values, HEADERS with pseudo-headers missing, empty, repeated or in the
wrong place and with the header values wmproxy reads, DATA on any stream, RST_STREAM,
WINDOW_UPDATE up to 2^31-1, PRIORITY on itself, PING, CONTINUATION out of place, GOAWAY,
PUSH_PROMISE from a client), to files (Range, If-Modified-Since), a proxied location and
`static_response`, and to an http mapping's public listener (map_http_bind). No log may hold an internal error or a line that is not one of ours, and
a good client (curl --http2-prior-knowledge) must be served afterwards. Ad-hoc runs of this
kind led to naming the error class in h2 protocol-error lines.

The budget is WMPROXY_FUZZ_SECONDS (default 8 s in ``make test``; ``make fuzz`` runs longer)."""

from __future__ import annotations

import os
import random
import socket
import time

import hpack
import hyperframe.frame as hf
import pytest

from conftest import assert_logs_clean, curl, free_port, wait_port
from test_center import http_mapping

BUDGET = float(os.environ.get("WMPROXY_FUZZ_SECONDS", "8"))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
VALUES = ("0", "-1", "bytes=0-,0-", "bytes=-0", "1 Jan 10000000000000000000 00:00:00 GMT", "trailers", "gzip",
          "websocket", "a.test", "a" * 5000, "99999999999", "\u00e9", "x\r\ny", "", " ", "chunked", "close")


def _headers(rng: random.Random) -> list[tuple[str, str]]:
    h = [(":method", rng.choice(("GET", "GET", "POST", "HEAD", "CONNECT", "", "G T"))),
         (":path", rng.choice(("/small.txt", "/", "/proxy/x", "/hello", "", "*", "/docs/", "x", "/%2e%2e/"))),
         (":scheme", rng.choice(("http", "https", ""))),
         (":authority", rng.choice(("a.test", "", "a.test:99999", "[::1]", "a b")))]
    rng.shuffle(h)
    if rng.random() < 0.2:
        h = h[:rng.randint(0, 4)]
    for _ in range(rng.randint(0, 3)):
        name = rng.choice(("range", "if-modified-since", "if-range", "content-length", "te", "cookie", "accept-encoding",
                           ":protocol", ":path", "host", "connection", "transfer-encoding", "x-a", "X-Upper", "upgrade"))
        h.insert(rng.randrange(len(h) + 1), (name, rng.choice(VALUES)))
    return h


def _connection(rng: random.Random) -> bytes:
    encoder = hpack.Encoder()
    frames: list = []
    if rng.random() < 0.8:
        settings = {rng.choice((1, 2, 3, 4, 5, 6, 8, 99)): rng.choice((0, 1, 65535, 2 ** 31 - 1, 2 ** 32 - 1, 16384))}
        frames.append(hf.SettingsFrame(0, settings=settings if rng.random() < 0.6 else {}))
    for _ in range(rng.randint(1, 8)):
        sid, roll = rng.choice((1, 1, 3, 5, 2, 0, 7, 2 ** 31 - 1)), rng.random()
        if roll < 0.35:
            f = hf.HeadersFrame(sid or 1)
            f.data = encoder.encode(_headers(rng))
            if rng.random() < 0.9:
                f.flags.add("END_HEADERS")
            if rng.random() < 0.6:
                f.flags.add("END_STREAM")
        elif roll < 0.5:
            f = hf.DataFrame(sid or 1)
            f.data = b"x" * rng.choice((0, 1, 100, 16384))
            if rng.random() < 0.5:
                f.flags.add("END_STREAM")
        elif roll < 0.6:
            f = hf.RstStreamFrame(sid or 1)
            f.error_code = rng.randint(0, 20)
        elif roll < 0.7:
            f = hf.WindowUpdateFrame(sid)
            f.window_increment = rng.choice((1, 2 ** 31 - 1, 65535))
        elif roll < 0.78:
            f = hf.PriorityFrame(sid or 1)
            f.depends_on, f.stream_weight = rng.choice((0, 1, sid)), 16
        elif roll < 0.85:
            f = hf.PingFrame(0)
            f.opaque_data = b"12345678"
        elif roll < 0.9:
            f = hf.ContinuationFrame(sid or 1)
            f.data = encoder.encode([("x-b", "1")])
        elif roll < 0.95:
            f = hf.GoAwayFrame(0)
            f.last_stream_id = 1
        else:
            f = hf.PushPromiseFrame(sid or 1)
            f.promised_stream_id, f.data = 2, b""
        frames.append(f)
    data = PREFACE + b"".join(f.serialize() for f in frames)
    if rng.random() < 0.1:  # a byte changed somewhere in the frames
        at = rng.randrange(len(PREFACE), len(data))
        data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
    return data


def _exchange(port: int, data: bytes, half_close: bool) -> bytes:
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            got = s.recv(65536)  # (within 3 s: the server's first frames, even on a busy machine)
            if not half_close:
                s.settimeout(0.3)  # (a connection the server keeps open waits for more: enough seen)
            while got and len(got) < 1 << 20 and (chunk := s.recv(65536)):
                got += chunk
    except OSError:
        pass
    return got


@pytest.mark.parametrize("listener", ["http", "http mapping"])
def test_random_http2_frames_get_no_internal_error(request, start_proxy, origin, tmp_path, listener):
    www = tmp_path / "www"
    (www / "docs").mkdir(parents=True)
    (www / "small.txt").write_text("small file\n")
    (www / "docs" / "a.txt").write_text("a" * 50_000)
    if listener == "http":
        p = start_proxy(config=f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\nclient_read_timeout = "3s"\n'
                               f'[[http.server.location]]\nrule = "= /hello"\nstatic_response = "hello"\n'
                               f'[[http.server.location]]\nrule = "/proxy/"\nproxy_url = "http://127.0.0.1:{origin.port}"\n'
                               f'[[http.server.location]]\nrule = "/"\nfile_server = {{ root = "{www}", browse = true }}\n',
                        bind=False)
        port, procs, good = p.port, [p], ("/small.txt", b"small file\n")
    else:  # map_http_bind of a center server (h2c), its client's mapping to the origin for Host a.test
        port = free_port()
        pair = request.getfixturevalue("pair")(start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{port}"\n')
        pair.client = pair.start_client(tail=http_mapping("app", origin.port, "a.test"))
        pair.client.wait_log("mapping 'app' published")
        wait_port(port)
        procs, good = [pair.server, pair.client], ("/hello", b"hello from origin-A")
    seed = int(os.environ.get("WMPROXY_FUZZ_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    deadline = time.monotonic() + BUDGET
    sent, unanswered = 0, []
    while time.monotonic() < deadline:
        data, half_close = _connection(rng), rng.random() < 0.7  # (most end with the client's EOF: quicker)
        got = _exchange(port, data, half_close)
        sent += 1
        if len(got) < 9:  # (not even the server's SETTINGS, or a GOAWAY)
            unanswered.append((data, half_close, got))
    assert sent > 100 and not unanswered, (seed, sent, len(unanswered), unanswered[:2])
    r = curl("--http2-prior-knowledge", "-H", "Host: a.test", "-w", "\n%{http_version} %{http_code}",
             f"http://127.0.0.1:{port}{good[0]}")
    assert r.stdout == good[1] + b"\n2 200", (seed, r.stdout, r.stderr)
    assert_logs_clean(procs, seed)
