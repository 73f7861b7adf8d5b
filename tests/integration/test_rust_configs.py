"""The Rust wmproxy's own example configs (tests/data/rust: config/*.toml and *.yaml of
tickbh/wmproxy as released, and the 0.1 shape) load, say with --check how they were read,
and run: a center server and client started from its server and client files publish the
client's mappings; its reverse file serves its locations and streams."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, Proc, curl, free_port, read_response, recv_all, wait_port, websocket_echo

DATA = ROOT / "tests" / "data" / "rust"
SERVER = str(ROOT / "bin" / "wmproxy-server")


def original(name: str, ports: dict[int, int], extra: str = "", tls: str = "", drop: tuple = ()) -> str:
    """The released file ``name`` with its ports changed (``:8091`` -> ``:<free>``), ``extra``
    top-level lines first, ``tls`` lines after its two_way_tls / tc / ts switch, ``drop``
    lines left out."""
    text = (DATA / name).read_text()
    for old, new in ports.items():
        text = re.sub(rf":{old}\b", f":{new}", text)
    lines = [line for line in text.splitlines() if line.strip() not in drop]
    if tls:
        for i, line in enumerate(lines):
            if re.match(r"^\s*(two_way_tls|tc|ts)\s*[:=]\s*true", line) and "#" not in line:
                indent = line[:len(line) - len(line.lstrip())]
                lines.insert(i + 1, "\n".join(indent + t for t in tls.splitlines()))
                break
    return extra + "\n" + "\n".join(lines) + "\n"


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SERVER, "-c", str(path), "--check"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "STATE_DIRECTORY": str(path.parent / "state")})


def test_reverse_toml_as_released_names_its_stray_key(tmp_path):
    """The Rust program ignores keys it does not know; here they are errors."""
    (tmp_path / "reverse.toml").write_text((DATA / "reverse.toml").read_text())
    got = check(tmp_path / "reverse.toml")
    assert got.returncode == 1 and "http.aa: unknown key 'aa'" in got.stderr, got.stderr
    assert "read as a Rust wmproxy config" in got.stderr


@pytest.mark.parametrize("name", ["server.toml", "client.toml", "reverse.toml", "server.yaml", "client.yaml",
                                  "reverse.yaml", "server-0.1.yaml", "client-0.1.yaml"])
def test_each_released_file_passes_check_and_says_how_it_was_read(tmp_path, name):
    text = original(name, {}, drop=('aa = "b"',))
    (tmp_path / name).write_text(text)
    got = check(tmp_path / name)
    assert got.returncode == 0, got.stderr
    assert "read as a Rust wmproxy config" in got.stdout and "configuration OK" in got.stdout
    expect = {"server": "-> center.bind (mode = server", "client": "-> proxy.bind (a local proxy whose traffic exits",
              "reverse": "-> an [[http.server]]" if name == "reverse.yaml" else "-> an upstream of its own"}
    assert expect[name.split(".")[0].split("-")[0]] in got.stdout, got.stdout
    if name == "reverse.toml":
        assert "warning: http.max_read_buf: accepted, no effect here" in got.stdout
        assert "warning: http.server[0].location[1].is_ws: accepted, no effect here" in got.stdout, got.stdout


def host_get_body(port: int, host: str) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /whoami HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return read_response(s)


def tcp_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return recv_all(s)


def start_pair(tmp_path, fmt: str, origin_port: int, tls: bool = True, names: tuple = ()) -> tuple[Proc, Proc, dict]:
    """server.FMT and client.FMT (or ``names``) as released, ports changed, each with a state
    directory of its own (two installs): no certificate files anywhere."""
    ports = dict(center=free_port(), mhttp=free_port(), mtcp=free_port(), mhttps=free_port(), proxy=free_port(),
                 sport=free_port(), cport=free_port())
    sep, q = (" = ", '"') if fmt == "toml" else (": ", "")
    targets = f'allow_targets = ["127.0.0.1:{origin_port}"]' if fmt == "toml" else \
        f"allow_targets: ['127.0.0.1:{origin_port}']"
    server_name, client_name = names or (f"server.{fmt}", f"client.{fmt}")
    server_text = original(server_name, {8091: ports["center"], 8001: ports["mhttp"], 8002: ports["mtcp"],
                                         8003: ports["mhttps"]},
                           extra=f"control{sep}{q}127.0.0.1:{ports['sport']}{q}", tls=targets if tls else "")
    client_extra = f"control{sep}{q}127.0.0.1:{ports['cport']}{q}" if fmt == "yaml" else ""
    if names:  # (0.1's client has no bind_addr: the default would be 8090)
        client_extra += f"\nbind_addr: 127.0.0.1:{ports['proxy']}"
    client_text = original(client_name, {8091: ports["center"], 8090: ports["proxy"], 8080: origin_port,
                                         8838: ports["cport"]}, extra=client_extra)
    (tmp_path / f"server.{fmt}").write_text(server_text)
    (tmp_path / f"client.{fmt}").write_text(client_text)
    server = Proc(["-c", str(tmp_path / f"server.{fmt}")], 0, tmp_path, program="wmproxy-server", name="server",
                  env={"STATE_DIRECTORY": str(tmp_path / "server-state")})
    wait_port(ports["center"], proc=server.popen)
    client = Proc(["-c", str(tmp_path / f"client.{fmt}")], 0, tmp_path, program="wmproxy-client", name="client",
                  env={"STATE_DIRECTORY": str(tmp_path / "client-state")})
    return server, client, ports


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
def test_the_server_and_client_files_publish_the_clients_mappings(tmp_path, origin, fmt):
    """server.toml + client.toml (and the YAML twins) exactly as released, ports changed, no
    certificate files: each end makes its own pair; the client pins the server's, the server
    pins the client's (enrolled once), and the link is mutual TLS with the account
    wmproxy/wmproxy. Its http mapping answers Host localhost on map_http_bind with its header
    rules, its tcp mapping (no remote_bind) takes map_tcp_bind, and its local proxy's traffic
    exits at the server (proxy login the same)."""
    server, client, ports = start_pair(tmp_path, fmt, origin.port)
    try:
        client.wait_log("is up", timeout=15)
        client.wait_log("mapping 'tcp' published by the server on its map_tcp_bind")
        assert "the server pinned this client's certificate" in client.log()
        assert "pinned the certificate of center server 127.0.0.1:" in client.log()
        assert "pinned the certificate of center client wmproxy#" in server.log()
        for state in ("server-state", "client-state"):
            assert os.stat(tmp_path / state / "identity.key").st_mode & 0o777 == 0o600
        head, body = host_get_body(ports["mhttp"], "localhost")
        assert body == b"origin-A", (head, body)
        if fmt == "toml":
            assert b"last-modified: from proxy" in head.lower() and b"etag" not in head.lower(), head
        else:
            assert b"key: value" in head.lower(), head
        assert tcp_get(ports["mtcp"]).endswith(b"origin-A")
        got = curl("-sS", "-x", f"http://wmproxy:wmproxy@127.0.0.1:{ports['proxy']}",
                   f"http://127.0.0.1:{origin.port}/whoami")
        assert got.stdout == b"origin-A", got.stderr
        refused = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{ports['proxy']}",
                       f"http://127.0.0.1:{origin.port}/whoami")
        assert refused.stdout == b"407", refused  # (the server's proxy login: the account's)
    finally:
        client.stop()
        server.stop()


def test_the_0_1_files_link_and_publish_too(tmp_path, origin):
    """The 0.1 shape (the [proxy] keys at the top, no account): ts and tc without files, so a
    pair per install and the server pinned by the client; its http and tcp mappings serve."""
    server, client, ports = start_pair(tmp_path, "yaml", origin.port, tls=False,
                                       names=("server-0.1.yaml", "client-0.1.yaml"))
    try:
        client.wait_log("is up", timeout=15)
        client.wait_log("mapping 'tcp' published by the server on its map_tcp_bind")
        assert "pinned the certificate of center server 127.0.0.1:" in client.log()
        assert host_get_body(ports["mhttp"], "localhost")[1] == b"origin-A"
        assert tcp_get(ports["mtcp"]).endswith(b"origin-A")
    finally:
        client.stop()
        server.stop()


def test_the_0_1_reverse_file_serves_its_directory(tmp_path):
    """reverse.yaml (0.1): the top-level bind_addr serves reverse.file_server: root '' (the
    directory it starts in), prefix /root, .git hidden."""
    port = free_port()
    (tmp_path / "reverse.yaml").write_text(original("reverse.yaml", {8090: port}).replace("0.0.0.0", "127.0.0.1")
                                           + "disable_control: true\n")
    (tmp_path / "a.txt").write_text("file a")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("secret")
    p = Proc(["-c", str(tmp_path / "reverse.yaml")], port, tmp_path, program="wmproxy-server", name="reverse01",
             cwd=str(tmp_path))
    try:
        wait_port(port, proc=p.popen)
        assert curl("-sS", f"http://127.0.0.1:{port}/root/a.txt").stdout == b"file a"
        assert curl("-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/root/.git/config"
                    ).stdout == b"404"
        assert curl("-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/a.txt").stdout == b"404"
    finally:
        p.stop()


def test_pins_refuse_another_certificate_on_either_end(tmp_path, origin):
    """After the first link: a server answering with another certificate (a new install in its
    place) is refused by the client, naming the file to edit; a client of the same account and
    id with another certificate is refused by the server; a client with none (ts without
    two_way_tls) is refused where two_way_tls is on."""
    server, client, ports = start_pair(tmp_path, "toml", origin.port)
    try:
        client.wait_log("is up", timeout=15)
        client.stop()
        server.stop()
        impostor = Proc(["-c", str(tmp_path / "server.toml")], 0, tmp_path, program="wmproxy-server",
                        name="impostor", env={"STATE_DIRECTORY": str(tmp_path / "impostor-state")})
        wait_port(ports["center"], proc=impostor.popen)
        client = Proc(["-c", str(tmp_path / "client.toml")], 0, tmp_path, program="wmproxy-client", name="client2",
                      env={"STATE_DIRECTORY": str(tmp_path / "client-state")})
        log = client.wait_log("but " + str(tmp_path / "client-state" / "known_servers") + " pins", timeout=15)
        assert "delete the line '127.0.0.1:" in log and "is up" not in log
        assert "pinned the certificate of center client" not in impostor.log()  # (nothing was offered to it)
        client.stop()
        impostor.stop()

        server = Proc(["-c", str(tmp_path / "server.toml")], 0, tmp_path, program="wmproxy-server", name="server2",
                      env={"STATE_DIRECTORY": str(tmp_path / "server-state")})
        wait_port(ports["center"], proc=server.popen)
        other = Proc(["-c", str(tmp_path / "client.toml")], 0, tmp_path, program="wmproxy-client", name="other",
                     env={"STATE_DIRECTORY": str(tmp_path / "other-client-state")})
        other.wait_log("refused by the server: the center client wmproxy#", timeout=15)
        assert "is up" not in other.log()
        assert str(tmp_path / "server-state" / "known_clients") in server.wait_log("known_clients")
        other.stop()
        bare = tmp_path / "bare.toml"
        bare.write_text((tmp_path / "client.toml").read_text().replace("two_way_tls = true", ""))
        nocert = Proc(["-c", str(bare)], 0, tmp_path, program="wmproxy-client", name="nocert",
                      env={"STATE_DIRECTORY": str(tmp_path / "client-state")})
        nocert.wait_log("a client certificate is required here (two_way_tls)", timeout=15)
        nocert.stop()
    finally:
        client.stop()
        server.stop()


def test_the_reverse_file_serves_its_locations_and_streams(tmp_path, origin, echo_server, udp_echo):
    """reverse.toml (its stray key left out): the proxy on bind_addr with its login, the http
    server's /static answer exactly as written, its /root file server (browse, the directory it
    starts in), the stream server to its upstream, and the udp one."""
    ws = websocket_echo()
    ports = {8090: free_port(), 82: free_port(), 83: free_port(), 84: free_port(), 85: free_port(),
             86: free_port(), 8837: free_port(), 8080: origin.port, 8089: udp_echo(b"u:").port,
             8081: ws.socket.getsockname()[1], 8082: echo_server.port}
    text = original("reverse.toml", ports, drop=('aa = "b"',))
    text = text.replace('"logs/', f'"{tmp_path}/logs-').replace(
        "[proxy]\n", f'[proxy]\nallow_targets = ["127.0.0.1:{origin.port}"]\n')  # (it binds 0.0.0.0)
    (tmp_path / "reverse.toml").write_text(text)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "hello.txt").write_text("hello file")
    p = Proc(["-c", str(tmp_path / "reverse.toml")], 0, tmp_path, program="wmproxy-server", name="reverse",
             cwd=str(tmp_path))
    try:
        wait_port(ports[82], proc=p.popen)
        got = curl("-sS", "-H", "Host: soft.wm-proxy.com", f"http://127.0.0.1:{ports[82]}/static")
        assert got.stdout == b"I'm Ok 127.0.0.1", got
        got = curl("-sS", f"http://127.0.0.1:{ports[82]}/root/hello.txt")
        assert got.stdout == b"hello file", got
        listing = curl("-sS", f"http://127.0.0.1:{ports[82]}/root/")
        assert b"hello.txt" in listing.stdout, listing
        (tmp_path / "root" / "Cargo.toml").write_text("[package]")  # try_paths' rewrite: /ro(\w+)/(.*) -> /ro$1/Cargo.toml
        got = curl("-sS", f"http://127.0.0.1:{ports[82]}/root/no/such/file")
        assert got.stdout == b"[package]", got
        time.sleep(1.1)  # (the access lines, in log_format main: flushed per line)
        access = (tmp_path / "logs-access.log").read_text()
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d 127\.0\.0\.1 INFO /static path:/static query: "
                         r"host:soft\.wm-proxy\.com status: 200 200 referer: - user_agent: curl/", access), access
        got = curl("-sS", "-x", f"http://wmproxy:wmproxy@127.0.0.1:{ports[8090]}",
                   f"http://127.0.0.1:{origin.port}/whoami")
        assert got.stdout == b"origin-A", got
        assert tcp_get(ports[83]).endswith(b"origin-A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(10)
            u.sendto(b"ping", ("127.0.0.1", ports[84]))
            assert u.recvfrom(2048)[0] == b"u:ping"
        with socket.create_connection(("127.0.0.1", ports[85]), timeout=10) as s:  # tcp2ws: bytes to a websocket
            s.sendall(b"over ws")
            assert s.recv(100) == b"over ws"
        assert (tmp_path / "logs-access.log").exists()
    finally:
        p.stop()
        ws.shutdown()
