"""net.writer.linger, the lingering close, from the peer's side: whatever the peer does, it
ends at the peer's EOF, after ``idle`` seconds of silence, or after ``total`` seconds of a
peer that never stops sending (a deadline, not an idle timer); our FIN comes first."""

from __future__ import annotations

import socket
import threading
import time

from wmproxy.net.writer import linger


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        peer = socket.create_connection(server.getsockname(), timeout=10)
        ours, _ = server.accept()
    return ours, peer


def _timed(ours: socket.socket, total: float, idle: float) -> float:
    started = time.monotonic()
    linger(ours, total=total, idle=idle)
    return time.monotonic() - started


def test_it_ends_at_the_peers_eof_and_sends_ours_first():
    ours, peer = _pair()
    with ours, peer:
        peer.sendall(b"x" * 100_000)
        threading.Timer(0.2, peer.shutdown, (socket.SHUT_WR,)).start()
        took = _timed(ours, 5, 5)
        assert took < 2
        assert peer.recv(10) == b""  # (our FIN)


def test_a_silent_peer_is_given_up_after_idle():
    ours, peer = _pair()
    with ours, peer:
        assert 0.25 < _timed(ours, 10, 0.3) < 2


def test_a_peer_that_never_stops_sending_is_given_up_at_the_deadline():
    ours, peer = _pair()
    stop = threading.Event()

    def flood() -> None:  # a byte every 50 ms: never idle for long
        try:
            while not stop.is_set():
                peer.sendall(b"x" * 1000)
                time.sleep(0.05)
        except OSError:
            pass

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        assert 0.7 < _timed(ours, 0.8, 0.5) < 2.5
    finally:
        stop.set()
        thread.join()
        ours.close()
        peer.close()
