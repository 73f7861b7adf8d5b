"""The PROXY protocol in: HAProxy (send-proxy, send-proxy-v2) in front of the forward proxy,
``[http]``, the center server and its mapping ports; the visitor's address (a loopback address
of its own, 127.0.0.2) stands for the balancer's (127.0.0.3) in logs, ACLs, per-address limits
and forwarded headers. And an attacker's headers: untrusted, malformed, late."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import Pair, curl, free_port, read_response, recv_all, source_connection, wait_port
from test_center import http_mapping, passthrough_mapping, tcp_mapping

BALANCER = "127.0.0.3"  # HAProxy's source address towards wmproxy
VISITOR = "127.0.0.2"
TRUST = f'proxy_protocol = true\nproxy_protocol_from = ["{BALANCER}/32"]\n'
SENDS = ["send-proxy", "send-proxy-v2"]


def front(listen: int, target: int, send: str) -> str:
    """HAProxy sections: ``listen`` forwarded to wmproxy's ``target`` with a PROXY header."""
    return (f"frontend f{listen}\n  bind 127.0.0.1:{listen}\n  default_backend b{listen}\n"
            f"backend b{listen}\n  server w 127.0.0.1:{target} {send} source {BALANCER}\n")


def fetch(port: int, url: str, source: str, proxy: str = "http") -> str:
    """The body and the status, from curl through a proxy on ``port`` from ``source``."""
    return curl("-s", "--interface", source, "-x", f"{proxy}://127.0.0.1:{port}", url,
                "-w", "\n%{http_code}").stdout.decode()


