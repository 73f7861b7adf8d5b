"""Running as a service: the LSB init script for real, daemon mode, pid file, log reopening."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, curl, free_port, http_get, wait_port

SERVER = str(ROOT / "bin" / "wmproxy-server")
INIT = str(ROOT / "conf" / "init.d" / "wmproxy-server")


def init(action: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([INIT, action], capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def read_pid(path) -> int:
    return int(open(path).read().strip())


def test_init_script_start_status_reload_restart_stop(tmp_path, origin):
    proxy, stream = free_port(), free_port()
    conf = tmp_path / "server.toml"
    conf.write_text(f'grace = "2s"\n[proxy]\nbind = "127.0.0.1:{proxy}"\n')
    env = {"DAEMON": SERVER, "CONFIG": str(conf), "PIDFILE": str(tmp_path / "run" / "wm.pid"),
           "LOGFILE": str(tmp_path / "log" / "wm.log"), "DEFAULTS": str(tmp_path / "none"), "STOP_TIMEOUT": "20"}
    try:
        r = init("start", env)
        assert r.returncode == 0 and "started" in r.stdout, r.stdout + r.stderr
        pid = read_pid(env["PIDFILE"])
        assert init("status", env).returncode == 0
        assert http_get(proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
        assert init("start", env).stdout.startswith("wmproxy-server is already running")

        conf.write_text(conf.read_text() + f'[[stream.upstream]]\nname = "o"\n'
                        f'server = [{{ addr = "127.0.0.1:{origin.port}" }}]\n'
                        f'[[stream.server]]\nbind = "127.0.0.1:{stream}"\nup_name = "o"\n')
        r = init("reload", env)
        assert r.returncode == 0, r.stdout
        wait_port(stream)  # the reload added a listener, same process
        assert read_pid(env["PIDFILE"]) == pid

        conf.write_text(conf.read_text() + "nonsense = true\n")
        r = init("reload", env)
        assert r.returncode == 1 and "configuration invalid" in r.stdout
        conf.write_text(conf.read_text().replace("nonsense = true\n", ""))

        r = init("restart", env)
        assert r.returncode == 0, r.stdout
        new_pid = read_pid(env["PIDFILE"])
        assert new_pid != pid
        wait_port(stream)

        r = init("stop", env)
        assert r.returncode == 0 and "stopped" in r.stdout
        assert not os.path.exists(env["PIDFILE"])
        assert init("status", env).returncode == 3
        assert init("stop", env).returncode == 0
        log = open(env["LOGFILE"]).read()
        assert "reloaded" in log and "stopped" in log
    finally:
        if os.path.exists(env["PIDFILE"]):
            os.kill(read_pid(env["PIDFILE"]), signal.SIGKILL)


def test_daemon_reports_a_failed_start(tmp_path):
    taken = free_port()
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", taken))
    s.listen(1)
    r = subprocess.run([SERVER, "--daemon", "--bind", f"127.0.0.1:{taken}", "--log-file", str(tmp_path / "l.log")],
                       capture_output=True, text=True, timeout=30)
    s.close()
    assert r.returncode == 1 and "Address already in use" in r.stderr


def test_pidfile_refuses_a_second_start_and_is_removed(start_proxy, tmp_path):
    pidfile = tmp_path / "wm.pid"
    p = start_proxy("--pidfile", str(pidfile))
    deadline = time.monotonic() + 5
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_pid(pidfile) == p.popen.pid
    r = subprocess.run([sys.executable, SERVER, "--bind", f"127.0.0.1:{free_port()}", "--pidfile", str(pidfile)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and f"names process {p.popen.pid}, which is running" in r.stderr
    assert p.stop() == 0
    assert not pidfile.exists()


def test_sigusr1_reopens_the_log_file(start_proxy, tmp_path, origin):
    log = tmp_path / "wm.log"
    p = start_proxy("--log-file", str(log))
    http_get(p.port, f"http://127.0.0.1:{origin.port}/whoami")
    rotated = tmp_path / "wm.log.1"
    deadline = time.monotonic() + 5
    while "whoami" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log.rename(rotated)
    p.popen.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    r = curl("-x", p.url, f"http://127.0.0.1:{origin.port}/hello")
    assert r.stdout == b"hello from origin-A"
    deadline = time.monotonic() + 5
    while "/hello" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "/hello" in log.read_text() and "log file reopened" in log.read_text()
    assert "whoami" in rotated.read_text() and "/hello" not in rotated.read_text()
