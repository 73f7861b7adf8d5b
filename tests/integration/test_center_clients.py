"""Center clients: told apart by their ids (TOKEN with the flag ID): a client that links again
replaces its own old link at once, two clients of one account cannot take each other's domain
or port; mapping groups that several clients serve together; health checks of local services."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, Pair, TcpServer, control, curl, free_port, http_get, read_response, recv_all, wait_port
from test_center import http_mapping, tcp_mapping


def echo_through(port: int, payload: bytes = b"hello") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def host_get(port: int, host: str) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /whoami HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return read_response(s)


def test_a_client_linking_again_replaces_its_silent_old_link_at_once(tmp_path, certs, echo_server, origin):
    """The old client hangs (SIGSTOP: its link stays open, silent); a new one with the same id
    takes its place at once, not after 3 x heartbeat (here 3 x 30 s), with the same mappings."""
    remote, web, cport = free_port(), free_port(), free_port()
    p = Pair(tmp_path, certs, start_client=False, heartbeat="30s", server_top=f'control = "127.0.0.1:{cport}"',
             server_extra=f'map_http_bind = "127.0.0.1:{web}"\n')
    mappings = tcp_mapping("echo", echo_server.port, remote) + http_mapping("site", origin.port, "a.test")
    try:
        old = p.client = p.start_client('client_id = "office"\n' + mappings)
        p.wait_link()
        wait_port(remote)
        assert echo_through(remote).startswith(b"got 5 ")
        assert host_get(web, "a.test")[1] == b"origin-A"
        old.popen.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        new = p.start_client('client_id = "office"\n' + mappings, proxy=free_port())
        new.wait_log("is up", timeout=10)
        assert "mapping 'echo' published" in new.wait_log("mapping 'site' published")
        assert echo_through(remote).startswith(b"got 5 ")  # through the new link
        body = host_get(web, "a.test")[1]
        assert body == b"origin-A", (body[:200], p.server.log()[-6000:], new.log()[-4000:])
        took = time.monotonic() - started
        assert took < 10, took  # (the heartbeat would have taken 90 s)
        log = p.server.wait_log("is replaced")
        assert "client 'alice' (id office) linked again" in log
        status = json.loads(control(cport, "GET", "/status")[1])
        assert [link["client_id"] for link in status["center_links"]] == ["office"], status["center_links"]
    finally:
        if p.client is not None and p.client.popen.poll() is None:
            p.client.popen.kill()  # (stopped: SIGTERM would wait)
        p.stop()


def test_two_clients_of_one_account_keep_their_own_domains_and_ports(tmp_path, certs, echo_server, origin, origin_b):
    """Two live clients of one account, each with its id: the later one's claim of the first
    one's domain or port is refused and reported to it; the first keeps serving."""
    remote, web = free_port(), free_port()
    p = Pair(tmp_path, certs, start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"\n')
    try:
        p.client = p.start_client('client_id = "one"\n' + tcp_mapping("echo", echo_server.port, remote)
                                  + http_mapping("site", origin.port, "app.test"))
        p.wait_link()
        second = p.start_client('client_id = "two"\n' + tcp_mapping("echo2", echo_server.port, remote)
                                + http_mapping("site2", origin_b.port, "app.test"), proxy=free_port())
        log = second.wait_log("mapping 'site2' refused")
        assert "mapping 'site2' refused by the server: domain app.test is already held by client alice" in log
        assert "mapping 'echo2' refused by the server:" in log and "is already held by client alice" in log
        assert host_get(web, "app.test")[1] == b"origin-A"  # still the first one's
        assert echo_through(remote).startswith(b"got 5 ")
        # with no id at all (a client from before ids), each link is a client of its own: refused too
        third = p.start_client(http_mapping("site3", origin_b.port, "app.test"), proxy=free_port())
        third.wait_log("mapping 'site3' refused by the server: domain app.test is already held")
        assert host_get(web, "app.test")[1] == b"origin-A"
        assert curl("-s", "-H", "Host: app.test", f"http://127.0.0.1:{web}/whoami").stdout == b"origin-A"
        # the first one dies: the others do not take its domain over (only a group's members would)
        p.client.popen.kill()
        p.server.wait_log("mapping 'site' of client alice withdrawn")
        head, body = host_get(web, "app.test")
        assert head.split()[1] == b"502" and b"origin-B" not in body
    finally:
        p.stop()


def test_a_mapping_whose_service_fails_its_checks_is_withdrawn_until_it_recovers(tmp_path, certs, origin):
    """health_check on a mapping: its local service stops: withdrawn from the server after
    ``fails`` checks (the public port closes); it comes back: published again."""
    def serve(conn):
        conn.sendall(b"up")

    service = TcpServer(serve)
    port = service.port
    remote, web = free_port(), free_port()
    p = Pair(tmp_path, certs, start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"\n')
    check = 'health_check = { type = "tcp", interval = "0.2s", timeout = "1s", fails = 2, passes = 2 }\n'
    try:
        p.client = p.start_client(tcp_mapping("svc", port, remote) + check + http_mapping("site", origin.port, "a.test")
                                  + 'health_check = { type = "http", path = "/whoami", status = [404], '
                                    'interval = "0.2s", fails = 1 }\n')
        p.wait_link()
        wait_port(remote)
        assert through_port(remote) == b"up"
        # the http check expects 404 and gets 200: that mapping goes, the other stays
        p.client.wait_log("mapping 'site': the local service is unhealthy (1 failed check(s), the last: answered 200)")
        p.server.wait_log("mapping 'site' of client alice withdrawn")
        assert host_get(web, "a.test")[0].split()[1] in (b"404", b"502")
        service.close()
        started = time.monotonic()
        p.client.wait_log("mapping 'svc': the local service is unhealthy (2 failed check(s)")
        p.server.wait_log("mapping 'svc' of client alice withdrawn")
        assert time.monotonic() - started < 3  # (interval x fails: 0.4 s, and a check's own time)
        try:
            assert through_port(remote) == b""
        except ConnectionRefusedError:
            pass  # the public port is closed
        service = TcpServer(serve, port=port)
        p.client.wait_log("mapping 'svc': the local service is healthy again (2 passed check(s))")
        deadline = time.monotonic() + 10
        while p.client.log().count("mapping 'svc' published") < 2:  # (the server's answer, once more)
            assert time.monotonic() < deadline, p.client.log()
            time.sleep(0.05)
        wait_port(remote)
        assert through_port(remote) == b"up"
    finally:
        service.close()
        p.stop()


def through_port(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return recv_all(s)


def group_mappings(web_port: int, tcp_local: int, remote: int, key: str = "k", extra: str = "") -> str:
    return (http_mapping("site", web_port, "app.test") + f'group = "web"\ngroup_key = "{key}"\n'
            + tcp_mapping("svc", tcp_local, remote) + f'group = "svc"\ngroup_key = "{key}"\n{extra}')


def says(text: bytes):
    def serve(conn):
        conn.sendall(text)
    return serve


def spread(remote: int, web: int, n: int = 8) -> tuple[set, set]:
    """What n connections to the tcp port and n requests to the domain reached."""
    tcp = {through_port(remote) for _ in range(n)}
    http = {host_get(web, "app.test")[1] for _ in range(n)}
    return tcp, http


def test_a_group_of_two_clients_serves_one_domain_and_one_port(tmp_path, certs, origin, origin_b):
    a, b = TcpServer(says(b"A")), TcpServer(says(b"B"))
    remote, web, cport = free_port(), free_port(), free_port()
    p = Pair(tmp_path, certs, start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"\n',
             server_top=f'control = "127.0.0.1:{cport}"')
    try:
        p.client = one = p.start_client('client_id = "one"\n' + group_mappings(origin.port, a.port, remote))
        two = p.start_client('client_id = "two"\n' + group_mappings(origin_b.port, b.port, remote),
                             proxy=free_port())
        for client in (one, two):
            client.wait_log("mapping 'svc' published")
            client.wait_log("mapping 'site' published")
        wait_port(remote)
        assert spread(remote, web) == ({b"A", b"B"}, {b"origin-A", b"origin-B"})  # both serve
        rows = json.loads(control(cport, "GET", "/status")[1])["mappings"]  # and the server counts each one's share
        shares = sorted((r["name"], r["requests"] if r["mode"] == "http" else r["connections_total"]) for r in rows)
        assert [name for name, _ in shares] == ["site", "site", "svc", "svc"], rows
        assert all(n >= 4 for _, n in shares), rows  # (round robin; the port's probe is one more)
        # the group's key is its secret: a wrong one is refused
        three = p.start_client('client_id = "three"\n' + group_mappings(origin_b.port, b.port, remote, "bad"),
                               proxy=free_port())
        three.wait_log("mapping 'site' refused by the server: domain app.test is already held")
        three.wait_log("mapping 'svc' refused by the server:")
        three.stop()
        # one member dies: the other serves everything, from the moment its link is seen gone
        one.popen.kill()
        deadline = time.monotonic() + 10
        while "mapping 'svc' of client alice withdrawn" not in p.server.log():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert spread(remote, web, 12) == ({b"B"}, {b"origin-B"})
    finally:
        a.close()
        b.close()
        p.stop()


def test_a_group_member_whose_service_fails_leaves_its_share_to_the_others(tmp_path, certs, origin, origin_b):
    a, b = TcpServer(says(b"A")), TcpServer(says(b"B"))
    a_port = a.port
    remote, web = free_port(), free_port()
    p = Pair(tmp_path, certs, start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"\n')
    check = 'health_check = { interval = "0.2s", timeout = "1s", fails = 2, passes = 1 }\n'
    try:
        p.client = one = p.start_client('client_id = "one"\n' + group_mappings(origin.port, a.port, remote,
                                                                                extra=check))
        two = p.start_client('client_id = "two"\n' + group_mappings(origin_b.port, b.port, remote),
                             proxy=free_port())
        two.wait_log("mapping 'svc' published")
        wait_port(remote)
        assert spread(remote, web)[0] == {b"A", b"B"}
        a.close()
        started = time.monotonic()
        one.wait_log("mapping 'svc': the local service is unhealthy")
        p.server.wait_log("mapping 'svc' of client alice withdrawn")
        assert time.monotonic() - started < 3  # interval x fails (0.4 s) and the checks' own time
        assert spread(remote, web, 10)[0] == {b"B"}  # none lost: the other member takes them all
        a = TcpServer(says(b"A"), port=a_port)
        one.wait_log("mapping 'svc': the local service is healthy again")
        deadline = time.monotonic() + 10
        while spread(remote, web, 4)[0] != {b"A", b"B"}:  # back in its group
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        a.close()
        b.close()
        p.stop()


class TwoServers:
    """Two center servers (same certificate and account, each its own map_http_bind) and a
    client of both (``mode``: servers_mode), with an http mapping that each may publish."""

    def __init__(self, tmp_path, certs, origin, mode: str = "all"):
        self.webs = [free_port(), free_port()]
        self.pair = p = Pair(tmp_path, certs, start_client=False,
                             server_extra=f'map_http_bind = "127.0.0.1:{self.webs[0]}"\n')
        self.centers = [p.center, free_port()]
        conf_b = tmp_path / "server-b.toml"
        conf_b.write_text(p.server_conf.read_text().replace(f":{p.center}", f":{self.centers[1]}")
                          .replace(f":{self.webs[0]}", f":{self.webs[1]}"))
        self.confs = [p.server_conf, conf_b]
        self.servers = [p.server, p.start("server", conf_b)]
        wait_port(self.centers[1], proc=self.servers[1].popen)
        self.cport = free_port()
        listed = ", ".join(f'"127.0.0.1:{port}"' for port in self.centers)
        text = (f'control = "127.0.0.1:{self.cport}"\n'
                + p.client_config(f'servers_mode = "{mode}"\n').replace(f'server = "127.0.0.1:{p.center}"',
                                                                        f"server = [{listed}]")
                + http_mapping("site", origin.port, "a.test"))
        self.client_conf = conf = tmp_path / "client-two-servers.toml"
        conf.write_text(text)
        p.client = self.client = p.start("client", conf)
        wait_port(p.proxy, proc=self.client.popen)

    def restart(self, i: int) -> None:
        self.servers[i] = self.pair.start("server", self.confs[i])
        wait_port(self.centers[i], proc=self.servers[i].popen)

    def links(self) -> list[dict]:
        return json.loads(control(self.cport, "GET", "/status")[1])["center_links"]

    def link_up_metrics(self) -> dict[str, float]:
        """wmproxy_center_link_up per server, from the client's /metrics."""
        out = {}
        for family in text_string_to_metric_families(control(self.cport, "GET", "/metrics")[1].decode()):
            for sample in family.samples:
                if sample.name == "wmproxy_center_link_up":
                    out[sample.labels["server"]] = sample.value
        return out

    def stop(self):
        self.pair.stop()


def test_a_client_of_two_servers_publishes_on_both_and_survives_one(tmp_path, certs, origin):
    """servers_mode = "all": a link to each server, the mapping on each; the local proxy's
    streams over the live links; one server killed: nothing fails once its link is seen gone;
    back: the client links and publishes again."""
    t = TwoServers(tmp_path, certs, origin)
    try:
        for server in t.servers:
            server.wait_log("mapping 'site' of client alice published")
        assert [host_get(web, "a.test")[1] for web in t.webs] == [b"origin-A"] * 2
        assert sorted(link["state"] for link in t.links()) == ["up", "up"]
        a, b = (f"127.0.0.1:{port}" for port in t.centers)
        assert t.link_up_metrics() == {a: 1.0, b: 1.0}
        # a stream of requests through the local proxy while server a is killed
        results: list[tuple[float, bool]] = []
        stop = threading.Event()

        def requests() -> None:
            while not stop.is_set():
                try:
                    ok = http_get(t.pair.proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
                except OSError:
                    ok = False
                results.append((time.monotonic(), ok))

        worker = threading.Thread(target=requests, daemon=True)
        worker.start()
        time.sleep(0.5)
        t.servers[0].popen.kill()
        t.client.wait_log(f"center link to {a} lost")
        detected = time.monotonic()
        time.sleep(1.5)
        stop.set()
        worker.join(10)
        after = [ok for at, ok in results if at > detected]
        before = [ok for at, ok in results if at <= detected]
        print(f"requests before the loss was seen: {len(before)}, failed: {before.count(False)}; "
              f"after: {len(after)}, failed: {after.count(False)}")
        assert len(after) > 10 and all(after)  # none failed once the dead link was seen
        assert host_get(t.webs[1], "a.test")[1] == b"origin-A"
        assert sorted(link["state"] for link in t.links()) == ["down", "up"]
        assert t.link_up_metrics() == {a: 0.0, b: 1.0}
        shown = subprocess.run([sys.executable, str(ROOT / "bin" / "wmproxy-client"), "status", "-c",
                                str(t.client_conf)], capture_output=True, text=True, timeout=30).stdout
        assert f"to {a}: down" in shown and f"to {b}: up" in shown, shown
        t.restart(0)
        t.servers[0].wait_log("mapping 'site' of client alice published", timeout=20)
        assert host_get(t.webs[0], "a.test")[1] == b"origin-A"
    finally:
        t.stop()


def test_failover_keeps_one_link_and_moves_on_when_it_dies(tmp_path, certs, origin):
    t = TwoServers(tmp_path, certs, origin, mode="failover")
    try:
        t.servers[0].wait_log("mapping 'site' of client alice published")
        assert [link["state"] for link in t.links()] == ["up", "down"]
        assert "connected from" not in t.servers[1].log()  # one link at a time
        t.servers[0].popen.kill()
        t.servers[1].wait_log("mapping 'site' of client alice published", timeout=20)
        assert host_get(t.webs[1], "a.test")[1] == b"origin-A"
        assert [link["state"] for link in t.links()] == ["down", "up"]
        url = f"http://127.0.0.1:{origin.port}/whoami"
        assert curl("-s", "-x", f"http://127.0.0.1:{t.pair.proxy}", url).stdout == b"origin-A"
    finally:
        t.stop()
