"""``wmproxy``: the Rust wmproxy's command line (proxy, run/config, check, stop, reload,
file-server, reverse-proxy, ws-proxy, version, --forever), each run for real."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT, Pair, Proc, curl, free_port, wait_port, websocket_echo

WMPROXY = str(ROOT / "bin" / "wmproxy")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, WMPROXY, *args], capture_output=True, text=True, timeout=30)


def start(tmp_path, *args: str, port: int, name: str = "wmproxy") -> Proc:
    p = Proc(list(args), port, tmp_path, program="wmproxy", name=name)
    wait_port(port, proc=p.popen)
    return p


def test_version_and_help_say_what_differs():
    from wmproxy import __version__

    assert run("version").stdout == f"wmproxy {__version__}\n"
    helped = run("proxy", "--help").stdout
    assert "differences from the Rust wmproxy, on purpose" in helped and "never crosses the wire" in helped
    assert "--two-way-tls" in helped and "--map-http-bind" in helped


def test_proxy_serves_http_and_socks5_with_the_login(tmp_path, origin):
    port, control = free_port(), free_port()
    p = start(tmp_path, "proxy", "-b", f"127.0.0.1:{port}", "--user", "u", "--pass", "p", "--flag", "5",
              "--control", f"127.0.0.1:{control}", port=port)
    try:
        url = f"http://127.0.0.1:{origin.port}/whoami"
        assert curl("-sS", "-x", f"http://u:p@127.0.0.1:{port}", url).stdout == b"origin-A"
        assert curl("-sS", "-x", f"socks5h://u:p@127.0.0.1:{port}", url).stdout == b"origin-A"
        refused = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}", url)
        assert refused.stdout == b"407"
        # --flag 5 = http + socks5: no CONNECT
        connect = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-p", "-x", f"http://u:p@127.0.0.1:{port}", url)
        assert connect.stdout != b"200", connect
        stopped = run("stop", "-u", f"http://127.0.0.1:{control}")
        assert stopped.returncode == 0 and '"stopping": true' in stopped.stdout, stopped
        assert p.popen.wait(timeout=15) == 0
    finally:
        p.stop()


def test_proxy_as_a_center_client_of_this_projects_server(tmp_path, certs, origin):
    """-S with --ts (verified against --cert's file, the name --domain) and --user/--pass: a
    center client whose local proxy's traffic leaves at the server."""
    pair = Pair(tmp_path, certs, start_client=False)
    local = free_port()
    p = None
    try:
        p = start(tmp_path, "proxy", "-S", f"127.0.0.1:{pair.center}", "--ts", "--cert", f"{certs}/ca.pem",
                  "--domain", "center.test", "--user", "alice", "--pass", "s3cret", "-b", f"127.0.0.1:{local}",
                  "--disable-control", port=local)
        p.wait_log("is up", timeout=15)
        got = curl("-sS", "-x", f"http://127.0.0.1:{local}", f"http://127.0.0.1:{origin.port}/whoami")
        assert got.stdout == b"origin-A", got
    finally:
        if p is not None:
            p.stop()
        pair.stop()


def test_file_server_with_cors_robots_and_a_header(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "a.txt").write_text("file A")
    port = free_port()
    p = start(tmp_path, "file-server", "-r", str(root), "-l", f"127.0.0.1:{port}", "--cors", "--robots",
              "User-agent: *", "-H", "+ X-Served-By wmproxy", "-b", port=port)
    try:
        got = curl("-sSi", f"http://127.0.0.1:{port}/a.txt")
        head, _, body = got.stdout.partition(b"\r\n\r\n")
        assert body == b"file A" and b"Access-Control-Allow-Origin: *" in head and b"X-Served-By: wmproxy" in head
        assert curl("-sS", f"http://127.0.0.1:{port}/robots.txt").stdout == b"User-agent: *"
        assert b"a.txt" in curl("-sS", f"http://127.0.0.1:{port}/").stdout  # (-b: browse)
    finally:
        p.stop()


def test_file_server_on_tls_too(tmp_path, ca):
    from conftest import write_cert

    root = tmp_path / "site"
    root.mkdir()
    (root / "a.txt").write_text("over TLS")
    write_cert(ca, tmp_path, "site", "files.test")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port, tls = free_port(), free_port()
    p = start(tmp_path, "file-server", "-r", str(root), "-l", f"127.0.0.1:{port}", "--listen-ssl",
              f"127.0.0.1:{tls}", "--cert", str(tmp_path / "site.pem"), "--key", str(tmp_path / "site.key"),
              "-d", "files.test", port=port)
    try:
        wait_port(tls, proc=p.popen)
        got = curl("-sS", "--cacert", str(tmp_path / "ca.pem"), "--resolve", f"files.test:{tls}:127.0.0.1",
                   f"https://files.test:{tls}/a.txt")
        assert got.stdout == b"over TLS", got
        assert curl("-sS", "-H", "Host: files.test", f"http://127.0.0.1:{port}/a.txt").stdout == b"over TLS"
    finally:
        p.stop()


def test_reverse_proxy_with_a_header_rule(tmp_path, origin):
    port = free_port()
    p = start(tmp_path, "reverse-proxy", "-f", f"127.0.0.1:{port}", "-t", f"127.0.0.1:{origin.port}", "-H",
              "proxy + X-From wmproxy", port=port)
    try:
        assert curl("-sS", f"http://127.0.0.1:{port}/whoami").stdout == b"origin-A"
        assert b"X-From: wmproxy" in curl("-sS", f"http://127.0.0.1:{port}/headers").stdout
    finally:
        p.stop()


def test_ws_proxy_both_ways(tmp_path, mirror):
    """tcp2ws: TCP clients to a websocket echo; ws2tcp: a websocket client to a TCP server."""
    from websockets.sync.client import connect

    ws = websocket_echo()
    to_ws, to_tcp = free_port(), free_port()
    a = start(tmp_path, "ws-proxy", "-f", f"127.0.0.1:{to_ws}", "-t", f"127.0.0.1:{ws.socket.getsockname()[1]}",
              "--mode", "tcp2ws", port=to_ws, name="tcp2ws")
    b = start(tmp_path, "ws-proxy", "-f", f"127.0.0.1:{to_tcp}", "-t", f"127.0.0.1:{mirror}",
              "--mode", "ws2tcp", port=to_tcp, name="ws2tcp")
    try:
        with socket.create_connection(("127.0.0.1", to_ws), timeout=10) as s:
            s.sendall(b"through a websocket")
            assert s.recv(100) == b"through a websocket"
        with connect(f"ws://127.0.0.1:{to_tcp}/", open_timeout=10) as c:
            c.send(b"hello")
            assert c.recv(timeout=10) == b"hello"
    finally:
        a.stop()
        b.stop()
        ws.shutdown()


def test_run_check_and_reload_a_file_of_the_original(tmp_path, origin):
    port, control = free_port(), free_port()
    conf = tmp_path / "reverse.toml"
    conf.write_text(f'control = "127.0.0.1:{control}"\n[proxy]\nbind_addr = "127.0.0.1:{port}"\nflag = 7\n')
    checked = run("check", "-c", str(conf))
    assert checked.returncode == 0 and "read as a Rust wmproxy config" in checked.stdout, checked
    assert "flag = 7 -> proxy.flag = 'http https socks5'" in checked.stdout
    p = start(tmp_path, "config", "-c", str(conf), "-v", port=port)
    try:
        assert curl("-sS", "-x", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{origin.port}/whoami").stdout == \
            b"origin-A"
        conf.write_text(f'control = "127.0.0.1:{control}"\n[proxy]\nbind_addr = "127.0.0.1:{port}"\nflag = 4\n')
        reloaded = run("reload", "-c", str(conf))
        assert reloaded.returncode == 0 and '"ok": true' in reloaded.stdout, reloaded
        refused = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}",
                       f"http://127.0.0.1:{origin.port}/whoami")
        assert refused.stdout != b"200"  # (socks5 only now)
        assert curl("-sS", "-x", f"socks5h://127.0.0.1:{port}", f"http://127.0.0.1:{origin.port}/whoami").stdout == \
            b"origin-A"
    finally:
        p.stop()
    bad = run("check", "-c", str(conf.with_name("nope.toml")))
    assert bad.returncode == 1 and "cannot read the file" in bad.stderr


