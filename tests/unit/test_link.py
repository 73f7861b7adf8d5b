"""The center link in-process over a real socket pair: stream ids, flow control, half-close,
link loss. (The end-to-end behaviour is in tests/integration/test_center.py.)"""

from __future__ import annotations

import socket

import gevent
import pytest
from gevent import socket as gsocket

from wmproxy.center.link import CenterLink
from wmproxy.net.reader import Reader
from wmproxy.prot import frame as fr

WINDOW = 65536


def make_pair(on_create):
    a, b = gsocket.socketpair()
    client = CenterLink(a, Reader(a), is_client=True, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=lambda *args: None, name="client")
    server = CenterLink(b, Reader(b), is_client=False, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=on_create, name="server")
    runs = [gevent.spawn(client.run), gevent.spawn(server.run)]
    return client, server, runs


def test_ids_are_odd_wrap_and_skip_ids_in_use():
    a, b = gsocket.socketpair()
    link = CenterLink(a, Reader(a), is_client=True, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                      on_create=lambda *args: None, name="x")
    link._next_id = fr.MAX_SOCK_MAP - 2  # near the top of the 24-bit space
    link.streams[1] = object()  # 1 is still in use after the wrap
    first = link._allocate()
    second = link._allocate()
    third = link._allocate()
    assert (first, second, third) == (fr.MAX_SOCK_MAP - 2, fr.MAX_SOCK_MAP, 3)
    a.close()
    b.close()


def test_stalled_consumer_holds_at_most_one_window():
    accepted = []

    def on_create(vc, mode, target):
        accepted.append(vc)
        gevent.sleep(30)  # never reads

    client, server, runs = make_pair(on_create)
    stream = client.open_stream(fr.CreateMode.CONNECT, "x:1")
    sender = gevent.spawn(stream.sendall, b"x" * (10 * WINDOW))
    gevent.sleep(0.5)
    assert not sender.dead  # blocked: no credit left
    assert accepted[0].buffered == WINDOW and stream.credit == 0
    # a second stream is not held up by the first
    other = client.open_stream(fr.CreateMode.CONNECT, "y:1")
    other.sendall(b"y" * 1000)
    gevent.sleep(0.1)
    assert accepted[1].buffered == 1000
    sender.kill()
    client.close("done")
    gevent.joinall(runs, timeout=5)


def test_half_close_and_data_both_ways():
    def on_create(vc, mode, target):
        got = b""
        while data := vc.recv(65536):
            got += data
        vc.sendall(b"echo:" + got)  # still allowed after the far side's FIN
        vc.shutdown(socket.SHUT_WR)

    client, server, runs = make_pair(on_create)
    stream = client.open_stream(fr.CreateMode.CONNECT, "x:1")
    payload = bytes(range(256)) * 1000
    stream.sendall(payload)
    stream.shutdown(socket.SHUT_WR)
    answer = b""
    stream.settimeout(5)
    while data := stream.recv(65536):
        answer += data
    assert answer == b"echo:" + payload
    client.close("done")
    gevent.joinall(runs, timeout=5)


def test_link_loss_resets_every_stream():
    client, server, runs = make_pair(lambda vc, mode, target: gevent.sleep(30))
    streams = [client.open_stream(fr.CreateMode.CONNECT, "x:1") for _ in range(3)]
    gevent.sleep(0.1)
    server.close("killed")
    gevent.joinall(runs, timeout=5)
    for s in streams:
        s.settimeout(5)
        with pytest.raises(ConnectionResetError):
            s.recv(10)
        with pytest.raises(ConnectionResetError):
            s.sendall(b"more")
    assert client.closed
