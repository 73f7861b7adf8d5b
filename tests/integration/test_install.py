"""`make install` (into a DESTDIR, offline from the wheelhouse) and the logrotate file with the
real logrotate."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time

import pytest

from conftest import ROOT, curl, free_port, wait_port

WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
# (builds in the checkout, as test_packaging does: one xdist worker runs both, one after the other)
pytestmark = pytest.mark.xdist_group("builds-the-checkout")


@pytest.mark.skipif(not (WHEELHOUSE / ".done").exists(), reason="no wheelhouse: run the tests with 'make test'")
def test_make_install_lays_out_programs_services_and_private_configs(tmp_path):
    dest = tmp_path / "root"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE)}
    r = subprocess.run(["make", "-C", str(ROOT), "install", f"DESTDIR={dest}", "PREFIX=/opt/wmproxy"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for program in ("wmproxy-server", "wmproxy-client"):
        assert os.readlink(dest / "usr/local/bin" / program) == f"/opt/wmproxy/bin/{program}"
        assert (dest / "etc/init.d" / program).read_text() == (ROOT / "conf/init.d" / program).read_text()
        assert os.access(dest / "etc/init.d" / program, os.X_OK)
        assert (dest / "etc/systemd/system" / f"{program}.service").exists()
    assert (dest / "etc/logrotate.d/wmproxy").exists()
    for name in ("server", "client"):
        conf = dest / "etc/wmproxy" / f"{name}.toml"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o640  # passwords and tokens are not for everyone
    bin_dir = dest / "opt/wmproxy/bin"
    r = subprocess.run([str(bin_dir / "wmproxy-server"), "--check", "-c", str(dest / "etc/wmproxy/server.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "configuration OK" in r.stdout, r.stdout + r.stderr
    # the client is not ready until its operator has named the center server's CA: it says so
    r = subprocess.run([str(bin_dir / "wmproxy-client"), "--check", "-c", str(dest / "etc/wmproxy/client.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "center.ca: cannot read /etc/wmproxy/certs/ca.pem" in r.stderr, r.stderr
    for page in ("man1/wmproxy-server.1", "man1/wmproxy-client.1"):
        assert (dest / "usr/local/share/man" / page).exists()
    assert (dest / "usr/local/share/bash-completion/completions/wmproxy-client").exists()
    assert (dest / "usr/local/share/zsh/site-functions/_wmproxy-server").exists()
    # a second install keeps the operator's edited configs
    (dest / "etc/wmproxy/server.toml").write_text("# mine\n[proxy]\n")
    r = subprocess.run(["make", "-C", str(ROOT), "install", f"DESTDIR={dest}", "PREFIX=/opt/wmproxy"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and (dest / "etc/wmproxy/server.toml").read_text() == "# mine\n[proxy]\n"


def test_logrotate_rotates_and_the_running_proxy_writes_to_the_new_file(tmp_path, origin):
    """conf/logrotate/wmproxy run by logrotate itself, its paths moved into tmp_path."""
    logs, run = tmp_path / "log", tmp_path / "run"
    logs.mkdir()
    run.mkdir()
    rules = (ROOT / "conf/logrotate/wmproxy").read_text()
    rules = rules.replace("/var/log/wmproxy", str(logs)).replace("/run/wmproxy", str(run))
    (tmp_path / "rules").write_text(rules)
    port = free_port()
    p = subprocess.Popen([str(ROOT / "bin/wmproxy-server"), "--bind", f"127.0.0.1:{port}", "--log-file",
                          str(logs / "wmproxy-server.log"), "--pidfile", str(run / "wmproxy-server.pid")])
    try:
        wait_port(port, proc=p)
        deadline = time.monotonic() + 10
        while " started (pid" not in (logs / "wmproxy-server.log").read_text():  # SIGUSR1 is handled from then on
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert curl("-x", f"127.0.0.1:{port}", f"http://127.0.0.1:{origin.port}/whoami").stdout == b"origin-A"
        r = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(tmp_path / "rules")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "whoami" in (logs / "wmproxy-server.log.1").read_text()  # delaycompress: .1 stays plain
        deadline = time.monotonic() + 10
        while "log file reopened" not in (logs / "wmproxy-server.log").read_text():
            assert time.monotonic() < deadline, "SIGUSR1 from postrotate did not reopen the log"
            time.sleep(0.05)
        assert curl("-x", f"127.0.0.1:{port}", f"http://127.0.0.1:{origin.port}/hello").returncode == 0
        deadline = time.monotonic() + 10
        while "/hello" not in (logs / "wmproxy-server.log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "/hello" not in (logs / "wmproxy-server.log.1").read_text()
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=15)
