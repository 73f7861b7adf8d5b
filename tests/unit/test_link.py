"""The center link in-process over a real socket pair: stream ids, flow control, half-close,
link loss. (The end-to-end behaviour is in tests/integration/test_center.py.)"""

from __future__ import annotations

import gc
import hashlib
import os
import socket

import gevent
import gevent.event
import greenlet
import pytest
from gevent import socket as gsocket

from wmproxy.center.link import CenterLink, StreamBudget
from wmproxy.net import idle
from wmproxy.net.reader import Reader
from wmproxy.net.relay import link_owned, relay_then
from wmproxy.prot import frame as fr

WINDOW = 65536


def make_pair(on_create, window: int = WINDOW, max_window: int = 0):
    a, b = gsocket.socketpair()
    client = CenterLink(a, Reader(a), is_client=True, window=window, max_frame=1 << 20, heartbeat=30,
                        on_create=lambda *args: None, name="client", max_window=max_window)
    server = CenterLink(b, Reader(b), is_client=False, window=window, max_frame=1 << 20, heartbeat=30,
                        on_create=on_create, name="server", max_window=max_window)
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

    client, server, runs = make_pair(on_create, max_window=16 * WINDOW)
    stream = client.open_stream(fr.CreateMode.CONNECT, "x:1")
    sender = gevent.spawn(stream.sendall, b"x" * (10 * WINDOW))
    gevent.sleep(0.5)
    assert not sender.dead  # blocked: no credit left
    # the window may grow up to 16 x, but only while the consumer keeps up: this one never took a byte
    assert accepted[0].buffered == WINDOW == accepted[0].window and stream.credit == 0
    # a second stream is not held up by the first
    other = client.open_stream(fr.CreateMode.CONNECT, "y:1")
    other.sendall(b"y" * 1000)
    gevent.sleep(0.1)
    assert accepted[1].buffered == 1000
    sender.kill()
    client.close("done")
    gevent.joinall(runs, timeout=5)


def test_a_busy_stream_s_window_grows_up_to_max_window_and_then_holds():
    got = []

    def on_create(vc, mode, target):
        n = 0
        while data := vc.recv(65536):
            n += len(data)
        got.append((n, vc.window))

    client, server, runs = make_pair(on_create, max_window=8 * WINDOW)
    gevent.sleep(0.1)
    assert client.rtt is not None and client.rtt < 1  # the first PING's round trip
    stream = client.open_stream(fr.CreateMode.CONNECT, "x:1")
    payload = os.urandom(1 << 20) * 8
    stream.sendall(payload)
    stream.shutdown(socket.SHUT_WR)
    deadline = gevent.Timeout(20)
    with deadline:
        while not got:
            gevent.sleep(0.05)
    n, window = got[0]
    assert n == len(payload)
    assert window == 8 * WINDOW  # doubled 64k -> 512k while the consumer kept up, no further
    # the grants added up to the window, no more: the sender may never hold more credit
    assert 0 < stream.credit <= window
    stream.close()
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



