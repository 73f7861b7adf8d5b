"""The control API's /api (docs/openapi.yaml): the lists of clients, mappings, listeners and
upstreams on a real center link, each live answer checked against the OpenAPI document, and
DELETE /api/clients/{id} kicking a client, which links again."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import yaml

from conftest import ROOT, Pair, control, free_port, wait_port
from test_center import host_get, http_mapping, tcp_mapping

SPEC = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())


def test_the_document_is_valid_openapi():
    from openapi_spec_validator import validate

    validate(SPEC)


def check(path: str, method: str, status: int, body: bytes) -> object:
    """The answer, validated against the document's schema for ``path``, ``method``, ``status``."""
    from openapi_schema_validator import OAS31Validator

    value = json.loads(body)
    op = SPEC["paths"][path][method]
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": SPEC["components"]}).validate(value)  # ('#/components/...' resolves)
    return value


@pytest.fixture(params=[1, 2], ids=["alone", "2 workers"])
def linked(request, tmp_path, certs, echo_server, origin):
    """A center server (alone, or a master with 2 workers: the lists then come from every
    worker, a kick from worker 0's link) and a client with a tcp and an http mapping."""
    cport, web, remote = free_port(), free_port(), free_port()
    pair = Pair(tmp_path, certs, start_client=False,
                server_top=f'control = "127.0.0.1:{cport}"\nworkers = {request.param}',
                server_extra=f'map_http_bind = "127.0.0.1:{web}"\n')
    pair.client = pair.start_client('client_id = "office"\n' + tcp_mapping("echo", echo_server.port, remote) +
                                    http_mapping("site", origin.port, "a.test"))
    pair.wait_link()
    wait_port(remote)
    yield pair, cport, web, remote
    pair.stop()


def test_the_lists_match_the_document_and_what_is_linked(linked):
    pair, cport, web, remote = linked
    assert host_get(web, "a.test")[1] == b"origin-A"
    status, body = control(cport, "GET", "/api/clients")
    (client,) = check("/api/clients", "get", status, body)
    assert client["id"] == "alice#office" and client["account"] == "alice" and client["client_id"] == "office"
    assert client["tls"]["version"].startswith("TLSv1.") and client["address"].startswith("127.0.0.1:")
    status, body = control(cport, "GET", "/api/mappings")
    mappings = {m["name"]: m for m in check("/api/mappings", "get", status, body)}
    assert mappings["echo"]["public"] == f"127.0.0.1:{remote}" and mappings["echo"]["mode"] == "tcp"
    assert mappings["site"]["public"] == "Host a.test" and mappings["site"]["requests"] == 1
    assert {m["state"] for m in mappings.values()} == {"connected"}
    status, body = control(cport, "GET", "/api/listeners")
    kinds = {row["kind"] for row in check("/api/listeners", "get", status, body)}
    assert {"center", "map-http", "control"} <= kinds
    status, body = control(cport, "GET", "/api/upstreams")
    assert check("/api/upstreams", "get", status, body) == []  # (none in this config)


def test_a_kicked_client_is_cut_and_links_again(linked):
    pair, cport, web, remote = linked
    status, body = control(cport, "DELETE", "/api/clients/" + quote("alice#office", safe=""))
    answer = check("/api/clients/{id}", "delete", status, body)
    assert answer["kicked"] == "alice#office"
    pair.server.wait_log("center: client alice#office (127.0.0.1:")
    assert "kicked: DELETE /api/clients (control API)" in pair.server.log()
    pair.client.wait_log("is up (attempt 2)", timeout=20)
    status, body = control(cport, "GET", "/api/clients")
    assert [c["id"] for c in json.loads(body)] == ["alice#office"]
    assert host_get(web, "a.test")[1] == b"origin-A"  # its mappings again
    status, body = control(cport, "DELETE", "/api/clients/nobody")
    assert "no center client 'nobody'" in check("/api/clients/{id}", "delete", status, body)["error"]
    status, body = control(cport, "GET", "/api/nothing")
    assert status == 404 and "/api/clients" in json.loads(body)["endpoints"]
    status, _ = control(cport, "POST", "/api/clients")
    assert status == 405


