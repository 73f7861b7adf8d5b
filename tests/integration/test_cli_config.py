"""The command line, the three configuration layers, --check and the example configs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT, curl, free_port, write_cert

SERVER = str(ROOT / "bin" / "wmproxy-server")
CLIENT = str(ROOT / "bin" / "wmproxy-client")


def check(*args: str, env: dict | None = None, prog: str = SERVER) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, prog, "--check", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("prog,conf", [(SERVER, "conf/server.toml"), (CLIENT, "conf/client.toml"),
                                       (SERVER, "conf/center-server.toml"), (CLIENT, "conf/center-client.toml"),
                                       (SERVER, "conf/web.toml"), (SERVER, "conf/stream.toml")])
def test_example_configs_pass_check(prog, conf, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()  # the examples name certificates under /etc/wmproxy/certs: put real ones here instead
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_cert(ca, tmp_path, "server", "proxy.example.com")
    text = (ROOT / conf).read_text().replace("/etc/wmproxy/certs", str(tmp_path))
    path = tmp_path / "example.toml"
    path.write_text(text)
    r = check("-c", str(path), prog=prog)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout


def _tables(cls: type, path: str = ""):
    for f in dataclasses.fields(cls):
        inner = f.metadata.get("section") or getattr(f.metadata.get("conv"), "table", None)
        if inner is not None:
            name = f"{path}.{f.name}" if path else f.name
            yield name
            yield from _tables(inner, name)


def _present(data: dict, path: str = ""):
    for k, v in data.items():
        name = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            yield name
            yield from _present(v, name)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            yield name
            for x in v:
                yield from _present(x, name)


def test_example_configs_cover_every_section():
    from wmproxy import config

    shown = set()
    for path in (ROOT / "conf").glob("*.toml"):
        shown |= set(_present(tomllib.loads(path.read_text())))
    assert set(_tables(config.Config)) <= shown, set(_tables(config.Config)) - shown


@pytest.mark.parametrize("toml,expected", [
    ('[proxy]\nallow = ["10.0.0.0/8", "::1", "nope"]\n', "proxy.allow[2]: expected an IP address or CIDR"),
    ('[proxy]\nbnd = "127.0.0.1:1"\n',
     "proxy.bnd: unknown key 'bnd'; did you mean 'bind'? accepted keys: allow, allow_targets, auth_fail_limit,"),
    ('[proxy]\nbind = "127.0.0.1"\n', "proxy.bind: expected an address 'host:port'"),
    ('[proxy]\nbind = 8090\n', "proxy.bind: expected an address 'host:port'"),
    ('[proxy]\nidle_timeout = "soon"\n', "proxy.idle_timeout: expected a duration like"),
    ('[proxy]\nmax_connections = 0\n', "proxy.max_connections: expected a whole number from 1"),
    ('[proxy]\nflag = "http gopher"\n', "proxy.flag: expected one or more of http https socks5 socks4"),
    ('[proxy]\nusername = "u"\n', "proxy.password: username and password go together"),
    ('[proxy]\nbind = "127.0.0.1:1"\nbind_addr = "127.0.0.1:2"\n', "proxy.bind_addr: given twice"),
    ('proxy = 3\n', "proxy: expected a table of keys"),
    ('[stream\n', "not valid TOML"),
    ('colour = "blue"\n', "colour: unknown key"),
    ('[[stream.server]]\nbind = "127.0.0.1:0"\nbind_mode = "tcp2wss"\nup_name = "u"\nws_ca = "/etc/passwd"\n'
     '[[stream.upstream]]\nname = "u"\nserver = [{ addr = "127.0.0.1:9" }]\n',
     "stream.server[0].ws_ca: cannot load CA file /etc/passwd"),
    ('[proxy]\nbind = "127.0.0.1:0"\nproxy_protocol = true\n',
     "proxy.proxy_protocol_from: proxy_protocol = true needs proxy_protocol_from"),
    ('[[stream.upstream]]\nname = "u"\nserver = [{ addr = "127.0.0.1:1" }]\n[[stream.server]]\nbind = "127.0.0.1:0"\n'
     'up_name = "u"\nbind_mode = "udp"\nproxy_protocol = true\nproxy_protocol_from = ["10.0.0.1"]\n',
     "stream.server[0].proxy_protocol: proxy_protocol is read on TCP connections"),
])
def test_config_errors_name_file_and_key_path(tmp_path, toml, expected):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    r = check("-c", str(path))
    assert r.returncode == 1
    assert f"{path}: " in r.stderr
    assert expected in r.stderr, r.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    r = check("-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 1 and "nope.toml: cannot read the file" in r.stderr


def test_flag_and_environment_errors_name_their_origin():
    r = check("--bind", "127.0.0.1:99999")
    assert r.returncode == 1 and "command line --bind: proxy.bind: port '99999'" in r.stderr
    r = check(env={"WMPROXY_ALLOW": "[10.0.0.0/8, bogus]"})
    assert r.returncode == 1 and "environment WMPROXY_ALLOW: proxy.allow[1]" in r.stderr


def test_layers_flag_over_environment_over_file(start_proxy, origin, tmp_path):
    from conftest import free_port

    file_port, env_port = free_port(), free_port()
    p = start_proxy(config=f'[proxy]\nbind = "127.0.0.1:{file_port}"\n', wait=True,
                    env={"WMPROXY_BIND": f"127.0.0.1:{env_port}"})
    # start_proxy adds --bind with its own port: the flag wins over the variable and the file
    r = curl("-x", p.url, f"http://127.0.0.1:{origin.port}/whoami")
    assert r.stdout == b"origin-A"
    log = p.log()
    assert f"listening on 127.0.0.1:{p.port}" in log
    q = start_proxy(config='[proxy]\nbind = "127.0.0.1:{port}"\nusername = "a"\npassword = "b"\n',
                    env={"WMPROXY_PASSWORD": "from-env"})
    r = curl("-x", q.url, "--proxy-user", "a:from-env", f"http://127.0.0.1:{origin.port}/whoami")
    assert r.stdout == b"origin-A", "the environment overrides the file"


def test_bind_conflict_is_a_clear_error(start_proxy):
    p = start_proxy()
    r = subprocess.run([sys.executable, SERVER, "--bind", f"127.0.0.1:{p.port}"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert f"proxy.bind: cannot listen on 127.0.0.1:{p.port}: Address already in use" in r.stderr


def test_missing_certificate_files_name_the_file_and_its_key(tmp_path, ca):
    """--check names the file that is missing and the key that names it (ssl's own error names
    neither: 'cannot read None' before)."""
    write_cert(ca, tmp_path, "site", "site.test")
    path = tmp_path / "c.toml"
    path.write_text(f'[center]\nbind = "127.0.0.1:1"\ncert = "{tmp_path}/site.pem"\nkey = "{tmp_path}/gone.key"\n')
    r = check("-c", str(path))
    assert r.returncode == 1 and f"center.key: cannot read {tmp_path}/gone.key: no such file" in r.stderr, r.stderr
    path.write_text(f'[[http.server]]\nbind = "127.0.0.1:3"\n[[http.server.location]]\nstatic_response = "a"\n'
                    f'[[http.server]]\nbind = "127.0.0.1:1"\nserver_name = "b.test"\ncert = "{tmp_path}/site.pem"\n'
                    f'key = "{tmp_path}/site.key"\n[[http.server.location]]\nstatic_response = "b"\n'
                    f'[[http.server]]\nbind = "127.0.0.1:2"\ncert = "{tmp_path}/nope.pem"\nkey = "{tmp_path}/site.key"\n'
                    f'[[http.server.location]]\nstatic_response = "c"\n')
    r = check("-c", str(path))
    assert r.returncode == 1, r.stderr
    assert f"http.server[2].cert: cannot read {tmp_path}/nope.pem: no such file" in r.stderr, r.stderr


def test_python_dash_m_and_a_closed_pipe(start_proxy, tmp_path):
    """python -m wmproxy is wmproxy-server; 'status | head -1' ends quietly."""
    r = subprocess.run([sys.executable, "-m", "wmproxy", "--check"], capture_output=True, text=True, timeout=30,
                       cwd=str(ROOT))
    assert r.returncode == 0 and "configuration OK" in r.stdout, r.stderr
    from conftest import free_port, wait_port

    cport = free_port()
    p = start_proxy(config=f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{{port}}"\n')
    wait_port(cport)
    conf = next(tmp_path.glob("conf-*.toml"))
    r = subprocess.run(f"{sys.executable} {SERVER} status -c {conf} | head -1", shell=True, capture_output=True,
                       text=True, timeout=30)
    assert r.stdout.strip() and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert p.popen.poll() is None


@pytest.mark.parametrize("toml,expected", [
    ('control = "127.0.0.1:{p}"\n[proxy]\nbind = "127.0.0.1:{p}"\n',
     "control: 127.0.0.1:{p} is also where proxy.bind listens (127.0.0.1:{p})"),
    ('[proxy]\nbind = "0.0.0.0:{p}"\n[[stream.upstream]]\nname = "u"\nserver = [{{ addr = "127.0.0.1:9" }}]\n'
     '[[stream.server]]\nbind = "127.0.0.1:{p}"\nup_name = "u"\n',
     "stream.server[0].bind: 127.0.0.1:{p} is also where proxy.bind listens (0.0.0.0:{p})"),
    ('[proxy]\nbind = "127.0.0.1:{p}"\n[[http.server]]\nbind = "127.0.0.1:{p}"\n[[http.server.location]]\n'
     'static_response = "x"\n', "http.server[0].bind: 127.0.0.1:{p} is also where proxy.bind listens"),
    ('log_level = "info"\n', "this configuration starts nothing"),
])
def test_check_refuses_a_port_taken_twice_and_a_config_that_starts_nothing(tmp_path, toml, expected):
    path = tmp_path / "c.toml"
    path.write_text(toml.format(p=18090))
    r = check("-c", str(path))
    assert r.returncode == 1 and f"{path}: " in r.stderr and expected.format(p=18090) in r.stderr, r.stderr


def test_a_udp_and_a_tcp_listener_may_share_a_port_number(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[proxy]\nbind = "127.0.0.1:18090"\n[[stream.upstream]]\nname = "u"\n'
                    'server = [{ addr = "127.0.0.1:9" }]\n[[stream.server]]\nbind = "127.0.0.1:18090"\n'
                    'bind_mode = "udp"\nup_name = "u"\n')
    assert check("-c", str(path)).returncode == 0


def _help(prog: str) -> str:
    r = subprocess.run([sys.executable, prog, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_help_groups_options_and_describes_the_commands():
    text = _help(SERVER)
    titles = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == ["commands:", "positional arguments:", "options:", "forward proxy ([proxy]):",
                      "center server ([center]: center clients link to it):", "running as a service:", "logs:",
                      "control API (status, reload, stop, metrics):", "file-server command:"]
    for command in ("run", "status", "reload", "stop", "file-server"):
        assert f"\n  {command} " in text
    assert "--run-user USER" in text and "--center-bind ADDR" in text


def test_client_help_shows_client_options_only():
    text = _help(CLIENT)
    for server_only in ("--center-bind", "file-server", "--root", "--browse", "clients must give"):
        assert server_only not in text
    assert "--server ADDR" in text and "center link ([center]):" in text
    assert "who to log in to the center server as" in text  # its --user is the link's account
    r = subprocess.run([sys.executable, CLIENT, "file-server"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "invalid choice: 'file-server'" in r.stderr


def test_file_server_says_what_it_serves(start_proxy, tmp_path):
    (tmp_path / "a.txt").write_text("A")
    port = free_port()
    p = start_proxy("file-server", "--root", str(tmp_path), "--listen", f"127.0.0.1:{port}", bind=False, wait=False)
    log = p.wait_log("started", timeout=10)
    assert f"file-server of {tmp_path})" in log and "embedded default" not in log
    assert curl(f"http://127.0.0.1:{port}/a.txt").stdout == b"A"