def closed_unanswered(s: socket.socket) -> bool:
    """The peer closed (or reset) ``s`` without sending a byte."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("send", SENDS)
def test_forward_proxy_behind_haproxy_sees_the_visitor(start_proxy, haproxy, origin, echo_server, send):
    p = start_proxy(config=f'[proxy]\nbind = "127.0.0.1:{{port}}"\n{TRUST}deny = ["127.0.0.66"]\n'
                           f'max_connections_per_ip = 1\n')
    h = free_port()
    haproxy(front(h, p.port, send), h)
    url = f"http://127.0.0.1:{origin.port}/whoami"
    assert fetch(h, url, VISITOR) == "origin-A\n200"
    assert fetch(h, url, VISITOR, "socks5h") == "origin-A\n200"
    assert fetch(h, url, "127.0.0.66").endswith("403")  # a deny of the visitor holds behind the balancer
    log = p.wait_log("127.0.0.66")
    assert f'{VISITOR} - - [' in log and f"{VISITOR}:" in log and f"{BALANCER}" not in log
    # max_connections_per_ip counts visitors, not the balancer: one tunnel held by 127.0.0.2...
    with source_connection(h, VISITOR) as held:
        held.sendall(f"CONNECT 127.0.0.1:{echo_server.port} HTTP/1.1\r\n\r\n".encode())
        assert held.recv(100).startswith(b"HTTP/1.1 200")
        assert fetch(h, url, "127.0.0.4").endswith("200")  # ...another visitor still gets in
        assert not fetch(h, url, VISITOR).endswith("200")  # ...the same one does not
        assert f"from {VISITOR}: max_connections_per_ip (1) reached" in p.wait_log("max_connections_per_ip")
    # a peer that is not the balancer may not speak at all, header or not
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"PROXY TCP4 10.9.9.9 127.0.0.1 1000 80\r\nGET / HTTP/1.1\r\n\r\n")
        assert closed_unanswered(s)
    assert "not in proxy_protocol_from" in p.wait_log("not in proxy_protocol_from")
    assert "10.9.9.9" not in p.log()


@pytest.mark.parametrize("send", SENDS)
def test_http_server_behind_haproxy_forwards_the_visitor(start_proxy, haproxy, origin, send):
    p = start_proxy(bind=False, config=f'''[[http.server]]
bind = "127.0.0.1:{{port}}"
{TRUST}
[[http.server.location]]
rule = "/"
proxy_url = "http://127.0.0.1:{origin.port}"
headers = ["proxy + X-Real-IP {{client_ip}}"]
deny_ip = ["127.0.0.66"]
''')
    h = free_port()
    haproxy(front(h, p.port, send), h)
    got = curl("-s", "--interface", VISITOR, f"http://127.0.0.1:{h}/headers").stdout.decode()
    assert f"X-Forwarded-For: {VISITOR}" in got and f"X-Real-IP: {VISITOR}" in got, got
    assert curl("-s", "--interface", "127.0.0.66", f"http://127.0.0.1:{h}/headers", "-o", "/dev/null",
                "-w", "%{http_code}").stdout == b"403"
    log = p.wait_log("127.0.0.66")
    assert f'{VISITOR} - - [' in log and BALANCER not in log


def test_center_server_and_its_public_side_behind_haproxy(tmp_path, certs, haproxy, echo_server, origin):
    remote, mport = free_port(), free_port()
    p = Pair(tmp_path, certs, start_client=False,
             server_extra=f'{TRUST}map_proxy_protocol = true\nmap_proxy_protocol_from = ["{BALANCER}"]\n'
                          f'map_http_bind = "127.0.0.1:{mport}"\n')
    try:
        link, pub, web = free_port(), free_port(), free_port()
        haproxy(front(link, p.center, "send-proxy-v2") + front(pub, remote, "send-proxy")
                      + front(web, mport, "send-proxy-v2"), link, pub, web)
        p.center = link  # the client dials the balancer
        p.client = p.start_client(tcp_mapping("echo", echo_server.port, remote)
                                  + http_mapping("site", origin.port, "a.test"))
        p.wait_link()
        # the link's peer is the client's address (127.0.0.1), not the balancer's
        assert "connected from 127.0.0.1:" in p.server.wait_log("connected from")
        wait_port(remote)
        with source_connection(pub, VISITOR) as s:
            s.sendall(b"hello")
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s).startswith(b"got 5 ")
        assert f"{VISITOR}:" in p.server.wait_log("mapping echo (alice) done")
        with source_connection(web, VISITOR) as s:
            s.sendall(b"GET /headers HTTP/1.1\r\nHost: a.test\r\n\r\n")
            head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 200") and f"X-Forwarded-For: {VISITOR}".encode() in body, body
        assert BALANCER not in p.server.log()
    finally:
        p.stop()


V2_BAD_FAMILY = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x41]) + struct.pack("!H", 12) + bytes(12)
V2_SHORT = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 200) + bytes(20)


@pytest.mark.parametrize("garbage,says", [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1000", "not complete within 1s"),  # truncated, then silence
    (b"PROXY TCP4 " + b"1" * 120 + b"\r\n", "without CRLF in its first 107 bytes"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "not a PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n", "invalid port"),
    (V2_SHORT, "not complete within 1s"),  # a length past the data
    (V2_BAD_FAMILY, "unknown address family 4"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12), "version 3"),
], ids=["truncated", "v1-oversized", "signature", "v1-port", "v2-length", "v2-family", "v2-version"])
def test_malformed_headers_from_the_balancer_are_refused(start_proxy, origin, garbage, says):
    p = start_proxy(config=f'[proxy]\nbind = "127.0.0.1:{{port}}"\n{TRUST}handshake_timeout = "1s"\n')
    started = time.monotonic()
    with source_connection(p.port, BALANCER) as s:
        s.sendall(garbage)
        assert closed_unanswered(s)
    assert time.monotonic() - started < 5
    assert says in p.wait_log(says)
    # the next one, well formed, is served (and LOCAL, a balancer's health check, is the balancer's own)
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    with source_connection(p.port, BALANCER) as s:
        s.sendall(local + f"GET http://127.0.0.1:{origin.port}/whoami HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, body = read_response(s)
    assert head.startswith(b"HTTP/1.1 200") and body == b"origin-A"
    assert f"{BALANCER} - - [" in p.wait_log(f"{BALANCER} - - [")


def test_a_header_trickled_byte_by_byte_is_taken_exactly(start_proxy, origin):
    """A v1 header sent a byte at a time, the request in the same write as its last byte: the
    reader takes the header and not one byte more."""
    p = start_proxy(config=f'[proxy]\nbind = "127.0.0.1:{{port}}"\n{TRUST}')
    header = b"PROXY TCP6 2001:db8::7 ::1 40000 80\r\n"
    with source_connection(p.port, BALANCER) as s:
        for b in header[:-1]:
            s.sendall(bytes([b]))
            time.sleep(0.005)
        s.sendall(header[-1:] + f"GET http://127.0.0.1:{origin.port}/whoami HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, body = read_response(s)
    assert head.startswith(b"HTTP/1.1 200") and body == b"origin-A"
    assert "2001:db8::7 - - [" in p.wait_log("2001:db8::7")


def test_http_behind_an_http_proxy_believes_only_real_ip_from(start_proxy, haproxy, origin):
    """[http] real_ip_from: HAProxy (mode http, option forwardfor) in front; its X-Forwarded-For
    gives the client's address; the same header from anyone else is not believed."""
    p = start_proxy(bind=False, config=f'''[http]
real_ip_from = ["{BALANCER}/32"]
[[http.server]]
bind = "127.0.0.1:{{port}}"
[[http.server.location]]
rule = "/"
proxy_url = "http://127.0.0.1:{origin.port}"
deny_ip = ["127.0.0.66"]
''')
    h = free_port()
    haproxy(f"frontend web\n  mode http\n  option forwardfor\n  bind 127.0.0.1:{h}\n  default_backend app\n"
            f"backend app\n  mode http\n  server w 127.0.0.1:{p.port} source {BALANCER}\n", h)
    got = curl("-s", "--interface", VISITOR, f"http://127.0.0.1:{h}/headers").stdout.decode()
    # X-Real-IP: the visitor; X-Forwarded-For: the chain of hops, the balancer last
    assert f"X-Real-IP: {VISITOR}" in got and f"X-Forwarded-For: {VISITOR}, {BALANCER}" in got, got
    assert curl("-s", "--interface", "127.0.0.66", f"http://127.0.0.1:{h}/headers", "-o", "/dev/null",
                "-w", "%{http_code}").stdout == b"403"
    # a client of its own may say what it likes: its address is its own
    got = curl("-s", "--interface", "127.0.0.5", "-H", "X-Forwarded-For: 127.0.0.2",
               f"http://127.0.0.1:{p.port}/headers").stdout.decode()
    assert "X-Real-IP: 127.0.0.5" in got and "X-Forwarded-For: 127.0.0.2, 127.0.0.5" in got, got
    log = p.wait_log("127.0.0.5 - - [")
    assert f'{VISITOR} - - [' in log and "127.0.0.66 - - [" in log and f"{BALANCER} - - [" not in log