def test_forever_starts_the_program_again_when_it_dies(tmp_path, origin):
    port = free_port()
    p = Proc(["--forever", "proxy", "-b", f"127.0.0.1:{port}", "--disable-control"], port, tmp_path,
             program="wmproxy", name="forever")
    try:
        wait_port(port, proc=p.popen)
        (child,) = psutil.Process(p.popen.pid).children()
        child.send_signal(signal.SIGKILL)
        p.wait_log("starting it again in 1 s", timeout=10)
        deadline = time.monotonic() + 15
        while True:
            kids = psutil.Process(p.popen.pid).children()
            if kids and kids[0].pid != child.pid:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        wait_port(port, proc=p.popen)
        assert curl("-sS", "-x", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{origin.port}/whoami").stdout == \
            b"origin-A"
        p.popen.send_signal(signal.SIGTERM)  # passed on: the program stops, and so does the supervisor
        assert p.popen.wait(timeout=20) == 0
        assert not kids[0].is_running() or kids[0].status() == psutil.STATUS_ZOMBIE
    finally:
        p.stop()


@pytest.mark.parametrize("args,says", [
    (["proxy", "--tc", "--cert", "a.pem", "--mode", "server", "-b", "127.0.0.1:1"], "cert and key go together"),
    (["ws-proxy", "-t", "127.0.0.1:1", "--mode", "udp"], "invalid choice: 'udp'"),
    (["proxy", "--daemon", "--forever"], "--daemon and --forever cannot go together"),
    (["file-server", "-e", "md"], "expected EXT=TYPE"),
    (["stop", "-u", "http://10.9.9.9:8837"], "is reachable from other hosts: set control_token"),
    (["stop", "--pidfile", "/nonexistent/wmproxy.pid"], "names no process to stop"),
])
def test_bad_commands_say_why(args, says):
    got = run(*args)
    assert got.returncode != 0 and says in got.stderr, got
