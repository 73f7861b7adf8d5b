"""Log formats as their readers take them: JSON lines, the journal's stream (no time of our own,
a syslog priority), and the NCSA combined access log read by goaccess."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, curl, free_port, wait_port

SERVER = str(ROOT / "bin" / "wmproxy-server")


def run_server(tmp_path, *args: str, env: dict | None = None, stderr=None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    p = subprocess.Popen([sys.executable, SERVER, "--bind", f"127.0.0.1:{port}", *args],
                         stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL, env={**os.environ, **(env or {})})
    wait_port(port, proc=p)
    return p, port


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    p.wait(timeout=15)


def test_json_lines_with_access_fields(tmp_path, origin):
    log = tmp_path / "wm.log"
    p, port = run_server(tmp_path, "--log-format", "json", "--log-file", str(log))
    try:
        r = curl("-x", f"127.0.0.1:{port}", "-H", "Referer: http://a/\"x", "-A", "A" * 5000,
                 f"http://127.0.0.1:{origin.port}/whoami")
        assert r.stdout == b"origin-A"
    finally:
        stop(p)
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every line is one object
    assert any(x["logger"] == "wmproxy" and "started" in x["message"] for x in lines)
    (access,) = [x for x in lines if x["logger"] == "wmproxy.access"]
    assert access["status"] == 200 and access["bytes"] == len(b"origin-A") and access["client_ip"] == "127.0.0.1"
    assert access["method"] == "GET" and access["target"] == f"http://127.0.0.1:{origin.port}/whoami"
    assert access["referer"] == 'http://a/"x' and access["user_agent"] == "A" * 300  # a stranger's header: bounded
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}", access["time"])


def test_under_the_journal_lines_carry_a_priority_and_no_time(tmp_path, origin):
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        st = os.fstat(f.fileno())
        p, port = run_server(tmp_path, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stderr=f)
        try:
            curl("-x", f"127.0.0.1:{port}", "http://127.0.0.1:1/")  # a 502: its access line
        finally:
            stop(p)
    lines = err.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) wmproxy", x) for x in lines), lines
    assert any(x.startswith("<6>INFO wmproxy: wmproxy-server") for x in lines)
    # elsewhere (JOURNAL_STREAM inherited, but stderr is not the journal): the usual time stamps
    other = tmp_path / "other"
    with open(other, "wb") as f:
        p, _ = run_server(tmp_path, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stderr=f)
        stop(p)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", other.read_text())


COMBINED = re.compile(r'^(\S+) - (\S+) \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "([A-Z]+) (\S+) (HTTP/1\.[01])" '
                      r'(\d{3}) (\d+) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$')


@pytest.mark.skipif(not shutil.which("goaccess"), reason="goaccess is installed by make test")
def test_combined_access_log_file_is_read_by_goaccess_with_the_bytes_sent(tmp_path, origin):
    access = tmp_path / "access.log"
    p, port = run_server(tmp_path, "--access-log-file", str(access), "--access-log-format", "combined",
                         "--log-file", str(tmp_path / "main.log"), "--user", "bob", env={"WMPROXY_PASSWORD": "pw"})
    sizes = []
    try:
        for path in ("/whoami", "/hello", "/whoami"):
            r = curl("-x", f"http://bob:pw@127.0.0.1:{port}", f"http://127.0.0.1:{origin.port}{path}")
            sizes.append(len(r.stdout))
        r = curl("-x", f"http://bob:pw@127.0.0.1:{port}", "http://127.0.0.1:1/")  # 502 with a body
        assert r.stdout.startswith(b"wmproxy: connect to 127.0.0.1:1")
        sizes.append(len(r.stdout))
        r = curl("-x", f"127.0.0.1:{port}", "-A", 'agent "quoted"', f"http://127.0.0.1:{origin.port}/")  # 407
        assert b"proxy authentication required" in r.stdout
        sizes.append(len(r.stdout))
    finally:
        stop(p)
    lines = access.read_text().splitlines()
    assert len(lines) == 5
    parsed = [COMBINED.match(line) for line in lines]
    assert all(parsed), lines  # bare lines: no time stamp or level of the main log before them
    assert [int(m.group(7)) for m in parsed] == [200, 200, 200, 502, 407]
    assert [int(m.group(8)) for m in parsed] == sizes  # the body bytes sent, for our own answers too
    assert [m.group(2) for m in parsed] == ["bob"] * 4 + ["-"]
    assert "wmproxy.access" not in (tmp_path / "main.log").read_text()

    report = tmp_path / "report.json"
    r = subprocess.run(["goaccess", str(access), "--log-format=COMBINED", "--no-global-config", "-o", str(report)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    general = json.loads(report.read_text())["general"]
    assert general["total_requests"] == 5 and general["valid_requests"] == 5 and general["failed_requests"] == 0
    assert general["bandwidth"] == sum(sizes)


def test_a_reload_applies_new_log_settings(tmp_path, origin):
    port = free_port()
    log, access = tmp_path / "wm.log", tmp_path / "access.log"
    conf = tmp_path / "s.toml"
    conf.write_text(f'log_file = "{log}"\n[proxy]\nbind = "127.0.0.1:{port}"\n')
    p = subprocess.Popen([sys.executable, SERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=p)
        deadline = time.monotonic() + 10
        while " started (pid" not in log.read_text():  # the SIGHUP handler is in place from then on
            assert time.monotonic() < deadline
            time.sleep(0.05)
        conf.write_text(f'log_file = "{log}"\nlog_format = "json"\naccess_log_file = "{access}"\n'
                        f'[proxy]\nbind = "127.0.0.1:{port}"\n')
        p.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not access.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert curl("-x", f"127.0.0.1:{port}", f"http://127.0.0.1:{origin.port}/whoami").stdout == b"origin-A"
    finally:
        stop(p)
    assert json.loads(access.read_text().splitlines()[0])["status"] == 200
    assert json.loads(log.read_text().splitlines()[-1])["message"] == "stopped"
