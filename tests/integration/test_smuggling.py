"""Request smuggling and desync cases (CL.TE, TE.CL, TE.TE, obs-fold, white space, bare CR/LF,
NUL, chunk extension tricks, HTTP/1.0, Host, pipelined leftovers), each one client message sent
through the forward proxy, through ``[http]`` and through an http mapping to a raw origin that
reads requests as the most lenient servers do and records every request it sees. From one
client message, the origin must never see two requests (nor the smuggled one at all), and the
proxy keeps serving."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import TcpServer, free_port, wait_port
from test_center import http_mapping

SMUGGLED = "GET {T}/smuggled HTTP/1.1\r\nHost: {H}\r\n\r\n"
S = SMUGGLED
CHUNKED_S = "0\r\n\r\n" + S  # a last chunk, then a request


def _n(text: str) -> str:
    return str(len(text))


# (name, the client's bytes); {T}: the target's scheme and authority (forward proxy) or '' ([http]),
# {H}: the Host value, {S}: a whole second request, {LS}: its length
CASES: list[tuple[str, str]] = [
    # CL.TE and TE.CL
    ("cl-te", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding: chunked\r\n\r\n{CS}"),
    ("te-cl", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{CS}"),
    ("te-cl-body", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
                   "5\r\nhello\r\n0\r\n\r\n{S}"),
    ("cl-te-short", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "8\r\nSMUGGLED\r\n0\r\n\r\n"),
    # TE.TE: obfuscated Transfer-Encoding beside a Content-Length
    ("te-xchunked", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding: xchunked\r\n\r\n{CS}"),
    ("te-space-colon", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding : chunked\r\n\r\n"
                       "{CS}"),
    ("te-tab", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding:\tchunked\r\n\r\n{CS}"),
    ("te-two-lines", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"
                     "Content-Length: {LCS}\r\n\r\n{CS}"),
    ("te-two-lines-rev", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n"
                         "Content-Length: 4\r\n\r\n{CS}"),
    ("te-vtab", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding:\x0bchunked\r\n\r\n{CS}"),
    ("te-obs-fold-line", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\n Transfer-Encoding: chunked\r\n\r\n"
                         "{CS}"),
    ("te-obs-fold-value", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding:\r\n chunked"
                          "\r\n\r\n{CS}"),
    ("te-chunked-identity", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\n"
                            "Transfer-Encoding: chunked, identity\r\n\r\n{CS}"),
    ("te-identity-chunked", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 4\r\n"
                            "Transfer-Encoding: identity, chunked\r\n\r\n{CS}"),
    ("te-upper", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 4\r\nTransfer-Encoding: CHUNKED\r\n\r\n{CS}"),
    ("te-nul", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding: chunked\x00\r\n\r\n{CS}"),
    ("te-quoted", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding: \"chunked\"\r\n\r\n"
                  "{CS}"),
    ("te-underscore", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer_Encoding: chunked\r\n\r\n"
                      "{CS}"),
    ("te-bare-cr", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding: chunked\rX: y\r\n\r\n"
                   "{CS}"),
    ("te-name-lf", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LCS}\r\nTransfer-Encoding\n: chunked\r\n\r\n"
                   "{CS}"),
    ("te-connection-named", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nConnection: transfer-encoding\r\n"
                            "Content-Length: {LCS}\r\nTransfer-Encoding: chunked\r\n\r\n{CS}"),
    # Content-Length tricks
    ("cl-two-values", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("cl-two-values-rev", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LS}\r\nContent-Length: 0\r\n\r\n{S}"),
    ("cl-list", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0, {LS}\r\n\r\n{S}"),
    ("cl-plus", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: +{LS}\r\n\r\n{S}"),
    ("cl-minus", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: -1\r\n\r\n{S}"),
    ("cl-hex", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0x10\r\n\r\n{S}"),
    ("cl-space-colon", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length : {LS}\r\n\r\n{S}"),
    ("cl-vtab", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length:\x0b{LS}\r\n\r\n{S}"),
    ("cl-two-numbers", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 1 2\r\n\r\n{S}"),
    ("cl-huge", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 99999999999999999999\r\n\r\n{S}"),
    ("cl-obs-fold", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length:\r\n {LS}\r\n\r\n{S}"),
    ("cl-connection-named", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nConnection: content-length\r\n"
                            "Content-Length: {LS}\r\n\r\n{S}"),
    ("cl-name-space", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent Length: {LS}\r\n\r\n{S}"),
    # bare CR / LF, NUL
    ("lf-request-line", "GET {T}/ HTTP/1.1\nHost: {H}\n\n{S}"),
    ("lf-header-line", "GET {T}/ HTTP/1.1\r\nHost: {H}\nContent-Length: {LS}\r\n\r\n{S}"),
    ("lf-head-end", "GET {T}/ HTTP/1.1\r\nHost: {H}\r\n\n{S}"),
    ("cr-in-value", "GET {T}/ HTTP/1.1\r\nHost: {H}\r\nX-A: a\rContent-Length: {LS}\r\n\r\n{S}"),
    ("cr-request-line", "GET {T}/ HTTP/1.1\rHost: {H}\r\n\r\n{S}"),
    ("nul-value", "GET {T}/ HTTP/1.1\r\nHost: {H}\r\nX-A: a\x00b\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("nul-target", "GET {T}/a\x00b HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("lf-in-name", "GET {T}/ HTTP/1.1\r\nHost: {H}\r\nX\nContent-Length: {LS}\r\n\r\n{S}"),
    # chunk line and extension tricks
    ("chunk-ext-bare-lf", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "2;x\nab\r\n0\r\n\r\n{S}"),
    ("chunk-ext-quoted-crlf", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "5;a=\"x\r\n0\r\n\r\n{S}\"\r\nhello\r\n0\r\n\r\n"),
    ("chunk-size-bare-lf", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "0\n\r\n{S}"),
    ("chunk-size-leading-space", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 " 0\r\n\r\n{S}"),
    ("chunk-size-0x", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n{S}"),
    ("chunk-size-overflow", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "10000000000000000\r\n\r\n{S}"),
    ("chunk-size-negative", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n{S}"),
    ("chunk-data-overrun", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "2\r\nabc\r\n0\r\n\r\n{S}"),
    ("chunk-size-bare-cr", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\r\n\r\n{S}"),
    ("chunk-ext-empty", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n0;\r\n\r\n{S}"),
    ("chunk-size-underscore", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n\r\n{S}"),
    ("chunk-data-lf-end", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "1\r\na\n0\r\n\r\n{S}"),
    ("last-chunk-lf", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n0\n\n{S}"),
    ("trailer-bare-lf", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "0\r\nX-T: a\n\n{SNOEND}\r\n\r\n"),
    ("trailer-obs-fold", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "0\r\nX-T: a\r\n b\r\n\r\n{S}"),
    ("trailer-no-colon", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "0\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
    # HTTP/1.0
    ("http10-te-keepalive", "POST {T}/ HTTP/1.0\r\nHost: {H}\r\nConnection: keep-alive\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n{CS}"),
    ("http10-te-cl", "POST {T}/ HTTP/1.0\r\nHost: {H}\r\nConnection: keep-alive\r\nContent-Length: {LCS}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n{CS}"),
    ("http10-te-only", "POST {T}/ HTTP/1.0\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n{CS}"),
    # Host
    ("host-twice", "GET {T}/ HTTP/1.1\r\nHost: {H}\r\nHost: other.test\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("host-missing", "GET {T}/ HTTP/1.1\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("host-space", "GET {T}/ HTTP/1.1\r\nHost: a b\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("host-slash", "GET {T}/ HTTP/1.1\r\nHost: a/b\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("host-at", "GET {T}/ HTTP/1.1\r\nHost: user@a.test\r\nContent-Length: {LS}\r\n\r\n{S}"),
    # request line white space and versions
    ("double-space", "GET  {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("tab-separator", "GET {T}/\tHTTP/1.1\r\nHost: {H}\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("version-1.2", "GET {T}/ HTTP/1.2\r\nHost: {H}\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("version-0.9", "GET {T}/\r\n\r\n{S}"),
    ("lower-method", "get {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LS}\r\n\r\n{S}"),
    # pipelined leftovers and other desync shapes
    ("leftover-garbage", "GET {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0\r\n\r\nX{S}"),
    ("leftover-after-body", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: 3\r\n\r\nabcX{S}"),
    ("get-with-body", "GET {T}/ HTTP/1.1\r\nHost: {H}\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("expect-body", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nExpect: 100-continue\r\nContent-Length: {LS}\r\n\r\n{S}"),
    ("upgrade-with-body", "POST {T}/ HTTP/1.1\r\nHost: {H}\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                          "Content-Length: {LS}\r\n\r\n{S}"),
    ("header-many", "GET {T}/ HTTP/1.1\r\nHost: {H}\r\n" + "X-A: 1\r\n" * 150 + "Content-Length: {LS}\r\n\r\n{S}"),
]


# cases the proxy must answer with a 4xx (the rest: refused or passed on as one request, either way)
REFUSED = {
    "cl-te": 400, "te-cl": 400, "te-cl-body": 400, "te-connection-named": 400, "cl-te-short": 400, "chunk-ext-bare-lf": 400,
    "chunk-ext-quoted-crlf": 400, "chunk-size-bare-lf": 400, "chunk-size-leading-space": 400, "chunk-size-0x": 400,
    "chunk-size-overflow": 400, "chunk-size-negative": 400, "chunk-data-overrun": 400, "chunk-ext-empty": 400,
    "trailer-bare-lf": 400, "trailer-obs-fold": 400, "trailer-no-colon": 400, "http10-te-keepalive": 400,
    "http10-te-only": 400, "host-twice": 400, "host-missing": 400, "host-space": 400, "host-slash": 400,
    "host-at": 400, "header-many": 431, "cl-two-values": 400, "cl-list": 400, "lf-request-line": 400,
}


def render(template: str, t: str, h: str) -> bytes:
    s = SMUGGLED.replace("{T}", t).replace("{H}", h)
    cs = CHUNKED_S.replace("{T}", t).replace("{H}", h)
    text = (template.replace("{LCS}", str(len(cs))).replace("{CS}", cs)
            .replace("{LS}", str(len(s))).replace("{SNOEND}", s[:-4]).replace("{S}", s)
            .replace("{T}", t).replace("{H}", h))
    return text.encode("latin-1")


class LenientOrigin:
    """A raw HTTP origin that reads requests as the laxest servers do (a bare LF ends a line,
    Transfer-Encoding containing 'chunked' anywhere wins over Content-Length, chunk extensions
    end at LF, the first Content-Length counts) and records each request line it sees."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.lock = threading.Lock()
        self.server = TcpServer(self._serve)
        self.port = self.server.port

    def _serve(self, conn) -> None:
        conn.settimeout(10)
        buf = b""

        def more() -> bool:
            nonlocal buf
            data = conn.recv(65536)
            buf += data
            return bool(data)

        def line() -> bytes | None:
            nonlocal buf
            while b"\n" not in buf:
                if not more():
                    return None
            text, buf = buf.split(b"\n", 1)
            return text.rstrip(b"\r")

        while True:
            first = line()
            while first == b"":
                first = line()
            if first is None:
                return
            headers = {}
            while (h := line()) not in (b"", None):
                name, _, value = h.partition(b":")
                headers.setdefault(name.strip().lower(), value.strip())
            with self.lock:
                self.seen.append(first)
            te = headers.get(b"transfer-encoding", b"").lower()
            if b"chunked" in te:
                while True:
                    size_line = line()
                    if size_line is None:
                        return
                    digits = size_line.split(b";")[0].strip()
                    try:
                        size = int(digits, 16)
                    except ValueError:
                        size = 0
                    if size == 0:
                        while line() not in (b"", None):
                            pass
                        break
                    while len(buf) < size:
                        if not more():
                            return
                    buf = buf[size:]
                    line()
            else:
                try:
                    length = int(headers.get(b"content-length", b"0").split(b",")[0])
                except ValueError:
                    length = 0
                while len(buf) < length:
                    if not more():
                        return
                buf = buf[max(length, 0):]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def take(self) -> list[bytes]:
        with self.lock:
            seen, self.seen = self.seen, []
        return seen

    def close(self) -> None:
        self.server.close()


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; what came back until the proxy closed or went quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.settimeout(0.6)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return got


