"""Running as a service: the LSB init script for real, daemon mode, pid file, log reopening."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, curl, free_port, http_get, wait_port

SERVER = str(ROOT / "bin" / "wmproxy-server")
INIT = str(ROOT / "conf" / "init.d" / "wmproxy-server")


def init(action: str, env: dict, script: str = INIT) -> subprocess.CompletedProcess:
    return subprocess.run([script, action], capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def lsb_header(path: Path) -> dict:
    text = path.read_text()
    block = text[text.index("### BEGIN INIT INFO"):text.index("### END INIT INFO")]
    return dict((k.strip("# ").strip(), v.strip()) for k, v in (line.split(":", 1) for line in block.splitlines()[1:]))


def test_each_init_script_provides_its_own_program():
    """insserv refuses two scripts that provide one name; each names its program and config."""
    headers = {p.name: lsb_header(p) for p in (ROOT / "conf" / "init.d").iterdir()}
    assert set(headers) == {"wmproxy-server", "wmproxy-client"}
    for name, h in headers.items():
        assert h["Provides"] == name
        assert h["Required-Start"] and h["Default-Start"] == "2 3 4 5" and h["Default-Stop"] == "0 1 6"
        text = (ROOT / "conf" / "init.d" / name).read_text()
        assert f"NAME={name}\n" in text and f"/etc/wmproxy/{name.split('-')[1]}.toml" in text
        assert ". /lib/lsb/init-functions" in text


def read_pid(path) -> int:
    return int(open(path).read().strip())


@pytest.mark.parametrize("workers", [1, 2])
def test_init_script_start_status_reload_restart_stop(tmp_path, origin, workers):
    proxy, stream = free_port(), free_port()
    conf = tmp_path / "server.toml"
    conf.write_text(f'grace = "2s"\nworkers = {workers}\n[proxy]\nbind = "127.0.0.1:{proxy}"\n')
    env = {"DAEMON": SERVER, "CONFIG": str(conf), "PIDFILE": str(tmp_path / "run" / "wm.pid"),
           "LOGFILE": str(tmp_path / "log" / "wm.log"), "DEFAULTS": str(tmp_path / "none"), "STOP_TIMEOUT": "20",
           "RUN_USER": ""}
    try:
        r = init("start", env)
        assert r.returncode == 0 and "Starting wmproxy server" in r.stdout, r.stdout + r.stderr
        pid = read_pid(env["PIDFILE"])
        assert init("status", env).returncode == 0
        assert http_get(proxy, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
        assert "wmproxy-server is already running" in init("start", env).stdout

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

        tree = [new_pid, *(c.pid for c in psutil.Process(new_pid).children())]
        assert len(tree) == (1 if workers == 1 else 1 + workers)
        r = init("stop", env)
        assert r.returncode == 0 and "Stopping wmproxy server" in r.stdout
        assert not os.path.exists(env["PIDFILE"]) and not any(psutil.pid_exists(pid) for pid in tree)
        assert init("status", env).returncode == 3
        assert init("stop", env).returncode == 0
        log = open(env["LOGFILE"]).read()
        assert "reloaded" in log and "stopped" in log
    finally:
        if os.path.exists(env["PIDFILE"]):
            os.kill(read_pid(env["PIDFILE"]), signal.SIGKILL)


def test_daemon_reports_a_failed_start(tmp_path):
    taken = free_port()
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


# -- dropping root --------------------------------------------------------------------------


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _ids(pid: int) -> dict:
    lines = open(f"/proc/{pid}/status").read().splitlines()
    return {k: v.split() for k, v in (line.split(":", 1) for line in lines) if k in ("Uid", "Gid", "Groups")}


@pytest.fixture
def shared_dir():
    """A directory user nobody can read (pytest's tmp_path is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="wm-user-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give it up")
def test_binds_as_root_then_serves_as_the_user(start_proxy, shared_dir, origin):
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    conf = shared_dir / "server.toml"
    conf.write_text(f'user = "nobody"\n[proxy]\nbind = "127.0.0.1:{port}"\n')
    conf.chmod(0o644)
    log = shared_dir / "wm.log"
    p = start_proxy("-c", str(conf), "--log-file", str(log), bind=False, wait=False)
    wait_port(port, proc=p.popen)
    wait_for(lambda: "started" in log.read_text())
    ids = _ids(p.popen.pid)
    assert ids["Uid"] == [str(nobody.pw_uid)] * 4 and ids["Gid"] == [str(nobody.pw_gid)] * 4
    assert "0" not in ids["Groups"]  # root's supplementary groups are gone too
    assert http_get(port, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    assert os.stat(log).st_uid == nobody.pw_uid  # so that SIGUSR1 after logrotate can reopen it
    p.popen.send_signal(signal.SIGHUP)  # the user reads the config: reload works
    wait_for(lambda: "reloaded" in log.read_text())
    conf.write_text(conf.read_text().replace('user = "nobody"', 'user = "root"'))
    p.popen.send_signal(signal.SIGHUP)
    wait_for(lambda: "user and group take effect at start" in log.read_text())
    assert p.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give it up")
def test_refuses_to_serve_as_a_user_who_cannot_read_the_config(tmp_path):
    port = free_port()
    conf = tmp_path / "server.toml"  # in root's private tmp_path
    conf.write_text(f'user = "nobody"\n[proxy]\nbind = "127.0.0.1:{port}"\n')
    r = subprocess.run([sys.executable, SERVER, "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"{conf}: user: the configuration file is not readable by user nobody" in r.stderr
    assert "chgrp nogroup" in r.stderr or "chgrp nobody" in r.stderr


def test_user_errors_are_clear(tmp_path):
    r = subprocess.run([sys.executable, SERVER, "--run-user", "no-such-user-here", "--bind", f"127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "user 'no-such-user-here' does not exist (create it: useradd --system" in r.stderr
    r = subprocess.run([sys.executable, SERVER, "--check", "--run-group", "nogroup"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "group: group is used with user: set user too" in r.stderr


# -- systemd's notify protocol ----------------------------------------------------------------


@pytest.mark.parametrize("abstract,workers", [(False, 1), (True, 1), (False, 2)])
def test_sd_notify_ready_reloading_stopping(start_proxy, tmp_path, abstract, workers):
    """What systemd's Type=notify (and notify-reload) reads: READY=1 once the listeners are bound,
    RELOADING=1 with MONOTONIC_USEC then READY=1 around each reload, STOPPING=1 on stop."""
    name = f"@wm-notify-{os.getpid()}" if abstract else str(tmp_path / "notify.sock")
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listen.bind("\0" + name[1:] if abstract else name)
    listen.settimeout(10)
    port = free_port()
    conf = tmp_path / "server.toml"
    conf.write_text(f'workers = {workers}\n[proxy]\nbind = "127.0.0.1:{port}"\n')
    p = start_proxy("-c", str(conf), env={"NOTIFY_SOCKET": name}, bind=False, wait=False)

    def message() -> dict:
        return dict(line.split("=", 1) for line in listen.recv(4096).decode().splitlines())

    ready = message()
    assert ready["READY"] == "1" and ready["MAINPID"] == str(p.popen.pid)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # READY came after the bind
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    p.popen.send_signal(signal.SIGHUP)
    reloading = message()
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) >= before
    assert message()["READY"] == "1"
    p.popen.send_signal(signal.SIGTERM)
    assert message()["STOPPING"] == "1"
    assert p.popen.wait(timeout=15) == 0
    listen.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give it up")
@pytest.mark.parametrize("workers", [1, 2])
def test_init_script_runs_the_daemon_as_run_user(shared_dir, origin, workers):
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    conf = shared_dir / "client.toml"
    conf.write_text(f'workers = {workers}\n[proxy]\nbind = "127.0.0.1:{port}"\n')
    conf.chmod(0o644)
    env = {"DAEMON": str(ROOT / "bin" / "wmproxy-client"), "CONFIG": str(conf), "RUN_USER": "nobody",
           "PIDFILE": str(shared_dir / "run" / "c.pid"), "LOGFILE": str(shared_dir / "log" / "c.log"),
           "DEFAULTS": str(shared_dir / "none")}
    script = str(ROOT / "conf" / "init.d" / "wmproxy-client")
    try:
        r = init("start", env, script)
        assert r.returncode == 0 and "Starting wmproxy client" in r.stdout, r.stdout + r.stderr
        pid = read_pid(env["PIDFILE"])
        tree = [pid, *(c.pid for c in psutil.Process(pid).children())]
        assert len(tree) == workers + (workers > 1)
        for each in tree:  # the master gave up root before it started the workers
            assert _ids(each)["Uid"] == [str(nobody.pw_uid)] * 4
        assert http_get(port, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
        assert os.stat(shared_dir / "run").st_uid == nobody.pw_uid  # the daemon removes its own pid file
        assert init("stop", env, script).returncode == 0
        assert not os.path.exists(env["PIDFILE"]) and not any(psutil.pid_exists(each) for each in tree)
        assert "switched to user nobody" in (shared_dir / "log" / "c.log").read_text()
    finally:
        if os.path.exists(env["PIDFILE"]):
            os.kill(read_pid(env["PIDFILE"]), signal.SIGKILL)


# -- the systemd units --------------------------------------------------------------------------


def unit(name: str) -> dict:
    """The [Service] keys of a unit file (repeated keys as lists)."""
    out: dict = {}
    section = ""
    for line in (ROOT / "conf" / "systemd" / name).read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(f"{section}.{k}", []).append(v)
    return out


@pytest.mark.parametrize("program", ["wmproxy-server", "wmproxy-client"])
def test_systemd_unit_is_sandboxed_and_runs_its_program(program):
    path = ROOT / "conf" / "systemd" / f"{program}.service"
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
                       capture_output=True, text=True, timeout=60)
    line = [x for x in r.stdout.splitlines() if "Overall exposure level" in x]
    assert line, r.stdout + r.stderr
    exposure = float(line[0].split(":")[1].split()[0])
    assert exposure <= 3.0, r.stdout
    u = unit(f"{program}.service")
    assert u["Service.Type"] == ["notify"] and u["Service.User"] == ["wmproxy"]
    assert "Service.DynamicUser" not in u  # it could not read the 0640 root:wmproxy config
    conf = f"/etc/wmproxy/{program.split('-')[1]}.toml"
    assert u["Service.ExecStart"] == [f"/usr/local/bin/{program} -c {conf}"]
    assert u["Service.ExecStartPre"] == [f"/usr/local/bin/{program} --check -c {conf}"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
@pytest.mark.xdist_group("port-80")  # (one xdist worker runs every test that binds port 80)
def test_as_the_unit_runs_it_a_user_with_only_net_bind_service_binds_port_80(shared_dir, origin):
    """What the unit gives the process (User=, AmbientCapabilities=CAP_NET_BIND_SERVICE,
    NoNewPrivileges=) reproduced with setpriv: it serves on a port below 1024 without root."""
    conf = shared_dir / "server.toml"
    conf.write_text('[proxy]\nbind = "127.0.0.1:80"\n')
    conf.chmod(0o644)
    try:
        socket.create_connection(("127.0.0.1", 80), timeout=0.5).close()
        pytest.skip("something listens on port 80 here")
    except OSError:
        pass
    p = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=+net_bind_service",
                          "--ambient-caps=+net_bind_service", "--bounding-set=-all,+net_bind_service",
                          "--no-new-privs", sys.executable, SERVER, "-c", str(conf)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HOME": "/"})
    try:
        wait_port(80, proc=p)
        assert _ids(p.pid)["Uid"] == [str(pwd.getpwnam("nobody").pw_uid)] * 4
        assert http_get(80, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    finally:
        p.terminate()
        _, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
