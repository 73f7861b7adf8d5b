"""Control API: /status and /metrics against what the test did, the token, the commands."""

from __future__ import annotations

import json
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, control, curl, free_port, http_get

SERVER = str(ROOT / "bin" / "wmproxy-server")


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} from Prometheus text, via prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_status_and_metrics_count_what_happened(start_proxy, origin, tmp_path):
    cport = free_port()
    p = start_proxy(config=f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{{port}}"\n')
    url = f"http://127.0.0.1:{origin.port}/whoami"
    for _ in range(3):
        assert http_get(p.port, url)[1] == b"origin-A"
    dead = free_port()
    assert http_get(p.port, f"http://127.0.0.1:{dead}/")[0].startswith(b"HTTP/1.1 502")
    r = curl("--socks5-hostname", f"127.0.0.1:{p.port}", url)
    assert r.stdout == b"origin-A"
    p.wait_log("socks5")

    status, body = control(cport, "GET", "/status")
    assert status == 200
    st = json.loads(body)
    assert st["version"] and st["pid"] == p.popen.pid and st["uptime_seconds"] > 0
    assert st["config_file"].endswith(".toml") and st["reloads"] == 0
    proxy = next(row for row in st["listeners"] if row["kind"] == "proxy")
    assert proxy["bind"] == f"127.0.0.1:{p.port}" and proxy["state"] == "serving"
    assert proxy["connections_total"] >= 5  # 3 GETs, the 502, the SOCKS5 (plus the start-up probe)
    assert proxy["requests"] == {"200": 3, "502": 1}
    assert proxy["bytes_out"] > 0
    assert st["process"]["rss_bytes"] > 10_000_000 and st["process"]["open_fds"] > 3
    assert st["center_links"] == [] and st["mappings"] == []

    status, body = control(cport, "GET", "/metrics")
    assert status == 200
    m = samples(body.decode())
    labels = {"kind": "proxy", "bind": f"127.0.0.1:{p.port}"}  # no label that changes while the series lives
    assert m[("wmproxy_http_requests_total", frozenset({**labels, "status": "200"}.items()))] == 3
    assert m[("wmproxy_http_requests_total", frozenset({**labels, "status": "502"}.items()))] == 1
    assert m[("wmproxy_connections_total", frozenset(labels.items()))] == proxy["connections_total"]
    assert m[("wmproxy_listener_draining", frozenset(labels.items()))] == 0
    # every HTTP request in the duration histogram (the SOCKS5 tunnel is not a request)
    assert m[("wmproxy_http_request_duration_seconds_count", frozenset(labels.items()))] == 4
    assert m[("wmproxy_http_request_duration_seconds_bucket", frozenset({**labels, "le": "+Inf"}.items()))] == 4
    assert proxy["request_seconds"]["count"] == 4
    assert m[("wmproxy_reloads_total", frozenset())] == 0
    assert m[("wmproxy_reload_failures_total", frozenset())] == 0
    assert m[("process_open_fds", frozenset())] > 3

    assert control(cport, "GET", "/nope")[0] == 404
    assert control(cport, "GET", "/reload")[0] == 405


def test_token_required_when_set(start_proxy):
    cport = free_port()
    p = start_proxy(config=f'control = "127.0.0.1:{cport}"\ncontrol_token = "t0ken"\n'
                           '[proxy]\nbind = "127.0.0.1:{port}"\n')
    p.wait_log(" started (pid")  # the control port too is bound (the proxy's may answer first)
    assert control(cport, "GET", "/status")[0] == 401
    assert control(cport, "GET", "/status", token="wrong")[0] == 401
    assert control(cport, "GET", "/status", token="t0ken")[0] == 200
    assert p.popen.poll() is None


def test_a_request_dribbled_in_is_cut_at_its_deadline(start_proxy):
    """From the attacker's side: a control request sent a byte at a time, each well within the
    idle timer, is cut once REQUEST_TIMEOUT (10 s) from the connection's start has passed,
    logged; the API answers others meanwhile and after."""
    import socket
    import time

    cport = free_port()
    p = start_proxy(config=f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{{port}}"\n')
    p.wait_log(" started (pid")
    with socket.create_connection(("127.0.0.1", cport), timeout=15) as s:
        started = time.monotonic()
        s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        cut = None
        while time.monotonic() - started < 20:
            try:
                s.sendall(b"a")
                s.settimeout(0.5)
                if s.recv(1024) == b"":
                    cut = time.monotonic() - started
                    break
            except socket.timeout:
                if control(cport, "GET", "/status")[0] != 200:  # (meanwhile: served)
                    raise AssertionError("the control API stopped answering")
            except OSError:
                cut = time.monotonic() - started
                break
    assert cut is not None and 9 < cut < 14, cut
    p.wait_log("control API: 127.0.0.1 cut: request not complete within 10s")
    assert control(cport, "GET", "/status")[0] == 200


def test_commands_status_reload_stop(start_proxy, tmp_path):
    cport = free_port()
    conf = tmp_path / "c.toml"
    conf.write_text(f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{free_port()}"\n')
    p = start_proxy("-c", str(conf), bind=False, wait=False)
    from conftest import wait_port

    wait_port(cport)

    def cmd(*args):
        return subprocess.run([sys.executable, SERVER, *args, "-c", str(conf)], capture_output=True, text=True,
                              timeout=30)

    r = cmd("status")
    assert r.returncode == 0 and "KIND" in r.stdout and "proxy" in r.stdout and "control" in r.stdout, r.stderr
    r = cmd("reload")
    assert r.returncode == 0 and "reloaded:" in r.stdout
    r = cmd("stop")
    assert r.returncode == 0 and "stopping" in r.stdout
    assert p.popen.wait(timeout=15) == 0
    r = cmd("status")
    assert r.returncode == 1 and "cannot reach the control API" in r.stderr


def test_non_loopback_control_needs_a_token(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('control = "0.0.0.0:8837"\n')
    r = subprocess.run([sys.executable, SERVER, "--check", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "control: 0.0.0.0:8837 is reachable from other hosts: set control_token" in r.stderr


def test_upstream_server_metrics_and_the_grafana_dashboard(start_proxy, origin, origin_b):
    """Per upstream server: requests, failures, connect and first-byte histograms; then every
    query of conf/grafana/wmproxy.json is checked against this live scrape: each metric it names
    is exported, and each label it groups by is on that metric."""
    import re

    cport, hport, sport, dead = free_port(), free_port(), free_port(), free_port()
    p = start_proxy(config=f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{{port}}"\n'
                           # a [stream] upstream of the same name: its own series (kind="stream")
                           f'[[stream.upstream]]\nname = "app"\nserver = [{{ addr = "127.0.0.1:{dead}" }}, '
                           f'{{ addr = "127.0.0.1:{origin.port}" }}]\n'
                           f'[[stream.server]]\nbind = "127.0.0.1:{sport}"\nup_name = "app"\n'
                           f'[[http.upstream]]\nname = "app"\nserver = [{{ addr = "127.0.0.1:{origin.port}" }}, '
                           f'{{ addr = "127.0.0.1:{origin_b.port}" }}, {{ addr = "127.0.0.1:{dead}", max_fails = 1 }}]\n'
                           f'[[http.server]]\nbind = "127.0.0.1:{hport}"\n'
                           '[[http.server.location]]\nrule = "/"\nproxy_url = "http://app"\n')
    p.wait_log(" started (pid")
    for _ in range(6):
        assert curl(f"http://127.0.0.1:{hport}/whoami").stdout in (b"origin-A", b"origin-B")
    for _ in range(2):
        assert curl(f"http://127.0.0.1:{sport}/whoami").stdout == b"origin-A"
    status, body = control(cport, "GET", "/status")
    rows = json.loads(body)["upstreams"]
    streamed = {u["server"]: u for u in rows if u["kind"] == "stream"}
    assert streamed[f"127.0.0.1:{origin.port}"]["requests"] == 2
    assert streamed[f"127.0.0.1:{origin.port}"]["connect_seconds"]["count"] == 2
    assert streamed[f"127.0.0.1:{dead}"]["failures"] == streamed[f"127.0.0.1:{dead}"]["requests"] >= 1
    ups = {u["server"]: u for u in rows if u["kind"] == "http"}
    a, b, d = ups[f"127.0.0.1:{origin.port}"], ups[f"127.0.0.1:{origin_b.port}"], ups[f"127.0.0.1:{dead}"]
    assert a["requests"] + b["requests"] == 6 and a["failures"] == b["failures"] == 0
    assert d["failures"] == 1 and not d["up"] and d["requests"] == 0  # refused: out after max_fails = 1
    assert a["first_byte_seconds"]["count"] == a["requests"] and a["connect_seconds"]["count"] >= 1

    text = control(cport, "GET", "/metrics")[1].decode()
    m = samples(text)
    labels = frozenset({"kind": "http", "upstream": "app", "server": f"127.0.0.1:{dead}"}.items())
    assert m[("wmproxy_upstream_failures_total", labels)] == 1 and m[("wmproxy_upstream_up", labels)] == 0
    web = frozenset({"kind": "http", "bind": f"127.0.0.1:{hport}"}.items())
    assert m[("wmproxy_http_request_duration_seconds_count", web)] == 6

    series = {}  # sample name -> the label names it carries
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            series.setdefault(s.name, set()).update(s.labels)
    dashboard = json.loads((ROOT / "conf" / "grafana" / "wmproxy.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        names = re.findall(r"\b((?:wmproxy|process)_[a-z_]+)\b", expr)
        assert names, expr
        for name in names:
            assert name in series, f"{name} (in {expr!r}) is not exported"
            for group in re.findall(r"by \(([^)]*)\)", expr):
                for label in (x.strip() for x in group.split(",")):
                    assert label == "le" or label in series[name], f"{name} has no label {label!r}"