@pytest.fixture(scope="module")
def lenient_origin():
    origin = LenientOrigin()
    yield origin
    origin.close()


def test_corpus_is_big_enough():
    assert len(CASES) >= 60 and len({name for name, _ in CASES}) == len(CASES)


def _run_corpus(port: int, t: str, h: str, origin: LenientOrigin) -> list[str]:
    problems = []
    for name, template in CASES:
        origin.take()
        answer = _exchange(port, render(template, t, h))
        time.sleep(0.05)
        seen = origin.take()
        if len(seen) > 1 or any(b"smuggled" in line for line in seen):
            problems.append(f"{name}: origin saw {seen!r}; proxy answered {answer[:80]!r}")
        elif answer and not answer.startswith(b"HTTP/1.1 "):
            problems.append(f"{name}: not an HTTP answer: {answer[:80]!r}")
        elif name in REFUSED and not answer.startswith(b"HTTP/1.1 %d " % REFUSED[name]):
            problems.append(f"{name}: expected {REFUSED[name]}, got {answer[:80]!r}; origin saw {seen!r}")
    return problems


def test_forward_proxy_never_splits_one_message(start_proxy, lenient_origin):
    p = start_proxy(config='[proxy]\nbind = "127.0.0.1:{port}"\nhandshake_timeout = "2s"\n')
    authority = f"127.0.0.1:{lenient_origin.port}"
    problems = _run_corpus(p.port, f"http://{authority}", authority, lenient_origin)
    assert not problems, "\n".join(problems)
    # and it still serves
    assert _exchange(p.port, f"GET http://{authority}/ok HTTP/1.1\r\nHost: {authority}\r\n"
                     "Connection: close\r\n\r\n".encode()).endswith(b"ok")
    assert lenient_origin.take() == [b"GET /ok HTTP/1.1"]


