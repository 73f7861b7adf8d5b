"""Hot reload: diffs applied without refusing a connection, invalid configs refused,
listeners added and removed, settings for new connections only; SIGHUP and file watching."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
import time

import pytest

from conftest import control, curl, free_port, http_get, read_response, recv_all, wait_port


class Setup:
    """A config file the test rewrites, for a server started on it."""

    def __init__(self, start_proxy, tmp_path, **values) -> None:
        self.path = tmp_path / "wm.toml"
        self.values = {"control": free_port(), "proxy": free_port(), "watch": "false", "grace": "10s",
                       "proxy_extra": "", "stream": "", "workers": 1, **values}
        self.write()
        self.proc = start_proxy("-c", str(self.path))
        # every listener is up (the proxy port alone may answer before the control port is
        # bound) and the signal handlers are in place
        self.proc.wait_log(" started (pid", timeout=20)

    def write(self, **changes) -> None:
        self.values.update(changes)
        v = self.values
        text = (f'control = "127.0.0.1:{v["control"]}"\nwatch = {v["watch"]}\ngrace = "{v["grace"]}"\n'
                f'workers = {v["workers"]}\n'
                f'[proxy]\nbind = "127.0.0.1:{v["proxy"]}"\n{v["proxy_extra"]}\n{v["stream"]}\n')
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)

    def reload(self) -> dict:
        status, body = control(self.values["control"], "POST", "/reload")
        answer = json.loads(body)
        assert (status == 200) == answer["ok"], answer
        return answer

    def status(self) -> dict:
        return json.loads(control(self.values["control"], "GET", "/status")[1])


@pytest.fixture(params=[1, 2], ids=["one process", "workers=2"])
def setup(start_proxy, tmp_path, request):
    """Each reload test runs on one process and on a master with two workers (workers.py),
    which must behave the same."""
    def make(**values) -> Setup:
        return Setup(lambda *a: start_proxy(*a, wait=False, bind=False), tmp_path,
                     **{"workers": request.param, **values})

    return make


def stream_section(port: int, target: int, name: str = "up") -> str:
    return (f'[[stream.upstream]]\nname = "{name}"\nserver = [{{ addr = "127.0.0.1:{target}" }}]\n'
            f'[[stream.server]]\nbind = "127.0.0.1:{port}"\nup_name = "{name}"\n')


def wait_listening(port: int) -> None:
    wait_port(port)


@pytest.mark.timeout(120)
def test_twenty_reloads_refuse_nothing_and_keep_a_transfer(setup, origin, echo_server):
    stream_port, extra_port = free_port(), free_port()
    s = setup(stream=stream_section(stream_port, origin.port))
    wait_listening(s.values["proxy"])
    wait_listening(stream_port)
    # a long transfer through a CONNECT tunnel, started before the reloads
    payload = bytes(range(256)) * 40_000  # 10 MB
    tunnel = socket.create_connection(("127.0.0.1", s.values["proxy"]), timeout=30)
    tunnel.sendall(f"CONNECT 127.0.0.1:{echo_server.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert tunnel.recv(4096).startswith(b"HTTP/1.1 200")

    def send_slowly():
        for i in range(0, len(payload), 100_000):
            tunnel.sendall(payload[i:i + 100_000])
            time.sleep(0.02)
        tunnel.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_slowly)
    sender.start()
    done = threading.Event()
    results = {"ok": 0, "failed": []}

    def hammer(port: int, make_request):
        while not done.is_set():
            try:
                body = make_request(port)
                if body == b"origin-A":
                    results["ok"] += 1
                else:
                    results["failed"].append(body[:80])
            except OSError as e:
                results["failed"].append(repr(e))

    def via_proxy(port):
        return http_get(port, f"http://127.0.0.1:{origin.port}/whoami")[1]

    def via_stream(port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return read_response(c)[1]

    hammers = [threading.Thread(target=hammer, args=(s.values["proxy"], via_proxy)),
               threading.Thread(target=hammer, args=(stream_port, via_stream))]
    for h in hammers:
        h.start()
    try:
        for i in range(20):
            extra = stream_section(extra_port, origin.port, "extra") if i % 2 == 0 else ""
            s.write(proxy_extra=f'idle_timeout = "{400 + i}s"',
                    stream=stream_section(stream_port, origin.port) + extra)
            answer = s.reload()
            assert f"proxy 127.0.0.1:{s.values['proxy']}" in answer["changed"]
            time.sleep(0.05)
    finally:
        done.set()
        for h in hammers:
            h.join(30)
        sender.join(60)
    answer = recv_all(tunnel)
    tunnel.close()
    assert answer.decode() == f"got {len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert results["failed"] == []
    assert results["ok"] > 40
    st = s.status()
    assert st["reloads"] == 20 and st["reload_failures"] == 0


def test_invalid_config_keeps_the_old_one(setup, origin):
    s = setup()
    wait_listening(s.values["proxy"])
    s.path.write_text(s.path.read_text() + 'bogus_key = 1\n')
    status, body = control(s.values["control"], "POST", "/reload")
    answer = json.loads(body)
    assert status == 400 and not answer["ok"]
    assert str(s.path) in answer["error"] and "proxy.bogus_key: unknown key" in answer["error"]
    assert http_get(s.values["proxy"], f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    st = s.status()
    assert st["reload_failures"] == 1 and "bogus_key" in st["last_reload_error"]
    s.proc.wait_log("reload (control API) failed, the old configuration keeps serving")


def test_bind_failure_on_reload_changes_nothing(setup, origin):
    s = setup()
    wait_listening(s.values["proxy"])
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    s.write(stream=stream_section(taken.getsockname()[1], origin.port))
    status, body = control(s.values["control"], "POST", "/reload")
    assert status == 400 and "stream.server[0].bind: cannot listen on" in json.loads(body)["error"]
    taken.close()
    assert [r["kind"] for r in s.status()["listeners"]] == ["proxy", "control"]


def test_listeners_added_and_removed(setup, origin):
    stream_port = free_port()
    s = setup()
    wait_listening(s.values["proxy"])
    s.write(stream=stream_section(stream_port, origin.port))
    assert s.reload()["added"] == [f"stream 127.0.0.1:{stream_port}"]
    with socket.create_connection(("127.0.0.1", stream_port), timeout=5) as c:
        c.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_response(c)[1] == b"origin-A"
    new_proxy = free_port()
    old_proxy = s.values["proxy"]
    s.write(stream="", proxy=new_proxy)
    answer = s.reload()
    assert sorted(answer["removed"]) == sorted([f"stream 127.0.0.1:{stream_port}", f"proxy 127.0.0.1:{old_proxy}"])
    assert answer["added"] == [f"proxy 127.0.0.1:{new_proxy}"]
    for gone in (stream_port, old_proxy):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gone), timeout=5)
    assert http_get(new_proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"


def test_new_credentials_apply_to_the_next_connection_only(setup, origin):
    s = setup()
    port = s.values["proxy"]
    wait_listening(port)
    url = f"http://127.0.0.1:{origin.port}/whoami"
    live = socket.create_connection(("127.0.0.1", port), timeout=10)  # keep-alive, from before
    live.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert read_response(live)[1] == b"origin-A"
    s.write(proxy_extra='username = "new"\npassword = "secret"')
    assert s.reload()["changed"] == [f"proxy 127.0.0.1:{port}"]
    r = curl("-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", url)
    assert r.stdout == b"407"
    r = curl("-x", f"http://127.0.0.1:{port}", "--proxy-user", "new:secret", url)
    assert r.stdout == b"origin-A"
    live.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # still on the old settings
    assert read_response(live)[1] == b"origin-A"
    live.close()


def test_sighup_and_file_watch_reload(setup, origin):
    s = setup(watch="true")
    wait_listening(s.values["proxy"])
    stream_a, stream_b = free_port(), free_port()
    s.write(stream=stream_section(stream_a, origin.port))
    s.proc.popen.send_signal(signal.SIGHUP)
    s.proc.wait_log("reloaded")
    wait_listening(stream_a)
    s.write(stream=stream_section(stream_b, origin.port))  # no signal: the watcher notices
    s.proc.wait_log("(file changed)", timeout=10)
    wait_listening(stream_b)
    assert s.status()["reloads"] >= 2


def test_client_program_reloads_the_same_way(tmp_path, origin):
    """wmproxy-client shares the App: SIGHUP applies a diff there too."""
    import subprocess
    import sys

    from conftest import ROOT

    conf = tmp_path / "client.toml"
    cport, proxy, stream = free_port(), free_port(), free_port()
    conf.write_text(f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{proxy}"\n')
    proc = subprocess.Popen([sys.executable, str(ROOT / "bin" / "wmproxy-client"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(proxy, proc=proc)
        with socket.create_connection(("127.0.0.1", proxy), timeout=10) as probe:  # answered: the loop
            probe.sendall(b"GET / HTTP/1.0\r\n\r\n")  # runs, so its SIGHUP handler is in place
            assert probe.recv(100).startswith(b"HTTP/1.")
        conf.write_text(conf.read_text() + stream_section(stream, origin.port))
        proc.send_signal(signal.SIGHUP)
        wait_port(stream, proc=proc)
        st = json.loads(control(cport, "GET", "/status")[1])
        assert st["program"] == "wmproxy-client" and st["reloads"] == 1
        assert http_get(proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