def test_bursts_between_quiet_heartbeats_arrive_whole_as_the_reader_renews_its_buffer(monkeypatch):
    """A quiet heartbeat makes the reader start a fresh buffer (giving back the pages a burst
    took) at its next empty moment: bursts before and after, frames of every size, arrive whole."""
    from wmproxy.center import link as link_module

    got, made = [], []
    monkeypatch.setattr(link_module, "read_buffer", lambda *size: made.append(size) or link_module.mmap.mmap(
        -1, *(size or (link_module.READ_BUFFER,))))

    def on_create(vc, mode, target):
        data = b""
        while chunk := vc.recv(1 << 20):
            data += chunk
        got.append(data)

    a, b = gsocket.socketpair()
    client = CenterLink(a, Reader(a), is_client=True, window=WINDOW, max_frame=1 << 20, heartbeat=0.05,
                        on_create=lambda *args: None, name="client", max_window=16 * WINDOW)
    server = CenterLink(b, Reader(b), is_client=False, window=WINDOW, max_frame=1 << 20, heartbeat=0.05,
                        on_create=on_create, name="server", max_window=16 * WINDOW)
    runs = [gevent.spawn(client.run), gevent.spawn(server.run)]
    stream = client.open_stream(fr.CreateMode.CONNECT, "x:1")
    sent = b""
    for size in (1 << 20, 100, 3 << 20, 1, 70000):
        piece = os.urandom(size)
        stream.sendall(piece)
        sent += piece
        gevent.sleep(0.2)  # quiet heartbeats: the reader renews its buffer
    stream.shutdown(socket.SHUT_WR)
    deadline = gevent.Timeout(10)
    with deadline:
        while not got:
            gevent.sleep(0.05)
    assert hashlib.sha256(got[0]).digest() == hashlib.sha256(sent).digest()
    assert not server.closed and not client.closed
    assert len(made) >= 2 + 2 * 4, made  # each reader started one, then one after each quiet pause at least
    client.close("done")
    gevent.joinall(runs, timeout=5)

def test_streams_past_max_streams_are_refused_and_a_slot_frees_only_when_its_handler_is_done():
    """An authenticated far end cannot open streams without end (each is a greenlet and its
    memory here): past max_streams a CREATE gets CLOSE(sid, reason) and the link goes on. A
    stream the far end resets at once keeps its slot until its handler is done (HTTP/2's rapid
    reset); one that is done gives it back."""
    serving, release = [], gevent.event.Event()

    def on_create(vc, mode, target):
        serving.append(vc)
        release.wait()  # busy (a dial, a handshake) whatever the far end does meanwhile

    a, b = gsocket.socketpair()
    client = CenterLink(a, Reader(a), is_client=True, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=lambda *args: None, name="client")
    server = CenterLink(b, Reader(b), is_client=False, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=on_create, name="server", max_streams=5)
    runs = [gevent.spawn(client.run), gevent.spawn(server.run)]
    streams = [client.open_stream(fr.CreateMode.CONNECT, "x:1") for _ in range(8)]
    gevent.sleep(0.2)
    assert len(serving) == 5 and server.budget.used == 5
    for s in streams[5:]:
        s.settimeout(5)
        with pytest.raises(ConnectionResetError, match=r"too many streams \(max_streams 5\)"):
            s.recv(10)
    for s in streams[:5]:
        s.abort("rapid reset")  # the far end gives up at once: the handlers here are still busy
    again = client.open_stream(fr.CreateMode.CONNECT, "x:1")
    again.settimeout(5)
    with pytest.raises(ConnectionResetError, match="max_streams"):
        again.recv(10)
    assert len(serving) == 5 and server.budget.used == 5
    release.set()  # the handlers end: their slots are free
    gevent.sleep(0.2)
    assert server.budget.used == 0 and not server.closed
    more = [client.open_stream(fr.CreateMode.CONNECT, "x:1") for _ in range(5)]
    gevent.sleep(0.2)
    assert len(serving) == 10 and all(s.reset is None for s in more)
    server.close("test over")
    gevent.joinall(runs, timeout=5)
    assert server.budget.used == 0  # a closed link gives back what its streams held
    a.close()
    b.close()


def test_max_streams_0_is_no_bound_as_a_center_client_has():
    """A center client bounds none of the streams its server opens (the public connections to
    its mappings, bounded on the server): max_streams = 0."""
    serving = []
    a, b = gsocket.socketpair()
    client = CenterLink(a, Reader(a), is_client=True, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=lambda vc, mode, target: serving.append(vc) or gevent.sleep(30), name="client",
                        max_streams=0)
    server = CenterLink(b, Reader(b), is_client=False, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=lambda *args: None, name="server")
    runs = [gevent.spawn(client.run), gevent.spawn(server.run)]
    opened = [server.open_stream(fr.CreateMode.TCP, "web") for _ in range(300)]
    gevent.sleep(0.3)
    assert len(serving) == 300 and all(s.reset is None for s in opened)
    server.close("test over")
    gevent.joinall(runs, timeout=5)
    a.close()
    b.close()

