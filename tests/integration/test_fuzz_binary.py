"""A fuzz run of the binary protocols strangers speak to wmproxy: SOCKS5 (greeting, login,
request, every address type), SOCKS4/4a, random first bytes, PROXY protocol v1 and v2 headers
(on the forward proxy and on a ``[stream]`` listener), SOCKS5 UDP ASSOCIATE datagrams and the
websocket frames of a ``ws2tcp`` listener; each message taken from a well-formed one and
mutated (bytes changed, cut, inserted, appended). No log may hold an internal error or a
line with a control character (a client's bytes forging a line or driving a terminal), and a
good client of each protocol must be served afterwards. This run found a SOCKS4a host name
written to the log as it came (a newline forged a line) and wsproto's UnicodeDecodeError.

The budget is WMPROXY_FUZZ_SECONDS (default 8 s in ``make test``; ``make fuzz`` runs longer)."""

from __future__ import annotations

import os
import random
import socket
import struct
import time

from conftest import TcpServer, UdpEcho, assert_logs_clean, free_port

BUDGET = float(os.environ.get("WMPROXY_FUZZ_SECONDS", "8"))
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class Fuzz:
    def __init__(self, rng: random.Random, echo: int, udp_echo: int) -> None:
        self.rng, self.echo, self.udp_echo = rng, echo, udp_echo

    def bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def mutate(self, data: bytes) -> bytes:
        rng, b = self.rng, bytearray(data)
        for _ in range(rng.randint(0, 3)):
            roll = rng.random()
            if roll < 0.4 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif roll < 0.6 and b:
                del b[rng.randrange(len(b)):]
            elif roll < 0.8:
                b[rng.randrange(len(b) + 1):0] = self.bytes(rng.randint(1, 8))
            else:
                b += self.bytes(rng.randint(0, 300))
        return bytes(b)

    def address(self) -> bytes:
        rng, roll = self.rng, self.rng.random()
        if roll < 0.4:
            return b"\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", rng.choice((self.echo, 0, 65535)))
        if roll < 0.7:
            name = rng.choice((b"localhost", b"127.0.0.1", b"::1", b"a" * 255, b"a\nb", b"\x1b[2J", b"caf\xc3\xa9",
                               self.bytes(rng.randint(0, 20))))
            return b"\x03" + bytes([len(name) & 255]) + name + struct.pack(">H", rng.choice((self.echo, 0)))
        if roll < 0.85:
            return b"\x04" + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack(">H", self.echo)
        return bytes([rng.randrange(256)]) + self.bytes(rng.randint(0, 20))

    def socks5(self) -> list[bytes]:
        rng = self.rng
        methods = rng.choice((b"\x00", b"\x02", b"\x00\x02", b"", self.bytes(rng.randint(0, 255))))
        login = b"\x01\x01u\x01" + rng.choice((b"p", b"x", b""))
        if rng.random() < 0.2:
            login = b"\x01\xff" + self.bytes(255) + b"\xff" + self.bytes(255)
        request = b"\x05" + bytes([rng.choice((1, 1, 2, 3, 0, 9)), rng.choice((0, 0, 1))]) + self.address()
        return [self.mutate(b"\x05" + bytes([len(methods) & 255]) + methods), self.mutate(login),
                self.mutate(request) + self.bytes(rng.randint(0, 100))]

    def socks4(self) -> list[bytes]:
        rng = self.rng
        user = rng.choice((b"", b"u", b"x" * 300, b"a\nb", self.bytes(rng.randint(0, 30))))
        if rng.random() < 0.5:
            host = rng.choice((b"localhost", b"127.0.0.1", b"", b"a" * 300, b"x\n2026 forged", b"\x1b[31m",
                               self.bytes(rng.randint(0, 30))))
            return [self.mutate(b"\x04\x01" + struct.pack(">H", self.echo) + b"\x00\x00\x00\x01" + user + b"\x00"
                                + host + b"\x00") + self.bytes(rng.randint(0, 50))]
        return [self.mutate(b"\x04" + bytes([rng.choice((1, 2, 3))]) + struct.pack(">H", self.echo)
                            + socket.inet_aton("127.0.0.1") + user + b"\x00")]

    def proxy_v1(self) -> bytes:
        rng = self.rng
        return self.mutate(b" ".join((b"PROXY", rng.choice((b"TCP4", b"TCP6", b"UNKNOWN", b"TCP5", b"")),
                                      rng.choice((b"1.2.3.4", b"::1", b"999.1.1.1", b"")),
                                      rng.choice((b"5.6.7.8", b"x")), rng.choice((b"1234", b"99999", b"-1", b"+1")),
                                      rng.choice((b"80", b"", b"65536")))) + rng.choice((b"\r\n", b"\n", b"")))

    def proxy_v2(self) -> bytes:
        rng = self.rng
        body = self.bytes(rng.choice((12, 36, 216, 0, 5, rng.randint(0, 600))))
        if rng.random() < 0.3:  # addresses, then TLVs whose lengths may lie
            body = socket.inet_aton("1.2.3.4") + socket.inet_aton("5.6.7.8") + b"\x04\xd2\x00\x50"
            for _ in range(rng.randint(1, 5)):
                value = self.bytes(rng.randint(0, 40))
                body += bytes([rng.randrange(256)]) + struct.pack(
                    ">H", rng.choice((len(value), len(value) + 5, 0, 65535))) + value
        length = rng.choice((len(body), len(body), 0, 65535, len(body) + 1, max(0, len(body) - 1)))
        return self.mutate(V2_SIGNATURE + bytes([rng.choice((0x21, 0x20, 0x11, 0x22, rng.randrange(256))),
                                                  rng.choice((0x11, 0x21, 0x31, 0x00, 0x12, rng.randrange(256)))])
                           + struct.pack(">H", length) + body)

    def websocket(self) -> list[bytes]:
        rng = self.rng
        upgrade = (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        out = [self.mutate(upgrade) if rng.random() < 0.2 else upgrade]
        for _ in range(rng.randint(1, 6)):
            payload = self.bytes(rng.choice((0, 5, 125, 126, 200, 70000, rng.randint(0, 2000))))
            masked = rng.random() < 0.9
            n = len(payload) if rng.random() < 0.9 else rng.choice((2 ** 63 - 1, 2 ** 64 - 1, 2 ** 32, 1 << 26))
            bit = 0x80 if masked else 0
            if n < 126:
                length = bytes([bit | n])
            elif n < 65536 and rng.random() < 0.8:
                length = bytes([bit | 126]) + struct.pack(">H", n)
            else:
                length = bytes([bit | 127]) + struct.pack(">Q", n)
            first = rng.choice((0x80, 0x80, 0)) | rng.choice((0, 0, 0, 0x40, 0x70)) | \
                rng.choice((1, 2, 0, 8, 9, 10, 3, 11, 15))
            out.append(bytes([first]) + length + (self.bytes(4) if masked else b"") + payload)
        return out

    def udp_datagram(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.3:
            return self.bytes(rng.randint(0, 600))
        good = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", self.udp_echo)
        if rng.random() < 0.2:
            good = b"\x00\x00\x00\x03\x09localhost" + struct.pack(">H", self.udp_echo)
        return self.mutate(good + self.bytes(rng.randint(0, 100)))


def _exchange(rng: random.Random, port: int, parts: list[bytes]) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            for part in parts:
                s.sendall(part)
                if rng.random() < 0.3:
                    time.sleep(0.005)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while len(got) < 1 << 20 and (chunk := s.recv(65536)):
                got += chunk
            return got
    except OSError:
        return b""


def _socks5_login(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    s.sendall(b"\x01\x01u\x01p")
    assert s.recv(2) == b"\x01\x00"
    return s


def _associate(fuzz: Fuzz, port: int, datagrams: int) -> None:
    with _socks5_login(port) as s:
        s.sendall(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
        reply = s.recv(10)
        assert reply[:2] == b"\x05\x00", reply
        relay = (socket.inet_ntoa(reply[4:8]), struct.unpack(">H", reply[8:10])[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for _ in range(datagrams):
                u.sendto(fuzz.udp_datagram(), relay)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n and (chunk := s.recv(n - len(got))):
        got += chunk
    return got


def test_random_binary_messages_get_no_internal_error_and_no_forged_log_line(start_proxy):
    from websockets.sync.client import connect

    def mirror(conn):
        conn.settimeout(5)
        while data := conn.recv(65536):
            conn.sendall(data)

    echo, udp = TcpServer(mirror), UdpEcho()
    ports = {name: free_port() for name in ("ws", "pp")}
    first = start_proxy(config=f'[proxy]\nbind = "127.0.0.1:{{port}}"\nudp_bind = "127.0.0.1:0"\nhandshake_timeout = "2s"\n'
                               f'allow_targets = ["127.0.0.1", "::1"]\n'
                               f'[[proxy.users]]\nusername = "u"\npassword = "p"\n'
                               f'[[stream.upstream]]\nname = "echo"\nserver = [{{ addr = "127.0.0.1:{echo.port}" }}]\n'
                               f'[[stream.server]]\nbind = "127.0.0.1:{ports["ws"]}"\nbind_mode = "ws2tcp"\n'
                               f'up_name = "echo"\nhandshake_timeout = "2s"\n'
                               f'[[stream.server]]\nbind = "127.0.0.1:{ports["pp"]}"\nup_name = "echo"\n'
                               f'proxy_protocol = true\nproxy_protocol_from = ["127.0.0.1"]\nhandshake_timeout = "2s"\n',
                        bind=False)
    second = start_proxy(config='[proxy]\nbind = "127.0.0.1:{port}"\nhandshake_timeout = "2s"\nproxy_protocol = true\n'
                                'proxy_protocol_from = ["127.0.0.1"]\nallow_targets = ["127.0.0.1"]\n', bind=False)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    fuzz = Fuzz(rng, echo.port, udp.port)
    http = b"GET http://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % echo.port
    kinds = {
        "socks5": lambda: _exchange(rng, first.port, fuzz.socks5()),
        "socks4": lambda: _exchange(rng, first.port, fuzz.socks4()),
        "first bytes": lambda: _exchange(rng, first.port, [fuzz.bytes(rng.randint(1, 600))]),
        "PROXY v1, forward proxy": lambda: _exchange(rng, second.port, [fuzz.proxy_v1(), rng.choice((http, b"\x05\x01\x00"))]),
        "PROXY v2, forward proxy": lambda: _exchange(rng, second.port, [fuzz.proxy_v2(), rng.choice((http, b"\x05\x01\x00"))]),
        "PROXY, stream": lambda: _exchange(rng, ports["pp"], [rng.choice((fuzz.proxy_v1, fuzz.proxy_v2))(), b"hello"]),
        "ws2tcp": lambda: _exchange(rng, ports["ws"], fuzz.websocket()),
        "UDP ASSOCIATE": lambda: _associate(fuzz, first.port, rng.randint(1, 20)),
    }
    counts = dict.fromkeys(kinds, 0)
    try:
        deadline = time.monotonic() + BUDGET
        while time.monotonic() < deadline:
            kind = rng.choice(list(kinds))
            kinds[kind]()
            counts[kind] += 1
        assert min(counts.values()) > 0 and sum(counts.values()) > 100, (seed, counts)
        # good clients of each protocol, served after it all
        with _socks5_login(first.port) as s:
            s.sendall(b"\x05\x01\x00\x03\x09localhost" + struct.pack(">H", echo.port))
            assert s.recv(10)[:2] == b"\x05\x00"
            s.sendall(b"ping")
            assert _recv_exactly(s, 4) == b"ping"
        with socket.create_connection(("127.0.0.1", ports["pp"]), timeout=5) as s:
            s.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 80\r\nhello")
            assert _recv_exactly(s, 5) == b"hello"
        with socket.create_connection(("127.0.0.1", second.port), timeout=5) as s:
            s.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 80\r\n\x04\x01" + struct.pack(">H", echo.port)
                      + socket.inet_aton("127.0.0.1") + b"\x00")
            assert s.recv(8)[:2] == b"\x00\x5a"
        with connect(f"ws://127.0.0.1:{ports['ws']}/", open_timeout=10) as client:
            client.send(b"ping")
            assert client.recv(timeout=10) == b"ping"
        assert_logs_clean((first, second), seed)
    finally:
        echo.close()
        udp.close()
