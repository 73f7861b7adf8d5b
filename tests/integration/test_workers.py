"""workers = N: a master and worker processes sharing the listeners (wmproxy/workers.py).

The reload tests (test_reload.py) run on a master with two workers too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import ROOT, Pair, Proc, control, free_port, http_get, wait_port
from test_center import host_get, http_mapping, tcp_mapping, through, udp_ask, udp_mapping


def start(tmp_path, workers: int = 2, extra: str = "", grace: str = "3s",
          program: str = "wmproxy-server") -> tuple[Proc, int, int]:
    """A server with ``workers`` workers, a forward proxy and the control API; (proc, proxy
    port, control port) once every worker is ready."""
    proxy, cport = free_port(), free_port()
    conf = tmp_path / f"w-{proxy}.toml"
    conf.write_text(f'workers = {workers}\ncontrol = "127.0.0.1:{cport}"\ngrace = "{grace}"\n'
                    f'[proxy]\nbind = "127.0.0.1:{proxy}"\n{extra}\n')
    p = Proc(["-c", str(conf)], proxy, tmp_path, program=program)
    p.wait_log(" started (pid", timeout=30)
    return p, proxy, cport


def status(cport: int) -> dict:
    return json.loads(control(cport, "GET", "/status")[1])


def worker_pids(p: Proc) -> list[int]:
    return sorted(c.pid for c in psutil.Process(p.popen.pid).children())


@pytest.fixture
def server(tmp_path):
    made: list[Proc] = []

    def make(**kw) -> tuple[Proc, int, int]:
        out = start(tmp_path, **kw)
        made.append(out[0])
        return out

    yield make
    for p in made:
        p.stop()


def test_connections_land_on_every_worker_and_status_sums_them(server, origin):
    p, proxy, cport = server(workers=2)
    pids = worker_pids(p)
    assert len(pids) == 2 and p.popen.pid not in pids
    results: list[bytes] = []

    def client() -> None:
        for _ in range(25):
            results.append(http_get(proxy, f"http://127.0.0.1:{origin.port}/whoami")[1])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [b"origin-A"] * 200
    st = status(cport)
    assert st["mode"] == "master" and st["pid"] == st["master"]["pid"] == p.popen.pid
    rows = {w["id"]: w for w in st["workers"]}
    assert sorted(rows) == [0, 1] and sorted(w["pid"] for w in rows.values()) == pids
    assert all(w["state"] == "serving" and w["rss_bytes"] > 0 and w["restarts"] == 0 for w in rows.values())
    per_worker = [w["connections_total"] for w in rows.values()]
    assert all(n > 0 for n in per_worker), per_worker  # the kernel's one queue feeds both
    proxy_row = next(r for r in st["listeners"] if r["kind"] == "proxy")
    assert proxy_row["connections_total"] == sum(per_worker) == 200
    assert proxy_row["requests"] == {"200": 200}
    assert proxy_row["request_seconds"]["count"] == 200
    # /metrics: the same sums, one series each, and the whole tree's memory
    metrics = control(cport, "GET", "/metrics")[1].decode()
    assert f'wmproxy_connections_total{{kind="proxy",bind="127.0.0.1:{proxy}"}} 200' in metrics
    assert st["process"]["rss_bytes"] == st["master"]["rss_bytes"] + sum(w["rss_bytes"] for w in rows.values())
    assert float(next(line.split()[1] for line in metrics.splitlines()
                      if line.startswith("process_resident_memory"))) > st["master"]["rss_bytes"]
    assert 'wmproxy_worker_up{worker="0"} 1' in metrics and 'wmproxy_worker_restarts_total{worker="1"} 0' in metrics
    table = subprocess.run([sys.executable, str(ROOT / "bin" / "wmproxy-server"), "status", "--control",
                            f"127.0.0.1:{cport}"], capture_output=True, text=True, timeout=30).stdout
    assert f"worker 0  pid {rows[0]['pid']}  serving" in table and f"worker 1  pid {rows[1]['pid']}" in table
    log = p.log()
    assert "worker 0 wmproxy.access:" in log and "worker 1 wmproxy.access:" in log
    # the workers' forward proxies refuse the master's control port as their own listener
    r = http_get(proxy, f"http://127.0.0.1:{cport}/status")
    assert r[0].startswith(b"HTTP/1.1 403")


@pytest.mark.timeout(120)
def test_a_killed_worker_loses_only_its_connections_and_comes_back(server, origin):
    p, proxy, cport = server(workers=2)
    victim = worker_pids(p)[1]
    stop = threading.Event()
    log: list[tuple[float, str]] = []

    def client() -> None:
        while not stop.is_set():
            try:
                body = http_get(proxy, f"http://127.0.0.1:{origin.port}/whoami")[1]
                log.append((time.monotonic(), "ok" if body == b"origin-A" else f"bad {body[:40]!r}"))
            except (OSError, EOFError) as e:  # (EOF: a request in flight on the killed worker)
                log.append((time.monotonic(), f"error {e!r}"))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    p.wait_log(f"(pid {victim}) was killed by signal 9", timeout=10)
    p.wait_log("started again", timeout=30)
    restarted_at = time.monotonic()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(30)
    failures = [(t, what) for t, what in log if what != "ok"]
    # at most the requests in flight on the killed worker (one per client thread) fail...
    assert len(failures) <= len(threads), failures
    assert all(killed_at - 0.5 <= t <= restarted_at for t, _ in failures), failures
    # ...and the others went on meanwhile, and after the restart every request succeeds
    assert sum(1 for t, what in log if killed_at < t < restarted_at and what == "ok") > 0
    assert sum(1 for t, what in log if t > restarted_at and what == "ok") > 10
    st = status(cport)
    assert sorted(w["restarts"] for w in st["workers"]) == [0, 1]
    assert victim not in [w["pid"] for w in st["workers"]]


def test_stop_and_master_loss_leave_no_process(server, tmp_path):
    p, proxy, cport = server(workers=2)
    pids = worker_pids(p)
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(timeout=20) == 0
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert "wmproxy: stopped" in p.log()
    # SIGKILL of the master: the workers notice (PR_SET_PDEATHSIG) and stop on their own
    q, proxy, _ = server(workers=2, grace="1s")
    pids = worker_pids(q)
    q.popen.kill()
    q.popen.wait(timeout=10)
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids], timeout=15)
    assert not alive
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy), timeout=5)


def test_workers_change_on_reload(server, origin, tmp_path):
    p, proxy, cport = server(workers=2)
    conf = tmp_path / f"w-{proxy}.toml"
    conf.write_text(conf.read_text().replace("workers = 2", "workers = 3"))
    answer = json.loads(control(cport, "POST", "/reload")[1])
    assert answer["ok"] and answer["workers"] == 3
    p.wait_log("worker 2 started", timeout=20)
    deadline = time.monotonic() + 20
    while len([w for w in status(cport)["workers"] if w["state"] == "serving"]) < 3:
        assert time.monotonic() < deadline, status(cport)
        time.sleep(0.2)
    conf.write_text(conf.read_text().replace("workers = 3", "workers = 1"))
    assert json.loads(control(cport, "POST", "/reload")[1])["workers"] == 1
    p.wait_log("workers = 1", timeout=10)
    deadline = time.monotonic() + 20
    while len(worker_pids(p)) > 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert [w["id"] for w in status(cport)["workers"]] == [0]
    assert http_get(proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    # a bad value changes nothing
    conf.write_text(conf.read_text().replace("workers = 1", "workers = 0"))
    status_code, body = control(cport, "POST", "/reload")
    assert status_code == 400 and 'workers: expected a whole number from 1 to 256, or "auto"' in json.loads(body)["error"]


def test_one_process_cannot_become_a_master_on_reload(tmp_path, start_proxy, origin):
    cport, proxy = free_port(), free_port()
    conf = tmp_path / "one.toml"
    conf.write_text(f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{proxy}"\n')
    p = start_proxy("-c", str(conf), wait=False, bind=False)
    p.wait_log(" started (pid", timeout=20)
    conf.write_text("workers = 2\n" + conf.read_text())
    status_code, body = control(cport, "POST", "/reload")
    assert status_code == 400 and "restart" in json.loads(body)["error"]
    assert http_get(proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_udp_sessions_stay_in_one_worker(server, workers):
    """[stream] UDP with two workers: each worker has its own SO_REUSEPORT socket; a client's
    datagrams all reach one worker (one session: one source port at the service). (With one
    process: /status shows the UDP listener too.)"""
    service = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    service.bind(("127.0.0.1", 0))
    service.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:  # says which port each datagram came from
        while not stop.is_set():
            try:
                data, peer = service.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:  # closed: the test is over
                return
            service.sendto(f"{peer[1]}:".encode() + data, peer)

    threading.Thread(target=answer, daemon=True).start()
    udp_port = free_port()
    extra = (f'[[stream.upstream]]\nname = "u"\nserver = [{{ addr = "127.0.0.1:{service.getsockname()[1]}" }}]\n'
             f'[[stream.server]]\nbind = "127.0.0.1:{udp_port}"\nbind_mode = "udp"\nup_name = "u"\n')
    p, _, cport = server(workers=workers, extra=extra)
    seen: dict[int, set[bytes]] = {}
    try:
        for n in range(16):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(2)
                for i in range(5):
                    c.sendto(f"{n}-{i}".encode(), ("127.0.0.1", udp_port))
                    via, _, data = c.recv(2048).partition(b":")
                    assert data == f"{n}-{i}".encode()
                    seen.setdefault(n, set()).add(via)
    finally:
        stop.set()
        service.close()
    assert all(len(ports) == 1 for ports in seen.values()), seen  # one session per client
    st = status(cport)
    row = next(r for r in st["listeners"] if r["bind"] == f"127.0.0.1:{udp_port}")
    assert row["kind"] == "stream-udp" and row["connections_total"] == 16
    if workers == 2:  # the kernel's hash spread the clients over both
        assert "worker 0 wmproxy.stream" in p.log() and "worker 1 wmproxy.stream" in p.log()


@pytest.mark.timeout(240)
def test_center_server_with_two_workers_serves_mappings_of_two_clients(tmp_path, certs, echo_server, origin,
                                                                         udp_echo):
    """The center link and its mappings live in worker 0: tcp, http and udp mappings of two
    clients work, a conflict between them is still refused, and a killed worker 0 comes back
    with its links (the clients reconnect)."""
    echo = udp_echo(b"U:")
    cport, web, pub_tcp, pub_udp = free_port(), free_port(), free_port(), free_port()
    p = Pair(tmp_path, certs, start_client=False, server_top=f'workers = 2\ncontrol = "127.0.0.1:{cport}"',
             server_extra=f'map_http_bind = "127.0.0.1:{web}"\n[[center.users]]\nusername = "bob"\npassword = "b0b"')
    try:
        p.server.wait_log(" started (pid", timeout=30)
        p.client = p.start_client(tail=tcp_mapping("echo", echo_server.port, pub_tcp) +
                                  http_mapping("app", origin.port, "app.test"))
        p.client.wait_log("mapping 'app' published", timeout=20)
        p.proxy = free_port()
        second = p.start_client(tail=udp_mapping("dgram", echo.port, pub_udp) +
                                tcp_mapping("taken", echo_server.port, pub_tcp), user="bob", password="b0b")
        second.wait_log("mapping 'dgram' published", timeout=20)
        second.wait_log("mapping 'taken' refused by the server: ", timeout=10)
        assert through(pub_tcp, b"hello").decode().startswith("got 5 ")
        wait_port(web)
        assert host_get(web, "app.test")[1] == b"origin-A"
        errors: list[str] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            assert udp_ask(s, pub_udp, b"1:x", b"U:1:x", b"U:1:", errors), errors
        st = status(cport)
        assert sorted(m["name"] for m in st["mappings"]) == ["app", "dgram", "echo"]
        assert len(st["center_links"]) == 2
        # worker 0 (the links' worker) dies: the clients reconnect to the new one
        zero = next(w["pid"] for w in st["workers"] if w["id"] == 0)
        os.kill(zero, signal.SIGKILL)
        p.server.wait_log("started again", timeout=30)
        deadline = time.monotonic() + 40
        while len(status(cport)["center_links"]) < 2:
            assert time.monotonic() < deadline, status(cport)
            time.sleep(0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert through(pub_tcp, b"again").decode().startswith("got 5 ")
                break
            except (OSError, AssertionError):
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert host_get(web, "app.test")[1] == b"origin-A"
    finally:
        p.stop()


def test_a_center_client_with_workers_keeps_its_link_and_proxy_in_worker_0(tmp_path, certs, origin):
    p = Pair(tmp_path, certs, start_client=False)
    try:
        p.client = p.start_client(extra="", tail="")  # one process first: the reference
        p.wait_link()
        p.client.stop()
        p.proxy = free_port()
        conf = tmp_path / "client-w.toml"
        conf.write_text("workers = 2\n" + p.client_config())
        c = Proc(["-c", str(conf)], p.proxy, tmp_path, program="wmproxy-client", name="client-w")
        p.procs.append(c)
        c.wait_log("is up", timeout=30)
        assert "worker 0 wmproxy.center" in c.log() and "worker 1 wmproxy.center" not in c.log()
        for _ in range(10):  # every connection to the local proxy goes over the one link
            assert http_get(p.proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    finally:
        p.stop()


class Traffic:
    """A CONNECT tunnel opened now (to finish later) and client threads sending requests through
    the proxy until ``done()``: what an upgrade must carry across."""

    def __init__(self, proxy: int, origin_port: int, echo_port: int, threads: int = 3) -> None:
        self.tunnel = socket.create_connection(("127.0.0.1", proxy), timeout=30)
        self.tunnel.sendall(f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert self.tunnel.recv(4096).startswith(b"HTTP/1.1 200")
        self.tunnel.sendall(b"before ")
        self.stop = threading.Event()
        self.results: list[str] = []
        self.url = f"http://127.0.0.1:{origin_port}/whoami"
        self.proxy = proxy
        self.threads = [threading.Thread(target=self._client) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _client(self) -> None:
        while not self.stop.is_set():
            try:
                body = http_get(self.proxy, self.url)[1]
                self.results.append("ok" if body == b"origin-A" else f"bad {body[:40]!r}")
            except (OSError, EOFError) as e:
                self.results.append(f"error {e!r}")

    def done(self) -> None:
        """Stop the clients; every request must have succeeded, and the tunnel must finish."""
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert self.results and set(self.results) == {"ok"}, [r for r in self.results if r != "ok"][:5]
        self.tunnel.sendall(b"after")
        self.tunnel.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := self.tunnel.recv(4096):
            data += chunk
        self.tunnel.close()
        assert data.decode().startswith("got 12 ")


@pytest.mark.timeout(120)
def test_upgrade_hands_the_sockets_to_new_workers_while_the_old_ones_drain(server, origin, echo_server):
    """POST /upgrade (SIGUSR2, `upgrade`): new worker processes, on the code installed now, take
    over; a tunnel open on an old worker goes on to its end; no new connection is refused."""
    p, proxy, cport = server(workers=2, grace="30s")
    old = worker_pids(p)
    traffic = Traffic(proxy, origin.port, echo_server.port)
    try:
        time.sleep(0.5)
        status_code, body = control(cport, "POST", "/upgrade")
        answer = json.loads(body)
        assert status_code == 200 and answer["ok"], answer
        assert len(answer["workers"]) == 2 and not set(answer["workers"]) & set(old)
        time.sleep(1)
    finally:
        traffic.done()  # (the old worker holding the tunnel still serves it)
    assert sorted(w["pid"] for w in status(cport)["workers"]) == sorted(answer["workers"])
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in old if psutil.pid_exists(pid)], timeout=15)
    assert not alive  # once its last connection ended, the old worker exited
    p.wait_log("upgrade (control API) done")


def test_upgrade_needs_a_master(start_proxy):
    p = start_proxy("--control", f"127.0.0.1:{(cport := free_port())}")
    p.wait_log(" started (pid", timeout=20)
    status_code, body = control(cport, "POST", "/upgrade")
    assert status_code == 409 and "workers = 1" in json.loads(body)["error"]
    p.popen.send_signal(signal.SIGUSR2)  # logged and ignored, not fatal
    p.wait_log("SIGUSR2 upgrades a master and its workers; this process serves alone")
    assert p.popen.poll() is None and control(cport, "GET", "/status")[0] == 200


def test_a_reload_that_ends_the_center_client_spreads_its_proxy_over_every_worker(tmp_path, certs, origin):
    """In a center client the local proxy lives in worker 0 with the link; a reload without
    [center] makes it a plain forward proxy, which worker 1 then serves too (the master hands
    every worker every socket with each reload)."""
    p = Pair(tmp_path, certs, start_client=False)
    try:
        cport = free_port()
        conf = tmp_path / "client-w.toml"
        conf.write_text(f'workers = 2\ncontrol = "127.0.0.1:{cport}"\n' + p.client_config())
        c = Proc(["-c", str(conf)], p.proxy, tmp_path, program="wmproxy-client", name="client-w")
        p.procs.append(c)
        c.wait_log("is up", timeout=30)
        assert "worker 1 wmproxy: proxy listening" not in c.log()
        conf.write_text(f'workers = 2\ncontrol = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{p.proxy}"\n')
        answer = json.loads(control(cport, "POST", "/reload")[1])
        assert answer["ok"] and "worker_errors" not in answer, answer
        c.wait_log(f"worker 1 wmproxy: proxy listening on 127.0.0.1:{p.proxy}", timeout=10)
        for _ in range(10):
            assert http_get(p.proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    finally:
        p.stop()


@pytest.mark.timeout(120)
def test_sigusr2_runs_the_installed_code_in_the_master_too(server, origin, echo_server, tmp_path):
    """SIGUSR2: the master executes itself again (same pid: the pid file and systemd stay right)
    with every listening socket kept open, starts new workers, and the old ones drain: a tunnel
    on one goes on to its end, and no connection is refused meanwhile (they wait in the queue).
    A configuration the installed code refuses leaves the old master serving."""
    p, proxy, cport = server(workers=2, grace="30s")
    before = status(cport)
    old = worker_pids(p)
    traffic = Traffic(proxy, origin.port, echo_server.port, threads=2)
    try:
        time.sleep(0.5)
        p.popen.send_signal(signal.SIGUSR2)
        p.wait_log("the master runs the installed code again", timeout=30)
        deadline = time.monotonic() + 40
        while True:
            try:
                st = status(cport)
                if st["started_at"] > before["started_at"] and len(
                        [w for w in st["workers"] if w["state"] == "serving" and w["pid"] not in old]) == 2:
                    break
            except (OSError, ValueError, KeyError):
                pass  # (the control API is between two images)
            assert time.monotonic() < deadline, p.log()[-3000:]
            time.sleep(0.3)
        time.sleep(1)
    finally:
        traffic.done()
    assert st["pid"] == p.popen.pid and p.popen.poll() is None
    # the old workers went on accepting until the new ones were ready
    after = p.log().split("the master runs the installed code again", 1)[1]
    assert after.index("2 workers started") < after.index("the master closed our channel"), after[:3000]
    deadline = time.monotonic() + 20
    while [pid for pid in old if psutil.pid_exists(pid)]:  # ended, and reaped by the new image
        assert time.monotonic() < deadline, [psutil.Process(pid).status() for pid in old if psutil.pid_exists(pid)]
        time.sleep(0.2)
    # a file the installed code refuses: the master stays as it is
    conf = tmp_path / f"w-{proxy}.toml"
    conf.write_text(conf.read_text() + "nonsense = 1\n")
    started = status(cport)["started_at"]
    p.popen.send_signal(signal.SIGUSR2)
    p.wait_log("the installed code refuses to start", timeout=60)
    assert status(cport)["started_at"] == started
    assert http_get(proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