def test_reverse_proxy_never_splits_one_message(start_proxy, lenient_origin):
    p = start_proxy(config=f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\nrule = "/"\n'
                           f'proxy_url = "http://127.0.0.1:{lenient_origin.port}"\n', bind=False)
    problems = _run_corpus(p.port, "", "a.test", lenient_origin)
    assert not problems, "\n".join(problems)
    assert _exchange(p.port, b"GET /ok HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").endswith(b"ok")
    assert lenient_origin.take() == [b"GET /ok HTTP/1.1"]


def test_http_mapping_never_splits_one_message(pair, lenient_origin):
    """The public side of an http mapping (map_http_bind): its requests go to the center client
    as they came when nothing in them changes (passthrough_head), so the corpus runs there too."""
    web = free_port()
    p = pair(start_client=False, server_extra=f'map_http_bind = "127.0.0.1:{web}"\n')
    p.client = p.start_client(tail=http_mapping("app", lenient_origin.port, "a.test"))
    p.client.wait_log("mapping 'app' published")
    wait_port(web)
    problems = _run_corpus(web, "", "a.test", lenient_origin)
    assert not problems, "\n".join(problems)
    assert _exchange(web, b"GET /ok HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").endswith(b"ok")
    assert lenient_origin.take() == [b"GET /ok HTTP/1.1"]