def source_echo(port: int) -> str:
    """HAProxy sections: an HTTP answer of the source address it was told, on a port that
    takes a PROXY header first (accept-proxy)."""
    return (f"frontend echo{port}\n  mode http\n  bind 127.0.0.1:{port} accept-proxy\n"
            f'  http-request return status 200 content-type text/plain lf-string "src=%[src] dst=%[dst]"\n')


def wait_for(read, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while text not in (got := read()):
        assert time.monotonic() < deadline, got
        time.sleep(0.05)
    return got


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_stream_passes_the_visitor_on_both_ways(start_proxy, haproxy, version):
    """HAProxy send-proxy -> [stream] (proxy_protocol) -> send_proxy_protocol -> HAProxy
    accept-proxy: the last hop hears of the visitor, and so does a client without a balancer."""
    echo, front_port, plain = free_port(), free_port(), free_port()
    p = start_proxy(bind=False, config=f'''[stream]
[[stream.upstream]]
name = "echo"
server = [{{ addr = "127.0.0.1:{echo}" }}]
send_proxy_protocol = "{version}"
[[stream.server]]
bind = "127.0.0.1:{{port}}"
up_name = "echo"
{TRUST}
[[stream.server]]
bind = "127.0.0.1:{plain}"
up_name = "echo"
''')
    hap = haproxy(source_echo(echo) + front(front_port, p.port, "send-proxy-v2" if version == "v1" else "send-proxy"),
                  echo, front_port)
    got = curl("-s", "--interface", VISITOR, f"http://127.0.0.1:{front_port}/").stdout.decode()
    assert got == f"src={VISITOR} dst=127.0.0.1", got
    got = curl("-s", "--interface", "127.0.0.5", f"http://127.0.0.1:{plain}/").stdout.decode()
    assert got == "src=127.0.0.5 dst=127.0.0.1", got
    wait_for(hap.log, "127.0.0.5:")  # HAProxy's own log names the visitors, not wmproxy's address
    lines = [line for line in hap.log().splitlines() if f"echo{echo} echo{echo}/" in line]  # (its answers)
    sources = {line.split(":", 1)[0] for line in lines}  # (127.0.0.1: the probes of the ports by the test)
    assert {VISITOR, "127.0.0.5"} <= sources and BALANCER not in sources, lines
    assert f"{VISITOR}:" in p.wait_log(f"{VISITOR}:")


def test_mappings_tell_the_service_who_the_visitor_is(tmp_path, certs, haproxy, origin):
    """The server tells the center client each public visitor's address (CREATE with PEER); a
    mapping with proxy_protocol starts its connection to the service with it: HAProxy
    (accept-proxy) as the service answers with the visitor's address, whether the visitor came
    straight or through a balancer in front of the server."""
    remote, mport, echo, balanced, exit_port = free_port(), free_port(), free_port(), free_port(), free_port()
    tls_port, tls_echo = free_port(), free_port()
    p = Pair(tmp_path, certs, start_client=False,
             server_extra=f'map_http_bind = "127.0.0.1:{mport}"\nmap_https_bind = "127.0.0.1:{tls_port}"\n'
                          f'[proxy]\nbind = "127.0.0.1:{free_port()}"\n')
    try:
        pem = tmp_path / "echo.pem"  # (HAProxy takes the certificate and its key in one file)
        pem.write_text((certs / "server.pem").read_text() + (certs / "server.key").read_text())
        hap = haproxy(source_echo(echo) + source_echo(tls_echo).replace("accept-proxy", f"accept-proxy ssl crt {pem}"),
                      echo, tls_echo)
        p.client = p.start_client(
            tcp_mapping("svc", echo, remote) + 'proxy_protocol = "v2"\n'
            + http_mapping("site", echo, "a.test") + 'proxy_protocol = "v1"\n'
            + passthrough_mapping("tls", tls_echo, "center.test") + 'proxy_protocol = "v2"\n'
            + f'[[mappings]]\nname = "exit"\nmode = "proxy"\nremote_bind = "127.0.0.1:{exit_port}"\n')
        p.wait_link()
        wait_port(remote)
        got = curl("-s", "--interface", VISITOR, f"http://127.0.0.1:{remote}/").stdout.decode()
        assert got == f"src={VISITOR} dst=127.0.0.1", got
        got = curl("-s", "--interface", "127.0.0.6", "-H", "Host: a.test", f"http://127.0.0.1:{mport}/").stdout.decode()
        assert got == "src=127.0.0.6 dst=127.0.0.1", got
        assert f"{VISITOR}:" in p.client.wait_log("mapping 'svc': connection done")
        # an https mapping passed through by SNI: the TLS service hears of the visitor first
        got = curl("-s", "--interface", "127.0.0.9", "--cacert", str(certs / "ca.pem"), "--resolve",
                   f"center.test:{tls_port}:127.0.0.1", f"https://center.test:{tls_port}/").stdout.decode()
        assert got == "src=127.0.0.9 dst=127.0.0.1", got
        # a proxy mapping: the client's forward proxy serves (and logs) the visitor
        assert curl("-s", "--interface", "127.0.0.7", "-x", f"http://127.0.0.1:{exit_port}",
                    f"http://127.0.0.1:{origin.port}/whoami").stdout == b"origin-A"
        assert "127.0.0.7 - - [" in p.client.wait_log("127.0.0.7 - - [")
        # the client's local proxy: the server logs the stream's client beside the link's address
        assert curl("-s", "--interface", "127.0.0.8", "-x", f"http://127.0.0.1:{p.proxy}",
                    f"http://127.0.0.1:{origin.port}/whoami").stdout == b"origin-A"
        assert "(for 127.0.0.8:" in p.server.wait_log("(for 127.0.0.8:")
        # and behind a balancer in front of the server's public side
        p.server.stop()
        p.server_conf.write_text(p.server_conf.read_text().replace(
            "[proxy]", f'map_proxy_protocol = true\nmap_proxy_protocol_from = ["{BALANCER}"]\n[proxy]'))
        p.server = p.start("server", p.server_conf)
        haproxy(front(balanced, remote, "send-proxy"), balanced)
        wait_for(lambda: p.client.log().split("lost:", 1)[-1], "is up (attempt", timeout=20)  # (linked again)
        wait_port(remote)
        got = curl("-s", "--interface", VISITOR, f"http://127.0.0.1:{balanced}/").stdout.decode()
        assert got == f"src={VISITOR} dst=127.0.0.1", got
        assert f"{VISITOR}:" in hap.log()
    finally:
        p.stop()


@pytest.fixture
def nginx_pp(tmp_path):
    """nginx listening with proxy_protocol: it answers with the address the header named, its
    connection number (reuse shows), and logs $proxy_protocol_addr."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        pytest.skip("nginx is not installed (make test installs it)")
    port = free_port()
    conf = tmp_path / "nginx-pp.conf"
    conf.write_text(f"""user root; worker_processes 1; daemon off;
pid {tmp_path}/nginx-pp.pid; error_log {tmp_path}/nginx-pp.err;
events {{ worker_connections 64; }}
http {{ client_body_temp_path {tmp_path}/b; proxy_temp_path {tmp_path}/p; fastcgi_temp_path {tmp_path}/f;
  uwsgi_temp_path {tmp_path}/u; scgi_temp_path {tmp_path}/s;
  log_format pp '$proxy_protocol_addr:$proxy_protocol_port via $remote_addr';
  access_log {tmp_path}/nginx-pp.log pp;
  server {{ listen 127.0.0.1:{port} proxy_protocol;
    location / {{ return 200 "$proxy_protocol_addr:$proxy_protocol_port conn=$connection"; }} }} }}
""")
    proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    yield port, tmp_path / "nginx-pp.log"
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_http_upstream_hears_of_each_client_and_keeps_its_connection_to_it(start_proxy, nginx_pp, version):
    """[[http.upstream]] send_proxy_protocol in front of nginx (listen ... proxy_protocol): each
    client connection gets upstream connections of its own, kept across its requests."""
    nport, nlog = nginx_pp
    p = start_proxy(bind=False, config=f'''[[http.upstream]]
name = "pp"
server = [{{ addr = "127.0.0.1:{nport}" }}]
send_proxy_protocol = "{version}"
health_check = {{ interval = "0.1s", fall = 1 }}
[[http.server]]
bind = "127.0.0.1:{{port}}"
[[http.server.location]]
rule = "/"
proxy_url = "http://pp"
''')
    # its health checks speak the PROXY protocol too (LOCAL / UNKNOWN: its own connections)
    wait_for(lambda: nlog.read_text() if nlog.exists() else "", "via 127.0.0.1")
    time.sleep(0.5)
    assert "is out" not in p.log()
    answers = {}
    for source in (VISITOR, "127.0.0.5"):
        with source_connection(p.port, source) as s:
            answers[source] = []
            for _ in range(2):  # two requests on one client connection
                s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                head, body = read_response(s)
                assert head.startswith(b"HTTP/1.1 200"), head
                answers[source].append(body.decode())
            port = s.getsockname()[1]
        first, second = answers[source]
        assert first.startswith(f"{source}:{port} conn=") and first == second, answers  # the same connection
    assert answers[VISITOR][0] != answers["127.0.0.5"][0]
    log = wait_for(lambda: nlog.read_text() if nlog.exists() else "", "127.0.0.5:")
    assert f"{VISITOR}:" in log and "via 127.0.0.1" in log


def test_a_flood_of_strangers_is_refused_in_few_log_lines(start_proxy, origin):
    p = start_proxy(config=f'[proxy]\nbind = "127.0.0.1:{{port}}"\n{TRUST}')
    started = time.monotonic()
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"PROXY TCP4 10.1.1.1 127.0.0.1 1 2\r\n")
            assert closed_unanswered(s)
    took = time.monotonic() - started
    time.sleep(1.1)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:  # the next line says how many
        assert closed_unanswered(s)
    log = p.wait_log("more refused since the last line")
    lines = log.count("not in proxy_protocol_from")
    assert 2 <= lines <= took + 3, log  # one a second at most, whatever the flood
    # the balancer is served all along
    with source_connection(p.port, BALANCER) as s:
        s.sendall(f"PROXY TCP4 10.1.1.1 127.0.0.1 1 2\r\nGET http://127.0.0.1:{origin.port}/whoami HTTP/1.1\r\n"
                  f"Host: x\r\n\r\n".encode())
        head, body = read_response(s)
    assert head.startswith(b"HTTP/1.1 200") and body == b"origin-A"


def test_reload_turns_the_proxy_protocol_on_for_new_connections(start_proxy, origin, tmp_path):
    p = start_proxy(config='[proxy]\nbind = "127.0.0.1:{port}"\n')
    request = f"GET http://127.0.0.1:{origin.port}/whoami HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    held = socket.create_connection(("127.0.0.1", p.port), timeout=10)  # a live connection from before
    try:
        held.sendall(request)  # (answered: accepted under the old settings; a connection still in the
        assert read_response(held)[1] == b"origin-A"  # listen queue at the reload is a new one)
        conf = next(tmp_path.glob("conf-*.toml"))
        conf.write_text(conf.read_text() + TRUST)
        p.popen.send_signal(signal.SIGHUP)
        p.wait_log("reloaded")
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:  # a new one: refused
            s.sendall(request)
            assert closed_unanswered(s)
        with source_connection(p.port, BALANCER) as s:
            s.sendall(b"PROXY TCP4 10.7.7.7 127.0.0.1 1 2\r\n" + request)
            assert read_response(s)[1] == b"origin-A"
        assert "10.7.7.7 - - [" in p.wait_log("10.7.7.7")
        held.sendall(request)  # the old one keeps the settings it came with
        assert read_response(held)[1] == b"origin-A"
    finally:
        held.close()