def test_links_sharing_a_budget_share_max_streams():
    """A center server gives every link of one account one StreamBudget: a second link brings
    no more streams."""
    budget = StreamBudget(4)
    pairs = []
    for name in ("one", "two"):
        a, b = gsocket.socketpair()
        client = CenterLink(a, Reader(a), is_client=True, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                            on_create=lambda *args: None, name=name)
        server = CenterLink(b, Reader(b), is_client=False, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                            on_create=lambda vc, mode, target: gevent.sleep(30), name=name, budget=budget)
        pairs.append((client, server, [gevent.spawn(client.run), gevent.spawn(server.run)], a, b))
    first = [pairs[0][0].open_stream(fr.CreateMode.CONNECT, "x:1") for _ in range(3)]
    gevent.sleep(0.2)
    second = [pairs[1][0].open_stream(fr.CreateMode.CONNECT, "x:1") for _ in range(3)]
    gevent.sleep(0.2)
    assert budget.used == 4 and all(s.reset is None for s in first)
    assert [s.reset is None for s in second] == [True, False, False]
    client, server, runs, a, b = pairs[0]
    server.close("gone")  # its three streams go back to the account
    gevent.joinall(runs, timeout=5)
    assert budget.used == 1
    fresh = [pairs[1][0].open_stream(fr.CreateMode.CONNECT, "x:1") for _ in range(3)]
    gevent.sleep(0.2)
    assert budget.used == 4 and all(s.reset is None for s in fresh)
    for client, server, runs, a, b in pairs:
        server.close("test over")
        gevent.joinall(runs, timeout=5)
        a.close()
        b.close()
    assert budget.used == 0


def test_mapping_updates_faster_than_applied_are_coalesced_and_a_bad_late_one_ends_the_link(monkeypatch):
    """MAPPINGs that come while the last applied one is recent wait, and only the latest of
    them is applied (after MAPPING_EVERY): a client sending updates in a loop makes the server
    publish once a second, not once per frame. A malformed one found then ends the link as a
    protocol error, as one read at once would."""
    from wmproxy.center import link as link_module

    monkeypatch.setattr(link_module, "MAPPING_EVERY", 0.3)
    applied, answers = [], []

    def on_mapping(specs):
        applied.append([m.name for m in specs])
        return [fr.MappingAnswer(m.name, True) for m in specs]

    a, b = gsocket.socketpair()
    client = CenterLink(a, Reader(a), is_client=True, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=lambda *args: None, name="client", on_mapping_answer=answers.append)
    server = CenterLink(b, Reader(b), is_client=False, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=lambda *args: None, name="server", on_mapping=on_mapping)
    runs = [gevent.spawn(client.run), gevent.spawn(server.run)]
    for n in range(5):
        client.send_frame(fr.Kind.MAPPING, 0, 0, fr.encode_mappings([fr.MappingSpec(f"m{n}", "tcp")]))
    gevent.sleep(0.1)
    assert applied == [["m0"]]  # the first at once; the others wait
    gevent.sleep(0.4)
    assert applied == [["m0"], ["m4"]] and [[x.name for x in got] for got in answers] == [["m0"], ["m4"]]
    client.send_frame(fr.Kind.MAPPING, 0, 0, fr.encode_mappings([fr.MappingSpec("m5", "tcp")]))
    client.send_frame(fr.Kind.MAPPING, 0, 0, b"\x00\x09bad")  # the latest, malformed
    gevent.joinall(runs, timeout=5)
    assert applied == [["m0"], ["m4"]]
    assert server.closed and server.close_reason.startswith("protocol error: ")
    assert client.closed
    a.close()
    b.close()


