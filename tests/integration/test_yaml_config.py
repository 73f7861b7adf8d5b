"""Configuration files in YAML (PyYAML's safe loader): read into the same typed config as TOML,
with the same errors (file, key path, what is accepted)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, curl, free_port, wait_port
from wmproxy import config
from wmproxy.errors import ConfigError

SERVER = str(ROOT / "bin" / "wmproxy-server")

TOML = """
log_level = "info"
[proxy]
bind = "127.0.0.1:{port}"
allow = ["127.0.0.0/8"]
flag = ["http", "socks5"]
idle_timeout = "2min"
[[http.server]]
bind = "127.0.0.1:{web}"
server_name = ["a.test"]
headers = ["X-Served-By wmproxy"]
[[http.server.location]]
rule = "/"
static_response = "hello {{client_ip}}"
"""

YAML = """
log_level: info
proxy:
  bind: "127.0.0.1:{port}"
  allow: [127.0.0.0/8]
  flag: [http, socks5]
  idle_timeout: 2min
http:
  server:
    - bind: "127.0.0.1:{web}"
      server_name: [a.test]
      headers: ["X-Served-By wmproxy"]
      location:
        - rule: /
          static_response: "hello {{client_ip}}"
"""


def test_a_yaml_file_reads_as_its_toml_twin(tmp_path):
    (tmp_path / "c.toml").write_text(TOML.format(port=8090, web=8091))
    (tmp_path / "c.yaml").write_text(YAML.format(port=8090, web=8091))
    assert config.load(str(tmp_path / "c.yaml")) == config.load(str(tmp_path / "c.toml"))


@pytest.mark.parametrize("text,says", [
    ("proxy:\n  bind: [unclosed\n", "not valid YAML (line 3, column 1): expected ',' or ']'"),
    ("proxy:\n  alow: [10.0.0.0/8]\n", "proxy.alow: unknown key 'alow'; did you mean 'allow'?"),
    ("proxy:\n  allow: [nope]\n", "proxy.allow[0]: expected an IP address or CIDR"),
    ("- a\n- b\n", "expected a mapping of keys at the top, got a list"),
    ("proxy:\n  1: x\n", "proxy.1: a key must be a name"),
    ("proxy: !!python/object/apply:os.system [echo owned]\n", "not valid YAML"),  # the safe loader builds nothing
])
def test_yaml_errors_name_the_file_and_the_key(tmp_path, text, says):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert says in str(e.value) and str(path) in str(e.value), str(e.value)


def test_the_server_runs_on_a_yaml_config(origin, tmp_path):
    port, web = free_port(), free_port()
    path = tmp_path / "server.yaml"
    path.write_text(YAML.format(port=port, web=web))
    r = subprocess.run([sys.executable, SERVER, "--check", "-c", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "configuration OK" in r.stdout + r.stderr, r.stderr
    proc = subprocess.Popen([sys.executable, SERVER, "-c", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc=proc)
        wait_port(web, proc=proc)
        assert curl("-s", "-x", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{origin.port}/whoami").stdout == \
            b"origin-A"
        assert curl("-s", "-H", "Host: a.test", f"http://127.0.0.1:{web}/").stdout == b"hello 127.0.0.1"
    finally:
        proc.terminate()
        proc.wait(10)
