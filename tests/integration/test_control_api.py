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