def refused(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_disabled_mapping_is_withdrawn_until_enabled_or_reloaded(linked):
    pair, cport, web, remote = linked
    status, body = control(cport, "POST", "/api/mappings/echo/disable")
    answer = check("/api/mappings/{name}/disable", "post", status, body)
    assert answer["client"] == "alice#office" and answer["state"] == "disabled"
    assert refused(remote)  # the public port is closed
    status, body = control(cport, "GET", "/api/mappings")
    rows = {m["name"]: m for m in check("/api/mappings", "get", status, body)}
    assert rows["echo"]["state"] == "disabled" and rows["site"]["state"] == "connected"
    status, body = control(cport, "POST", "/api/mappings/site/disable")
    check("/api/mappings/{name}/disable", "post", status, body)
    assert host_get(web, "a.test")[0].startswith(b"HTTP/1.1 404")  # (no mapping answers that Host now)
    # its client links again: still refused it, with the reason
    control(cport, "DELETE", "/api/clients/alice%23office")
    pair.client.wait_log("is up (attempt 2)", timeout=20)
    pair.client.wait_log("mapping 'echo' refused by the server: disabled by the operator (control API)")
    assert refused(remote)
    status, body = control(cport, "POST", "/api/mappings/echo/enable")
    assert check("/api/mappings/{name}/enable", "post", status, body)["state"] == "enabled"
    wait_port(remote)
    status, body = control(cport, "POST", "/api/mappings/echo/enable")  # (not disabled any more)
    check("/api/mappings/{name}/enable", "post", status, body)
    assert status == 404
    status, body = control(cport, "POST", "/reload")  # a reload ends what was disabled
    assert status == 200, body
    assert host_get(web, "a.test")[1] == b"origin-A"
    status, body = control(cport, "GET", "/api/mappings")
    assert {m["state"] for m in json.loads(body)} == {"connected"}
    status, body = control(cport, "POST", "/api/mappings/nope/disable")
    assert status == 404 and "no mapping 'nope'" in check("/api/mappings/{name}/disable", "post", status,
                                                          body)["error"]
    status, _ = control(cport, "GET", "/api/mappings/echo/disable")
    assert status == 405


def test_accounts_limits_disabled_and_a_reload_that_disables(tmp_path, certs, echo_server):
    """[[center.users]]: max_mappings (all of an account's clients together), allow_ports of
    its own, disabled (refused once the password is right; a reload that sets it cuts the
    account's links)."""
    cport, p1, p2, p3 = free_port(), free_port(), free_port(), free_port()
    users = (f'[[center.users]]\nusername = "bob"\npassword = "b0b"\nmax_mappings = 1\nallow_ports = ["{p1}"]\n'
             f'[[center.users]]\nusername = "carol"\npassword = "c4rol"\ndisabled = true\n')
    pair = Pair(tmp_path, certs, start_client=False, server_top=f'control = "127.0.0.1:{cport}"',
                server_extra=users)
    try:
        bob = pair.start_client(tcp_mapping("one", echo_server.port, p1) + tcp_mapping("two", echo_server.port, p2),
                                user="bob", password="b0b", proxy=free_port())
        bob.wait_log("is up", timeout=15)
        bob.wait_log("mapping 'two' refused by the server: account 'bob' may publish 1 mappings (max_mappings)")
        wait_port(p1)
        carol = pair.start_client(tcp_mapping("three", echo_server.port, p3), user="carol", password="c4rol",
                                  proxy=free_port())
        carol.wait_log("refused by the server: account disabled", timeout=15)
        assert "account 'carol' is disabled" in pair.server.wait_log("is disabled")
        wrong = pair.start_client("", user="carol", password="nope", proxy=free_port())
        wrong.wait_log("refused by the server: auth failed", timeout=15)  # (no word of 'disabled' before the password)
        # bob's allow_ports are his own; a reload publishes a disabled mapping again, under the new ones
        status, body = control(cport, "POST", "/api/mappings/one/disable")
        assert status == 200, body
        pair.server_conf.write_text(pair.server_conf.read_text().replace(f'allow_ports = ["{p1}"]',
                                                                         f'allow_ports = ["{p2}"]'))
        status, body = control(cport, "POST", "/reload")
        assert status == 200, body
        status, body = control(cport, "GET", "/api/mappings")
        assert [m["name"] for m in json.loads(body)] == []  # (re-enabled by the reload, then refused: outside)
        assert f"port {p1} is outside allow_ports ({p2})" in pair.server.wait_log("is outside allow_ports")
        pair.server_conf.write_text(pair.server_conf.read_text().replace("max_mappings = 1\n",
                                                                         "max_mappings = 1\ndisabled = true\n"))
        status, body = control(cport, "POST", "/reload")
        assert status == 200, body
        pair.server.wait_log("its account 'bob' is disabled now")
        bob.wait_log("refused by the server: account disabled", timeout=20)
    finally:
        pair.stop()


def test_status_prints_the_same_lists_as_tables(linked):
    import subprocess
    import sys

    pair, cport, web, remote = linked
    host_get(web, "a.test")
    shown = subprocess.run([sys.executable, str(ROOT / "bin" / "wmproxy-server"), "status", "-c",
                            str(pair.server_conf)], capture_output=True, text=True, timeout=30).stdout
    lines = shown.splitlines()
    assert "center clients: 1" in lines and "mappings: 2" in lines, shown
    client_row = next(line for line in lines if line.startswith("alice#office "))
    assert "127.0.0.1:" in client_row and "TLSv1." in client_row
    assert any(line.split()[:5] == ["echo", "alice", "tcp", f"127.0.0.1:{remote}", "connected"] for line in lines)
    assert any(line.split()[:6] == ["site", "alice", "http", "Host", "a.test", "connected"] for line in lines), shown


# -- the dashboard and what a browser may not do -------------------------------------------------

def raw(port: int, request: bytes) -> tuple[bytes, bytes]:
    import socket

    from conftest import read_response

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        return read_response(s)


def test_the_dashboard_is_one_self_contained_page_served_without_the_token(tmp_path, start_proxy):
    """GET / needs no token (the page holds no data; it asks for the token and sends it on
    each call); its script is allowed by hash alone, nothing outside this API is loaded, and
    node parses the script."""
    import base64
    import hashlib
    import re
    import subprocess

    cport = free_port()
    start_proxy(config=f'control = "127.0.0.1:{cport}"\ncontrol_token = "s3cret-token"\n'
                       f'[proxy]\nbind = "127.0.0.1:{{port}}"\n')
    head, page = raw(cport, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/html" in head and b"<title>wmproxy</title>" in page
    (script,) = re.findall(rb"<script>(.*?)</script>", page, re.S)
    digest = base64.b64encode(hashlib.sha256(script).digest())
    csp = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-security-policy:"))
    assert b"'sha256-" + digest + b"'" in csp and b"default-src 'none'" in csp and b"connect-src 'self'" in csp
    assert b"X-Frame-Options: DENY" in head
    assert not re.search(rb"(src|href)=\"(https?:)?//", page) and b"http://" not in script.replace(
        b"http://www.w3.org/2000/svg", b"")  # (nothing from elsewhere; the SVG namespace is a name, not a fetch)
    (tmp_path / "page.js").write_bytes(script)
    checked = subprocess.run(["node", "--check", str(tmp_path / "page.js")], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr
    for path in (b"/status", b"/api/clients", b"/api/mappings", b"/api/upstreams", b"/reload"):
        assert b'"' + path + b'"' in script or b"`" + path in script, path  # (what it calls exists)
    status, _ = control(cport, "GET", "/status")
    assert status == 401  # (the data still needs the token)
    status, body = control(cport, "GET", "/api/listeners", token="s3cret-token")
    assert status == 200 and json.loads(body)


def test_browser_forgeries_are_refused(start_proxy):
    cport = free_port()
    p = start_proxy(config=f'control = "127.0.0.1:{cport}"\n[proxy]\nbind = "127.0.0.1:{{port}}"\n')
    head, body = raw(cport, b"GET /status HTTP/1.1\r\nHost: evil.example:8837\r\n\r\n")  # DNS rebinding
    assert head.startswith(b"HTTP/1.1 403") and b"is a name, not this API's address" in body
    head, body = raw(cport, f"POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{cport}\r\nOrigin: http://evil.example\r\n"
                            f"Content-Length: 0\r\n\r\n".encode())  # a cross-site form or fetch
    assert head.startswith(b"HTTP/1.1 403") and b"of another site" in body
    head, _ = raw(cport, f"GET /status HTTP/1.1\r\nHost: localhost:{cport}\r\nOrigin: http://evil.example\r\n\r\n"
                  .encode())
    assert head.startswith(b"HTTP/1.1 200")  # (a read: the browser keeps the answer from the other site)
    head, body = raw(cport, f"POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{cport}\r\nOrigin: http://127.0.0.1:{cport}\r\n"
                            f"Content-Length: 0\r\n\r\n".encode())  # the dashboard's own
    assert not head.startswith(b"HTTP/1.1 403"), head
    assert "refused POST /reload from 127.0.0.1: a request from the page 'http://evil.example'" in p.log()


def test_account_quotas_hold_on_the_server_whatever_the_client_says(tmp_path, certs, mirror):
    """[[center.users]] max_connections (its mappings together) and mapping_bandwidth (each
    mapping: a bucket all its connections share), enforced by the server."""
    import os
    import socket
    import time

    from conftest import TcpServer, recv_all

    size = 1 << 20
    blob = os.urandom(size)
    source = TcpServer(lambda conn: conn.sendall(blob))
    cport, p1, p2 = free_port(), free_port(), free_port()
    users = ('[[center.users]]\nusername = "bob"\npassword = "b0b"\nmax_connections = 1\n'
             'mapping_bandwidth = "512k/s"\n')
    pair = Pair(tmp_path, certs, start_client=False, server_top=f'control = "127.0.0.1:{cport}"',
                server_extra=users)
    try:
        bob = pair.start_client(tcp_mapping("echo", mirror, p1) + tcp_mapping("blob", source.port, p2),
                                user="bob", password="b0b", proxy=free_port())
        bob.wait_log("mapping 'blob' published", timeout=15)  # (no probe: it would count as a connection)
        bob.wait_log("mapping 'echo' published")
        first = socket.create_connection(("127.0.0.1", p1), timeout=10)
        first.sendall(b"hello")
        assert first.recv(5) == b"hello"
        with socket.create_connection(("127.0.0.1", p2), timeout=10) as second:  # the account's second: refused
            assert second.recv(1) == b""
        assert "refused: account bob has 1 connections open (max_connections)" in pair.server.wait_log("refused:")
        first.close()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", p2), timeout=30) as s:
            started = time.monotonic()
            got = recv_all(s)
            took = time.monotonic() - started
        assert got == blob and took >= (size - 65536) / (512 << 10) * 0.95, took  # (512 KiB/s, after a burst)
    finally:
        pair.stop()
        source.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_live_connections_are_listed_top_talkers_first_and_cut(start_proxy, echo_server, workers):
    """GET /api/connections lists the forward proxy's, [stream]'s and [http]'s connections
    with peer, target, age and bytes, the most bytes first (over every worker); DELETE cuts
    one: its client sees the end, the others go on."""
    import socket
    import time

    cport, sport, hport = free_port(), free_port(), free_port()
    p = start_proxy(config=f'control = "127.0.0.1:{cport}"\nworkers = {workers}\n'
                           f'[proxy]\nbind = "127.0.0.1:{{port}}"\n'
                           f'[[stream.upstream]]\nname = "echo"\n'
                           f'server = [{{ addr = "127.0.0.1:{echo_server.port}" }}]\n'
                           f'[[stream.server]]\nbind = "127.0.0.1:{sport}"\nup_name = "echo"\n'
                           f'[[http.server]]\nbind = "127.0.0.1:{hport}"\n'
                           f'[[http.server.location]]\nstatic_response = "hello"\n')
    wait_port(sport)
    wait_port(hport)
    tunnel = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    tunnel.sendall(f"CONNECT 127.0.0.1:{echo_server.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert tunnel.recv(4096).startswith(b"HTTP/1.1 200")
    tunnel.sendall(b"x" * 300_000)
    stream = socket.create_connection(("127.0.0.1", sport), timeout=10)
    stream.sendall(b"y" * 100_000)
    web = socket.create_connection(("127.0.0.1", hport), timeout=10)
    web.sendall(b"GET /page?q=1 HTTP/1.1\r\nHost: site.test\r\n\r\n")
    assert web.recv(4096).endswith(b"hello")
    deadline = time.monotonic() + 10
    while True:  # (the bytes arrive at their pace)
        status, body = control(cport, "GET", "/api/connections")
        listed = check("/api/connections", "get", status, body)
        rows = listed["connections"]
        if len(rows) == 3 and rows[0]["bytes_in"] == 300_000 and rows[1]["bytes_in"] == 100_000 \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert listed["total"] == 3 and [r["listener"].split()[0] for r in rows] == ["proxy", "stream", "http"], rows
    by_kind = {r["listener"].split()[0]: r for r in rows}
    assert by_kind["proxy"]["target"] == f"127.0.0.1:{echo_server.port}"
    assert by_kind["stream"]["target"] == f"127.0.0.1:{echo_server.port} (echo)"
    assert by_kind["http"]["target"] == "GET site.test/page?q=1" and by_kind["http"]["bytes_out"] == 5
    assert by_kind["proxy"]["peer"] == "127.0.0.1:%d" % tunnel.getsockname()[1]
    assert all(r["age_seconds"] >= 0 for r in rows) and len({r["id"] for r in rows}) == 3
    status, body = control(cport, "GET", f"/api/connections?listener=127.0.0.1:{sport}&limit=5")
    assert [r["target"] for r in check("/api/connections", "get", status, body)["connections"]] == \
        [by_kind["stream"]["target"]]
    status, body = control(cport, "GET", "/api/connections?limit=1")
    assert [r["id"] for r in json.loads(body)["connections"]] == [by_kind["proxy"]["id"]]
    status, body = control(cport, "GET", "/api/connections?limit=0")
    assert status == 400 and "a number from 1 to" in json.loads(body)["error"]
    for junk in ("%C2%B2", "1e3", "-1", "9" * 5000):  # (a superscript two is a digit to str.isdigit)
        status, body = control(cport, "GET", f"/api/connections?limit={junk}")
        assert status == 400 and "a number from 1 to" in json.loads(body)["error"], junk
    for junk in ("%C2%B2", "9" * 5000, "1-" + "9" * 5000, "-", "0-", "x"):  # what DELETE takes from a stranger
        status, body = control(cport, "DELETE", f"/api/connections/{junk}")
        assert status == 404 and "no live connection" in json.loads(body)["error"], (junk, status, body)

    status, body = control(cport, "DELETE", "/api/connections/" + quote(by_kind["proxy"]["id"]))
    assert check("/api/connections/{id}", "delete", status, body)["cut"] == by_kind["proxy"]["id"]
    tunnel.settimeout(10)
    assert tunnel.recv(4096) == b""  # (cut: the echo server's answer never came)
    p.wait_log(f"connection {by_kind['proxy']['id']} cut (DELETE /api/connections (control API)) in=300000")
    status, body = control(cport, "DELETE", "/api/connections/" + quote(by_kind["proxy"]["id"]))
    assert "no live connection" in check("/api/connections/{id}", "delete", status, body)["error"]
    status, body = control(cport, "GET", "/api/connections")
    assert {r["id"] for r in json.loads(body)["connections"]} == {by_kind["stream"]["id"], by_kind["http"]["id"]}
    stream.shutdown(socket.SHUT_WR)  # the others go on
    assert stream.recv(4096).startswith(b"got 100000 ")
    web.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
    assert web.recv(4096).endswith(b"hello")
    for s in (tunnel, stream, web):
        s.close()


@pytest.mark.timeout(120)
def test_two_clients_mappings_of_each_mode_with_their_figures(tmp_path, certs, mirror, origin, tls_origin, udp_echo):
    """Two clients (two accounts) with a tcp, http, udp, proxy and https passthrough mapping:
    /api/mappings gives each its owner, mode, public side, state, connections now and in all,
    and bytes; the http mapping's requests count in its listener's figures (the dashboard's
    requests/s); a client's own /api/mappings gives their local side."""
    import socket
    import time

    from conftest import curl, mirror_check
    from test_center import passthrough_mapping, udp_ask, udp_mapping

    echo = udp_echo(b"U:")
    cport, ccport, web, tls_web, p_tcp, p_udp, p_proxy = (free_port() for _ in range(7))
    pair = Pair(tmp_path, certs, start_client=False, server_top=f'control = "127.0.0.1:{cport}"',
                server_extra=f'map_http_bind = "127.0.0.1:{web}"\nmap_https_bind = "127.0.0.1:{tls_web}"\n'
                             f'[[center.users]]\nusername = "bob"\npassword = "b0b"\n')
    try:
        conf = tmp_path / "alice.toml"
        conf.write_text(f'control = "127.0.0.1:{ccport}"\n' + pair.client_config('client_id = "office"') +
                        tcp_mapping("echo", mirror, p_tcp) + http_mapping("site", origin.port, "a.test") +
                        udp_mapping("dgram", echo.port, p_udp))
        alice = pair.start("client", conf)
        bob = pair.start_client(f'[[mappings]]\nname = "exit"\nmode = "proxy"\nremote_bind = "127.0.0.1:{p_proxy}"\n'
                                + passthrough_mapping("private-tls", tls_origin.port, "localhost"),
                                user="bob", password="b0b", proxy=free_port())
        for who, name in ((alice, "echo"), (alice, "site"), (alice, "dgram"), (bob, "exit"), (bob, "private-tls")):
            who.wait_log(f"mapping '{name}' published", timeout=20)
        with socket.create_connection(("127.0.0.1", p_tcp), timeout=10) as s:
            assert mirror_check(s, 200_000) == ""
        assert host_get(web, "a.test")[1] == b"origin-A"
        held_web = socket.create_connection(("127.0.0.1", web), timeout=10)  # kept open (keep-alive)
        assert host_get(web, "a.test", sock=held_web)[1] == b"origin-A"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            assert udp_ask(s, p_udp, b"ping", b"U:ping", b"U:", [])
        assert curl("-x", f"socks5h://127.0.0.1:{p_proxy}", f"http://localhost:{origin.port}/whoami").stdout == \
            b"origin-A"
        assert curl("--cacert", str(tls_origin.ca_file), f"https://localhost:{tls_web}/whoami").stdout == b"origin-TLS"
        held = socket.create_connection(("127.0.0.1", p_tcp), timeout=10)  # open while listed
        held.sendall(b"x")
        assert held.recv(1) == b"x"

        status, body = control(cport, "GET", "/api/clients")
        clients = {c["id"]: c for c in check("/api/clients", "get", status, body)}
        ids = sorted(clients)
        assert ids[0] == "alice#office" and ids[1].startswith("bob#"), ids  # (bob's id: his host's, by default)
        assert clients["alice#office"]["bytes_per_second"] > 0  # (her 400 KB since the link began)
        deadline = time.monotonic() + 10
        while True:  # (a connection's bytes count once its relay saw them; a closed one's once it ended)
            status, body = control(cport, "GET", "/api/mappings")
            rows = {m["name"]: m for m in check("/api/mappings", "get", status, body)}
            if rows["echo"]["connections"] == 1 and rows["private-tls"]["connections"] == 0 \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        want = {"echo": ("alice#office", "tcp", f"127.0.0.1:{p_tcp}"), "site": ("alice#office", "http", "Host a.test"),
                "dgram": ("alice#office", "udp", f"127.0.0.1:{p_udp}"),
                "exit": (rows["exit"]["client"], "proxy", f"127.0.0.1:{p_proxy}"),
                "private-tls": (rows["exit"]["client"], "https passthrough", "Host localhost")}
        assert {n: (m["client"], m["mode"], m["public"]) for n, m in rows.items()} == want
        assert rows["exit"]["account"] == "bob" and rows["echo"]["account"] == "alice"
        assert {m["state"] for m in rows.values()} == {"connected"} and all(m["local"] is None for m in rows.values())
        echo_row = rows["echo"]
        assert echo_row["connections"] == 1 and echo_row["connections_total"] == 2
        assert echo_row["bytes_in"] == 200_001 and echo_row["bytes_out"] == 200_001, echo_row
        assert rows["site"]["requests"] == 2 and rows["site"]["connections_total"] == 2
        assert rows["site"]["connections"] == 1  # (the kept-alive one holds its stream)
        assert rows["site"]["bytes_out"] == 2 * len(b"origin-A") and rows["site"]["bytes_in"] > 0
        assert rows["dgram"]["connections_total"] == 1 and rows["dgram"]["bytes_in"] >= 4
        for name in ("exit", "private-tls"):
            assert rows[name]["connections_total"] == 1 and rows[name]["connections"] == 0, rows[name]
            assert rows[name]["bytes_in"] > 0 and rows[name]["bytes_out"] > 0
        status, body = control(cport, "GET", "/api/listeners")
        listeners = {r["kind"]: r for r in check("/api/listeners", "get", status, body)}
        assert listeners["map-http"]["requests"] == {"200": 2} and listeners["map-http"]["bytes_out"] >= 16
        status, body = control(cport, "GET", "/api/connections?listener=map-http")
        (conn,) = check("/api/connections", "get", status, body)["connections"]
        assert conn["target"] == "GET a.test/whoami" and conn["bytes_out"] == len(b"origin-A")
        assert conn["peer"] == "127.0.0.1:%d" % held_web.getsockname()[1]
        # the client's own view: their local side
        status, body = control(ccport, "GET", "/api/mappings")
        own = {m["name"]: m for m in check("/api/mappings", "get", status, body)}
        assert own["echo"]["local"] == f"127.0.0.1:{mirror}" and own["echo"]["state"] == "published"
        assert own["site"]["public"] == "Host a.test" and own["site"]["client"] is None
        held.close()
        held_web.close()
    finally:
        pair.stop()


@pytest.mark.timeout(120)
def test_a_limited_transfer_holds_back_only_its_own_streams(tmp_path, certs):
    """bob's mappings are held to 256 KiB/s; while his transfer crawls, alice's mapping and
    bob's own proxy traffic (other streams of his very link) run at full speed."""
    import os
    import socket
    import threading
    import time

    from conftest import TcpServer, recv_all

    slow_size, fast_size, rate = 1 << 20, 8 << 20, 256 << 10
    blob = os.urandom(fast_size)
    source = TcpServer(lambda conn: conn.sendall(blob[:slow_size]))
    big = TcpServer(lambda conn: conn.sendall(blob))
    p_bob, p_alice, bob_proxy = free_port(), free_port(), free_port()
    pair = Pair(tmp_path, certs, start_client=False,
                server_extra='[[center.users]]\nusername = "bob"\npassword = "b0b"\nmapping_bandwidth = "256k/s"\n')
    try:
        bob = pair.start_client(tcp_mapping("slow", source.port, p_bob), user="bob", password="b0b", proxy=bob_proxy)
        alice = pair.start_client(tcp_mapping("fast", big.port, p_alice), proxy=free_port())
        bob.wait_log("mapping 'slow' published", timeout=20)
        alice.wait_log("mapping 'fast' published", timeout=20)
        slow: dict = {}

        def crawl() -> None:
            with socket.create_connection(("127.0.0.1", p_bob), timeout=60) as s:
                started = time.monotonic()
                slow["got"] = recv_all(s)
                slow["took"] = time.monotonic() - started

        crawler = threading.Thread(target=crawl)
        crawler.start()
        time.sleep(0.5)  # (well into its transfer)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", p_alice), timeout=30) as s:
            assert recv_all(s) == blob
        alice_took = time.monotonic() - started
        alice_done_first = crawler.is_alive()
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", bob_proxy), timeout=30) as s:  # bob's proxy: out at the server
            s.sendall(f"CONNECT 127.0.0.1:{big.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert recv_all(s) == blob
        proxy_took = time.monotonic() - started
        proxy_done_first = crawler.is_alive()
        crawler.join(timeout=60)
        assert slow["got"] == blob[:slow_size]
        limited = (slow_size - 65536) / rate  # (the seconds the limit allows at the least, after a burst)
        assert slow["took"] >= limited * 0.95, slow["took"]
        # the others moved 8x the bytes while it crawled: far beyond what that limit would allow
        assert alice_done_first and proxy_done_first, (alice_took, proxy_took, slow["took"])
        assert alice_took < fast_size / rate / 4 and proxy_took < fast_size / rate / 4, (alice_took, proxy_took)
    finally:
        pair.stop()
        source.close()
        big.close()


@pytest.mark.timeout(120)
def test_http_mapping_quotas_hold_on_the_server(tmp_path, certs):
    """An http mapping ended at the server counts in its account's quotas too: a public
    connection holds one of max_connections while its stream to the mapping is open (another
    gets 503), and the bodies both ways move within the bandwidth."""
    import os
    import socket
    import time

    from conftest import TcpServer, read_response

    def mirror_http(conn) -> None:  # answers each request with its own body
        reader = conn.makefile("rb")
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                if not line:
                    return
                head += line
            length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), b"0"))
            body = reader.read(length)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    service = TcpServer(mirror_http)
    web, rate, size = free_port(), 256 << 10, 384 << 10
    pair = Pair(tmp_path, certs, start_client=False, server_extra=(
        f'map_http_bind = "127.0.0.1:{web}"\n[[center.users]]\nusername = "bob"\npassword = "b0b"\n'
        f'max_connections = 1\nmapping_bandwidth = "256k/s"\n'))
    try:
        bob = pair.start_client(http_mapping("echo", service.port, "e.test"), user="bob", password="b0b",
                                proxy=free_port())
        bob.wait_log("mapping 'echo' published", timeout=20)
        body = os.urandom(size)
        first = socket.create_connection(("127.0.0.1", web), timeout=30)
        started = time.monotonic()
        first.sendall(b"POST /up HTTP/1.1\r\nHost: e.test\r\nContent-Length: %d\r\n\r\n%s" % (size, body))
        head, got = read_response(first)
        took = time.monotonic() - started
        assert head.startswith(b"HTTP/1.1 200") and got == body
        assert took >= 2 * (size - 65536) / rate * 0.95, took  # (each way within 256 KiB/s, after a burst)
        head, text = host_get(web, "e.test", "/")  # the account's second connection while the first holds its stream
        assert head.startswith(b"HTTP/1.1 503") and b"account bob has 1 connections open" in text, head + text
        first.close()
        deadline = time.monotonic() + 5
        while not host_get(web, "e.test", "/")[0].startswith(b"HTTP/1.1 200"):  # (once the first's stream closed)
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert "503 refused: account bob has 1 connections open (max_connections)" in pair.server.log()
    finally:
        pair.stop()
        service.close()


def test_from_another_host_the_data_and_every_action_need_the_token(start_proxy):
    """A control port other hosts reach (here an address that is not loopback, added in the
    test's own network namespace): without the token, the lists and every action are refused (401); the
    page itself holds no data and loads; with the token they answer."""
    import subprocess

    from conftest import IN_NETNS

    if not IN_NETNS:
        pytest.skip("adds an address: only inside the test's own network namespace (tools/in-netns)")
    address = "10.213.0.1"
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)  # (not a loopback address)
    try:
        cport = free_port()
        start_proxy(config=f'control = "{address}:{cport}"\ncontrol_token = "s3cret-token"\n'
                           f'[proxy]\nbind = "127.0.0.1:{{port}}"\n')
        wait_port(cport, host=address)

        def ask(method: str, path: str, token: str = "") -> tuple[int, bytes]:
            return control(cport, method, path, token=token, host=address)

        for method, path in (("GET", "/status"), ("GET", "/metrics"), ("GET", "/api/clients"),
                             ("GET", "/api/connections"), ("GET", "/api/mappings"), ("DELETE", "/api/clients/x"),
                             ("DELETE", "/api/connections/1"), ("POST", "/api/mappings/x/disable"),
                             ("POST", "/reload"), ("POST", "/stop")):
            status, body = ask(method, path)
            assert status == 401 and b"control_token" in body, (method, path, status, body)
            assert ask(method, path, token="wrong")[0] == 401
        status, page = ask("GET", "/")
        assert status == 200 and b"<title>wmproxy</title>" in page
        status, body = ask("GET", "/api/connections", token="s3cret-token")
        assert status == 200 and json.loads(body)["total"] == 0
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


@pytest.mark.timeout(60)
def test_an_http_mapping_whose_service_never_answers_is_cut_at_the_idle_timeout(tmp_path, certs, origin):
    """The stream of an http mapping has no timer of its own: the public connection's watch
    bounds a service that takes the request and never answers (idle_timeout), the connection's
    quota slot comes back, and the other mappings serve on."""
    import socket
    import time

    from conftest import TcpServer

    def mute(conn) -> None:  # reads what comes, answers nothing, never closes first
        while conn.recv(65536):
            pass

    service = TcpServer(mute)
    web, cport = free_port(), free_port()
    pair = Pair(tmp_path, certs, start_client=False, server_top=f'control = "127.0.0.1:{cport}"',
                server_extra=(f'map_http_bind = "127.0.0.1:{web}"\n[[center.users]]\nusername = "bob"\n'
                              f'password = "b0b"\nmax_connections = 1\n'
                              f'[proxy]\nbind = ""\nidle_timeout = "1s"\n'))
    try:
        bob = pair.start_client(http_mapping("mute", service.port, "m.test") + http_mapping("ok", origin.port, "o.test"),
                                user="bob", password="b0b", proxy=free_port())
        bob.wait_log("mapping 'ok' published", timeout=20)
        with socket.create_connection(("127.0.0.1", web), timeout=30) as s:
            started = time.monotonic()
            s.sendall(b"GET / HTTP/1.1\r\nHost: m.test\r\n\r\n")
            assert s.recv(4096) == b""  # (cut: nothing came to answer)
            took = time.monotonic() - started
        assert 0.9 <= took < 10, took
        assert host_get(web, "o.test")[1] == b"origin-A"  # (the account's one slot is free again)
        status, body = control(cport, "GET", "/api/mappings")
        rows = {m["name"]: m for m in json.loads(body)}
        assert rows["mute"]["connections"] == 0 and rows["mute"]["connections_total"] == 1
    finally:
        pair.stop()
        service.close()
