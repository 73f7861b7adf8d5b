"""Packaging as a packager meets it: the sdist carries what building and testing need, the wheel
built from that sdist installs into a clean venv (no network, dependencies from the wheelhouse
`make test` downloads), and its console scripts serve."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT, free_port, http_get, wait_port

WHEELHOUSE = ROOT / ".venv" / "wheelhouse"

pytestmark = [pytest.mark.skipif(not (WHEELHOUSE / ".done").exists(),
                                 reason="no wheelhouse: run the tests with 'make test', which downloads it"),
              pytest.mark.xdist_group("builds-the-checkout")]  # (with test_install: one xdist worker runs both)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The sdist, and the wheel built from it (not from the checkout), with the tests' venv's
    setuptools and build (offline)."""
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "-o", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_the_sdist_carries_configs_docs_tests_and_the_c_source(built):
    (sdist,) = built.glob("wmproxy-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for wanted in ("LICENSE", "pyproject.toml", "setup.py", "Makefile", "wmproxy/prot/_speedups.c",
                   "conf/server.toml", "conf/systemd/wmproxy-server.service", "conf/init.d/wmproxy-client",
                   "docs/SECURITY.md", "tests/integration/conftest.py", "bin/wmproxy-server"):
        assert wanted in names, wanted
    assert not any("__pycache__" in n or n.endswith(".so") for n in names)


def test_the_wheel_installs_into_a_clean_venv_and_its_commands_serve(built, tmp_path, origin):
    (wheel,) = built.glob("wmproxy-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import wmproxy.prot._speedups, wmproxy, importlib.resources; "
                            "assert b'<title>wmproxy</title>' in importlib.resources.files('wmproxy.dashboard')"
                            ".joinpath('index.html').read_bytes(); print(wmproxy.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert where.stdout.startswith(str(venv)), where  # the installed copy, with its C speedups
    for program in ("wmproxy-server", "wmproxy-client", "wmproxy"):
        r = subprocess.run([str(venv / "bin" / program), "--version"], capture_output=True, text=True, env=env)
        assert r.stdout.strip().startswith(program), r
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "wmproxy", "--version"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.stdout.startswith("wmproxy-server"), r

    port = free_port()
    server = subprocess.Popen([str(venv / "bin" / "wmproxy-server"), "--bind", f"127.0.0.1:{port}"], cwd="/",
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc=server)
        assert http_get(port, f"http://127.0.0.1:{origin.port}/whoami")[1] == b"origin-A"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=15)
    assert server.returncode == 0 and b"started" in err
