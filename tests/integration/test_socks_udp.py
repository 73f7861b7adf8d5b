"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7) with PySocks and with raw sockets."""

from __future__ import annotations

import socket
import time

import psutil
import socks

from wmproxy.prot import socks as s5

UDP_ON = "--udp-bind", "127.0.0.1:0"


def associate(port: int, auth: tuple[str, str] | None = None, client_port: int = 0):
    """A raw UDP ASSOCIATE -> (TCP control connection, reply code, relay (host, port))."""
    tcp = socket.create_connection(("127.0.0.1", port), timeout=5)
    if auth:
        tcp.sendall(bytes((5, 1, s5.METHOD_USERPASS)))
        assert tcp.recv(2) == bytes((5, s5.METHOD_USERPASS))
        user, password = auth
        tcp.sendall(bytes((1, len(user))) + user.encode() + bytes((len(password),)) + password.encode())
        assert tcp.recv(2) == b"\x01\x00"
    else:
        tcp.sendall(bytes((5, 1, s5.METHOD_NO_AUTH)))
        assert tcp.recv(2) == bytes((5, s5.METHOD_NO_AUTH))
    tcp.sendall(s5.encode_request(s5.CMD_UDP_ASSOCIATE, "0.0.0.0", client_port))
    (rep, host, relay_port), _ = s5.parse_reply(tcp.recv(300))
    return tcp, rep, (host, relay_port)


def udp_socket(timeout: float = 3.0) -> socket.socket:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(timeout)
    return u


def test_pysocks_udp_to_an_echo_server(start_proxy, udp_echo):
    echo = udp_echo(b"echo:")
    p = start_proxy(*UDP_ON, "--username", "u", "--password", "pw")
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.set_proxy(socks.SOCKS5, "127.0.0.1", p.port, username="u", password="pw")
    s.settimeout(5)
    try:
        for size in (1, 1200, 30000, 65000):
            data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            s.sendto(data, ("127.0.0.1", echo.port))
            got, sender = s.recvfrom(65535)
            assert got == b"echo:" + data and sender == ("127.0.0.1", echo.port)
        s.sendto(b"by name", ("localhost", echo.port))  # the proxy resolves the target
        assert s.recvfrom(100)[0] == b"echo:by name"
    finally:
        s.close()
    log = p.wait_log("socks5-udp")
    assert "udp relay 127.0.0.1:" in log


def test_only_the_associating_client_is_relayed_and_fragments_are_dropped(start_proxy, udp_echo):
    echo = udp_echo()
    p = start_proxy(*UDP_ON)
    mine, stranger = udp_socket(), udp_socket(0.5)
    tcp, rep, relay = associate(p.port, client_port=mine.getsockname()[1])
    try:
        assert rep == s5.REP_SUCCEEDED and relay[0] == "127.0.0.1"
        header = s5.encode_udp_header("127.0.0.1", echo.port)
        stranger.sendto(header + b"from a stranger", relay)
        try:
            stranger.recv(100)
            raise AssertionError("the stranger's datagram was relayed")
        except socket.timeout:
            pass
        mine.sendto(b"\0\0\x01" + header[3:] + b"fragment 1", relay)  # FRAG != 0
        mine.sendto(header + b"whole", relay)
        got = mine.recv(100)
        assert got == header + b"whole"  # the fragment was dropped, the next datagram relayed
    finally:
        tcp.close()
        mine.close()
        stranger.close()


def test_answers_only_from_targets_the_client_sent_to(start_proxy, udp_echo):
    echo = udp_echo()
    p = start_proxy(*UDP_ON)
    mine = udp_socket(0.5)
    tcp, rep, relay = associate(p.port)
    try:
        mine.sendto(s5.encode_udp_header("127.0.0.1", echo.port) + b"hi", relay)
        assert mine.recv(100).endswith(b"hi")
        # find the association's outbound socket: it is the proxy's only other UDP socket
        proc = psutil.Process(p.popen.pid)
        outbound = [c.laddr for c in proc.net_connections(kind="udp") if c.laddr.port != relay[1]]
        assert len(outbound) == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
            intruder.sendto(b"unsolicited", ("127.0.0.1", outbound[0].port))
        try:
            raise AssertionError(f"relayed an unsolicited datagram: {mine.recv(100)!r}")
        except socket.timeout:
            pass
    finally:
        tcp.close()
        mine.close()


def test_closing_the_tcp_connection_ends_the_association(start_proxy, udp_echo):
    echo = udp_echo()
    p = start_proxy(*UDP_ON)
    proc = psutil.Process(p.popen.pid)
    mine = udp_socket()
    tcp, rep, relay = associate(p.port)
    mine.sendto(s5.encode_udp_header("127.0.0.1", echo.port) + b"one", relay)
    assert mine.recv(100).endswith(b"one")
    assert len(proc.net_connections(kind="udp")) == 2  # relay + outbound
    tcp.close()
    deadline = time.monotonic() + 5
    while proc.net_connections(kind="udp") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.net_connections(kind="udp") == []
    mine.connect(relay)
    mine.send(s5.encode_udp_header("127.0.0.1", echo.port) + b"two")
    try:
        mine.recv(100)
        raise AssertionError("the relay still answers")
    except (ConnectionRefusedError, socket.timeout):
        pass
    mine.close()
    assert "client closed the TCP connection" in p.wait_log("socks5-udp")


def test_udp_associate_is_refused_unless_enabled(start_proxy):
    p = start_proxy()
    tcp, rep, _ = associate(p.port)
    tcp.close()
    assert rep == s5.REP_COMMAND_NOT_SUPPORTED


def test_udp_bind_needs_port_zero(start_proxy, tmp_path):
    import subprocess
    from conftest import ROOT
    conf = tmp_path / "udp.toml"
    conf.write_text('[proxy]\nudp_bind = "127.0.0.1:1080"\n')
    r = subprocess.run([str(ROOT / "bin/wmproxy-server"), "--check", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert "proxy.udp_bind" in r.stderr and "port 0" in r.stderr and str(conf) in r.stderr