def test_a_servers_answer_for_a_mapping_never_sent_is_ignored(caplog):
    """A server's MAPPING+ACK naming a mapping this client does not have (found by a fuzz of
    the client's side) was logged as published 'on ?' and kept in the client's status."""
    import types

    from wmproxy.center.uplink import ServerLink

    mapping = types.SimpleNamespace(remote_bind=None, domain="a.test", mode="http")
    client = types.SimpleNamespace(mappings={"web": mapping}, servers=[None])
    uplink = ServerLink(client, None, "", "to x")
    with caplog.at_level("INFO", logger="wmproxy.center"):
        uplink.answered([fr.MappingAnswer("web", True), fr.MappingAnswer("zz\n", True), fr.MappingAnswer("", False, "x")])
    assert list(uplink.answers) == ["web"]
    assert [r.getMessage() for r in caplog.records] == ["mapping 'web' published by the server on Host a.test"]

# -- the reader, fed raw bytes -----------------------------------------------------------------------

def raw_server(window: int = WINDOW, max_frame: int = 1 << 20):
    """A server link on one end of a socket pair; the test writes raw frames to the other end."""
    got = []

    def on_create(vc, mode, target):
        data = b""
        while chunk := vc.recv(1 << 20):
            data += chunk
        got.append((target, data))

    a, b = gsocket.socketpair()
    link = CenterLink(b, Reader(b), is_client=False, window=window, max_frame=max_frame, heartbeat=30,
                      on_create=on_create, name="server")
    return a, link, gevent.spawn(link.run), got


def frame(kind, sid, body=b"", flag=0) -> bytes:
    return fr.encode_header(len(body), kind, flag, sid) + body


def test_reader_takes_frames_in_any_split_and_larger_than_its_buffer():
    big = os.urandom(700_000)  # more than the reader's 256 KiB buffer: it grows for it
    raw = (frame(fr.Kind.CREATE, 1, fr.encode_create(fr.CreateMode.CONNECT, "a:1"))
           + frame(fr.Kind.DATA, 1, b"x" * 1000) + frame(fr.Kind.DATA, 1, big)
           + frame(fr.Kind.PING, 0, b"12345678") + frame(fr.Kind.CLOSE, 1, fr.encode_close(""), fr.Flag.FIN))
    for pieces in ([raw], [raw[i:i + 1] for i in range(300)] + [raw[300:]], [raw[:7], raw[7:9], raw[9:400_003],
                                                                            raw[400_003:]]):
        sock, link, run, got = raw_server(window=1 << 20)
        for piece in pieces:
            sock.sendall(piece)
            gevent.sleep(0)
        with gevent.Timeout(10):
            while not got:
                gevent.sleep(0.01)
        assert got == [("a:1", b"x" * 1000 + big)]
        sock.shutdown(socket.SHUT_WR)  # EOF between frames: a clean end
        run.join(5)
        assert link.close_reason == "the far end closed the link"
        sock.close()


@pytest.mark.parametrize("raw,why", [
    (fr.encode_header(2 << 20, fr.Kind.DATA, 0, 1), "over the limit"),  # refused before its body comes
    (fr.encode_header(4, 99, 0, 1), "unknown frame kind 99"),
    (fr.encode_header(100, fr.Kind.DATA, 0, 1) + b"only part", "in the middle of a frame"),
    (b"\x00\x00", "in the middle of a frame"),
    (frame(fr.Kind.PING, 0, b"12345"), "PING body must be 8 bytes"),
])
def test_reader_refuses_bad_frames_and_eof_inside_one(raw, why):
    sock, link, run, got = raw_server()
    sock.sendall(raw)
    if "middle" in why:
        sock.shutdown(socket.SHUT_WR)
    run.join(5)
    assert link.closed and why in link.close_reason, link.close_reason
    sock.close()


# -- streams relayed by callbacks (net.bridge): no greenlet per stream --------------------------------

