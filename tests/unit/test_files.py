"""web/files.py apart from a server: its look-up cache, and the one-piece answer of a small
file against the answer built header by header."""

from __future__ import annotations

import socket

from wmproxy.config.http import FileServerConfig
from wmproxy.prot import http1
from wmproxy.web import files


def test_an_entry_is_answered_only_for_the_table_it_was_made_for(tmp_path):
    """The cache is keyed by the id of a location's file_server table; an entry is only ever
    answered for that very object (an id is reused once its object is gone: a reload's new
    table at the old one's address must not get the old table's answers)."""
    old, new = FileServerConfig(root=str(tmp_path)), FileServerConfig(root=str(tmp_path), hide=(".*",))
    key = (id(old), "/a.txt")
    calls = []

    def compute(answer):
        return lambda: calls.append(answer) or answer

    assert files._cached(key, old, compute(("file", "/a.txt", 200))) == ("file", "/a.txt", 200)
    assert files._cached(key, old, compute("not asked")) == ("file", "/a.txt", 200)  # (remembered)
    # the same key for another object (as when the old one is freed and its id reused): asked again
    refused = files.Reply(404)
    assert files._cached(key, new, compute(refused)) is refused
    assert calls == [("file", "/a.txt", 200), refused]
    assert files._cached(key, new, compute("not asked")) is refused


def _answer(fs: FileServerConfig, request: bytes, finish=None) -> bytes:
    a, b = socket.socketpair()
    with a, b:
        head = http1.parse_request_head(request)
        reply = files.serve(fs, a, head, head.target, head.wants_keep_alive(), finish, 5.0)
        a.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := b.recv(65536):
            out += chunk
    assert reply.sent and reply.status in (200, 206, 304), out
    return out


def test_a_small_files_answer_in_one_piece_is_the_answer_built_header_by_header(tmp_path):
    """Without response header rules the usual 200 of a small file is its cached head plus the
    Date; with rules (here one that changes nothing) every header goes through them: the same
    bytes, but for the Date's second."""
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "b.css").write_text("b{}" * 200)
    fs = FileServerConfig(root=str(tmp_path))
    for request in (b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /b.css HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /b.css HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
                    b"GET /a.txt HTTP/1.0\r\n\r\n"):
        for _ in range(3):  # (a Date's second may turn between the two)
            quick, built = _answer(fs, request), _answer(fs, request, lambda headers: headers)
            if quick == built:
                break
        assert quick == built, (quick, built)
        assert quick.startswith(b"HTTP/1.1 200 OK\r\nDate: "), quick
    assert _answer(fs, b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n").endswith(b"\r\n\r\nhello\n")
    # not the one-piece path: a range, a validator that matches
    assert _answer(fs, b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n").endswith(b"\r\n\r\nhe")
    etag = http1.parse_response_head(_answer(fs, b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n").split(
        b"\r\n\r\n")[0] + b"\r\n\r\n").get(b"etag")
    assert _answer(fs, b"GET /a.txt HTTP/1.1\r\nHost: x\r\nIf-None-Match: " + etag + b"\r\n\r\n").startswith(
        b"HTTP/1.1 304")


def test_parse_ranges_takes_plain_digits_and_never_more_than_the_file():
    """A Range header is used only when it is a byte range set of plain digits whose ranges
    add up to no more than the file (nginx declines the rest: CVE-2011-3192); else it is
    ignored (None: the whole file, 200); [] when no range is satisfiable (416)."""
    assert files.parse_ranges("bytes=0-9", 100) == [(0, 9)]
    assert files.parse_ranges("bytes= 0-9 , -5,,20-", 100) == [(0, 9), (95, 99), (20, 99)]
    assert files.parse_ranges("bytes=0-49,50-99", 100) == [(0, 49), (50, 99)]  # the file exactly, in two
    for overlapping in ("bytes=0-,0-", "bytes=0-50,50-99", "bytes=-60,0-59", "bytes=" + ",".join(["0-"] * 32)):
        assert files.parse_ranges(overlapping, 100) is None, overlapping
    for invalid in ("bytes=+0-9", "bytes=0-1_0", "bytes=0 - 9", "bytes=-", "bytes=5-3", "bytes=0-\u0669",
                    "bytes=0-\u00b2", "bytes=0x10-", "bytes=" + "9" * 5000 + "-", "items=0-9", "bytes="):
        assert files.parse_ranges(invalid, 100) is None, invalid
    assert files.parse_ranges("bytes=100-", 100) == [] and files.parse_ranges("bytes=-0", 100) == []
    assert files.parse_ranges("bytes=" + "9" * 30 + "-", 100) == []
    assert files.parse_ranges("bytes=" + ",".join(f"{i}-{i}" for i in range(33)), 100) is None  # over MAX_RANGES