def bridged_pair(idle_timeout=None):
    """A link pair whose server end relays every new stream to a fresh socket pair by
    callbacks; yields (client link, runs, [(far socket, done list)] per stream)."""
    ends = []

    def on_create(vc, mode, target):
        near, far = gsocket.socketpair()
        near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a slow reader fills them soon
        far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        done = []
        ends.append((far, done, vc))
        detached = relay_then(vc, near, done.append, link_owned, idle_timeout)
        assert detached  # the handler returns while the relay goes on

    client, server, runs = make_pair(on_create)
    return client, server, runs, ends


def recv_all(s, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(min(65536, n - len(out)))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def test_bridge_relays_both_ways_with_flow_control_and_half_close():
    client, server, runs, ends = bridged_pair()
    stream = client.open_stream(fr.CreateMode.CONNECT, "x:1")
    stream.settimeout(10)
    up, down = os.urandom(16 * WINDOW + 123), os.urandom(2 * WINDOW + 7)
    sender = gevent.spawn(stream.sendall, up)
    gevent.sleep(0.5)  # the far socket is not read yet: the bridge holds at most one window
    far, done, vc = ends[0]
    far.settimeout(10)
    assert not sender.dead and vc.buffered <= WINDOW
    assert hashlib.sha256(recv_all(far, len(up))).digest() == hashlib.sha256(up).digest()
    sender.get(timeout=10)
    stream.shutdown(socket.SHUT_WR)  # half-close passes through: the socket reads EOF ...
    assert far.recv(10) == b""
    far.sendall(down)  # ... and still sends
    far.shutdown(socket.SHUT_WR)
    got = bytearray()
    while data := stream.recv(65536):
        got += data
    assert bytes(got) == down
    gevent.sleep(0.2)
    assert done and done[0].reason == "eof" and (done[0].a_to_b, done[0].b_to_a) == (len(up), len(down))
    assert vc.sid not in server.streams
    client.close("done")
    gevent.joinall(runs, timeout=5)


def test_idle_bridged_streams_keep_no_greenlet():
    client, server, runs, ends = bridged_pair()
    gevent.sleep(0.1)

    def greenlets() -> int:
        return sum(1 for o in gc.get_objects() if issubclass(type(o), greenlet.greenlet) and not o.dead)

    before = greenlets()
    streams = [client.open_stream(fr.CreateMode.CONNECT, "x:1") for _ in range(200)]
    for s in streams:
        s.sendall(b"hello")
    gevent.sleep(0.5)
    assert len(ends) == 200 and all(far.recv(5) == b"hello" for far, _, _ in ends)
    assert greenlets() - before < 10  # was 2 per stream on this end (a handler pumping and a pump)
    client.close("done")
    gevent.joinall(runs, timeout=5)


def test_link_loss_and_idle_timeout_end_bridges():
    client, server, runs, ends = bridged_pair(idle_timeout=0.5)

    def through(byte: bytes):  # a new stream, one byte through it to its socket
        client.open_stream(fr.CreateMode.CONNECT, "x:1").sendall(byte)
        gevent.sleep(0.2)
        far, done, _ = ends[-1]
        far.settimeout(5)
        assert far.recv(1) == byte
        return far, done

    far, done = through(b"x")
    assert far.recv(1) == b"" and done[0].reason == "idle"  # nothing moved for 0.5 s: closed
    far2, done2 = through(b"y")
    client.close("killed")  # the server's link notices and resets every stream
    assert far2.recv(1) == b""
    assert done2[0].reason.startswith("error: center link closed")
    gevent.joinall(runs, timeout=5)
    idle._REAPER.greenlet.join(timeout=2)  # no watch left: the reaper ends (later tests count watchers)


def test_bridge_takes_over_what_the_stream_queued_before():
    """A handler that read part of the stream (a SOCKS request, say) hands the rest on: bytes
    it buffered, frames queued meanwhile and the far end's FIN all reach the socket in order."""
    ends = []

    def on_create(vc, mode, target):
        vc.settimeout(5)
        first = vc.recv(3)  # "req": the rest of the first frame stays pending in the stream
        gevent.sleep(0.3)  # more DATA and the FIN arrive and wait in the stream's queue
        near, far = gsocket.socketpair()
        done = []
        ends.append((far, done, vc))
        relay_then(vc, near, done.append, link_owned, a_pending=b"[" + first + b"]")

    client, server, runs = make_pair(on_create)
    stream = client.open_stream(fr.CreateMode.CONNECT, "x:1")
    stream.sendall(b"req-rest")
    stream.sendall(b"-more")
    stream.shutdown(socket.SHUT_WR)
    gevent.sleep(0.6)
    far, done, vc = ends[0]
    far.settimeout(5)
    got = b""
    while data := far.recv(100):
        got += data
    assert got == b"[req]-rest-more"  # then EOF: the FIN passed through
    assert vc.buffered == 0  # every byte counted as taken once: the handler's three and the rest
    far.sendall(b"answer")
    far.shutdown(socket.SHUT_WR)
    stream.settimeout(5)
    assert stream.recv(100) == b"answer" and stream.recv(100) == b""
    gevent.sleep(0.1)
    assert done and done[0].reason == "eof"
    client.close("done")
    gevent.joinall(runs, timeout=5)


def test_bridge_sends_early_socket_bytes_larger_than_a_frame():
    """Bytes read from the socket before the bridge (more than one DATA frame) all go to the
    stream at once and are counted, also with a window whose grants come only after more
    than a frame was consumed."""
    early = os.urandom(200_000)
    ends = []

    def on_create(vc, mode, target):
        near, far = gsocket.socketpair()
        done = []
        ends.append((far, done))
        relay_then(vc, near, done.append, link_owned, b_pending=early)

    client, server, runs = make_pair(on_create, window=1 << 20)  # grants after 256 KiB
    stream = client.open_stream(fr.CreateMode.CONNECT, "x:1")
    stream.settimeout(5)
    got = bytearray()
    while len(got) < len(early):
        got += stream.recv(65536)
    assert bytes(got) == early
    far, done = ends[0]
    far.close()
    stream.shutdown(socket.SHUT_WR)
    assert stream.recv(10) == b""
    gevent.sleep(0.1)
    assert done and done[0].b_to_a == len(early)
    client.close("done")
    gevent.joinall(runs, timeout=5)


# -- bounds whatever the far end sends (issue 18) ---------------------------------------------------

def test_credit_beyond_max_window_closes_the_link():
    sock, link, run, got = raw_server()
    sock.sendall(frame(fr.Kind.CREATE, 1, fr.encode_create(fr.CreateMode.CONNECT, "a:1"))
                 + frame(fr.Kind.WINDOW, 1, fr.encode_window(0xFFFFFFFF)))
    run.join(5)
    assert link.closed and "over max_window" in link.close_reason, link.close_reason
    sock.close()


def test_create_with_stream_id_0_is_a_protocol_error():
    sock, link, run, got = raw_server()
    sock.sendall(frame(fr.Kind.CREATE, 0, fr.encode_create(fr.CreateMode.CONNECT, "a:1")))
    run.join(5)
    assert link.closed and "stream id 0" in link.close_reason, link.close_reason
    answer = b""
    with gevent.Timeout(5):
        while chunk := sock.recv(65536):
            answer += chunk
    frames = []
    while answer:
        length, kind, flag, sid = fr.decode_header(answer[:fr.HEADER_SIZE], 1 << 20)
        frames.append((kind, sid, answer[fr.HEADER_SIZE:fr.HEADER_SIZE + length]))
        answer = answer[fr.HEADER_SIZE + length:]
    # told the far end why, on stream 0: the link is over
    assert (fr.Kind.CLOSE, 0, fr.encode_close("CREATE with stream id 0")) in frames, frames
    sock.close()


def test_a_far_end_that_stops_reading_holds_at_most_the_outbox_bound():
    max_window, streams, limit = 1 << 20, 16, 1 << 20
    senders = []

    def on_create(vc, mode, target):
        senders.append(vc)
        vc.sendall(os.urandom(4 << 20))  # far more than the window: waits for credit, then for room

    a, b = gsocket.socketpair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    link = CenterLink(b, Reader(b), is_client=False, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                      on_create=on_create, name="server", max_window=max_window, max_outbox=limit)
    run = gevent.spawn(link.run)
    raw = b""
    for sid in range(1, 2 * streams, 2):  # each stream granted up to max_window, legally
        raw += frame(fr.Kind.CREATE, sid, fr.encode_create(fr.CreateMode.CONNECT, "a:1"))
        raw += frame(fr.Kind.WINDOW, sid, fr.encode_window(max_window - WINDOW))
    a.sendall(raw)  # and then never read
    peak = 0
    for _ in range(40):
        gevent.sleep(0.025)
        peak = max(peak, link.queued)
    assert len(senders) == streams
    assert not link.closed and peak >= limit // 2  # the senders did fill it
    assert peak <= limit + streams * 65536 + 4096, peak  # each may have one chunk in flight past the mark
    link.close("test over")
    run.join(5)
    a.close()


def test_tls_link_with_a_far_end_that_pauses_reading_delivers_every_byte_in_order():
    # frames are written by the hub without waiting when they can be (the flush), and by the writer
    # greenlet when the socket is full: over TLS a write that could not go must be repeated with the
    # same bytes (OpenSSL's rule), and no frame may overtake another
    import trustme
    from gevent import ssl as gssl

    ca = trustme.CA()
    cert = ca.issue_cert("center.test")
    server_ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    client_ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_ctx)
    a, b = gsocket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    ta = client_ctx.wrap_socket(a, server_hostname="center.test", do_handshake_on_connect=False)
    tb = server_ctx.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
    gevent.joinall([gevent.spawn(ta.do_handshake), gevent.spawn(tb.do_handshake)], timeout=10, raise_error=True)
    got = {}

    def on_create(vc, mode, target):
        gevent.sleep(0.5)  # the sender's socket buffer fills meanwhile
        digest, n = hashlib.sha256(), 0
        while data := vc.recv(65536):
            digest.update(data)
            n += len(data)
        got[target] = (n, digest.hexdigest())
        vc.sendall(target.encode())  # an answer back over the same link
        vc.close()

    client = CenterLink(ta, Reader(ta), is_client=True, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=lambda *args: None, name="client", max_window=16 * WINDOW)
    server = CenterLink(tb, Reader(tb), is_client=False, window=WINDOW, max_frame=1 << 20, heartbeat=30,
                        on_create=on_create, name="server", max_window=16 * WINDOW)
    runs = [gevent.spawn(client.run), gevent.spawn(server.run)]
    sent, answers = {}, {}

    def send(i):
        stream = client.open_stream(fr.CreateMode.CONNECT, f"s{i}:1")
        payload = os.urandom(300_000 + i * 7919)
        for k in range(0, len(payload), 1000 + i):  # small frames and large, from 8 streams at once
            stream.sendall(payload[k:k + 1000 + i])
        stream.shutdown(socket.SHUT_WR)
        sent[f"s{i}:1"] = (len(payload), hashlib.sha256(payload).hexdigest())
        answers[f"s{i}:1"] = stream.recv(100)
        stream.close()

    gevent.joinall([gevent.spawn(send, i) for i in range(8)], timeout=60, raise_error=True)
    assert len(sent) == 8 and got == sent
    assert answers == {name: name.encode() for name in sent}
    assert not client.closed and not server.closed and client.bytes_out > 8 * 300_000
    client.close("done")
    gevent.joinall(runs, timeout=5)
