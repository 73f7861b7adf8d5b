"""HTTP/1 heads, framing, hop-by-hop rules, chunk lines and Basic credentials."""

from __future__ import annotations

import base64
import os
import re

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmproxy.errors import ProtocolError
from wmproxy.prot import http1
from wmproxy.prot.framing import CHUNKED, NO_BODY, UNTIL_CLOSE, Framing, request_framing, response_framing
from wmproxy.prot.target import parse_absolute, parse_authority
from wmproxy.prot.auth import parse_basic_auth
from wmproxy.prot.chunked import check_trailer_line, parse_chunk_size
from wmproxy.prot.rules import apply_header_rules


def test_request_head():
    h = http1.parse_request_head(b"GET http://a.example:8080/x?y=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert (h.method, h.target, h.version) == ("GET", "http://a.example:8080/x?y=1", "1.1")
    assert h.get(b"host") == b"a" and h.get_all(b"x-a") == [b"1", b"2"]
    t = parse_absolute(h.target)
    assert (t.host, t.port, t.path, t.authority) == ("a.example", 8080, "/x?y=1", "a.example:8080")


@pytest.mark.parametrize("line", [b"GET  /x?a HTTP/1.1", b"GET /x?a   HTTP/1.1", b"GET   /x?a  HTTP/1.1"])
def test_request_target_as_llhttp_gives_it(line):
    """llhttp lets more than one space through around the target; its URL callback gives the
    target alone, and so must the head."""
    urls = []

    class Url:
        def on_url(self, url: bytes) -> None:
            urls.append(url)

    raw = line + b"\r\nHost: a\r\n\r\n"
    httptools.HttpRequestParser(Url()).feed_data(raw)
    assert http1.parse_request_head(raw).target == urls[0].decode() == "/x?a"


def test_connect_head_and_authority():
    h = http1.parse_request_head(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert h.method == "CONNECT" and h.upgrade
    t = parse_authority(h.target)
    assert (t.host, t.port) == ("::1", 443)
    for bad in ("example.com", "example.com:0", "example.com:http", ":80", "a b:80"):
        with pytest.raises(ProtocolError):
            parse_authority(bad)


@pytest.mark.parametrize("url,host,port,path", [
    ("http://a.example?x=1", "a.example", 80, "/?x=1"),
    ("HTTP://Host.Example:8080/p#frag", "host.example", 8080, "/p"),
    ("http://[::1]:81/", "::1", 81, "/"),
    ("http://[::1]", "::1", 80, "/"),
    ("http://127.0.0.1/a/b?c", "127.0.0.1", 80, "/a/b?c"),
])
def test_absolute_urls(url, host, port, path):
    t = parse_absolute(url)
    assert (t.host, t.port, t.path) == (host, port, path)


@pytest.mark.parametrize("url", ["http://user@host/", "http:///x", "http://host:99999/", "http://[::1/",
                                 "http://a b/", "http://host:x/"])
def test_bad_absolute_urls(url):
    with pytest.raises(ProtocolError):
        parse_absolute(url)


def test_absolute_form_required():
    with pytest.raises(ProtocolError) as e:
        parse_absolute("/relative")
    assert e.value.http_status == 400
    with pytest.raises(ProtocolError) as e:
        parse_absolute("ftp://x/")
    assert e.value.http_status == 501
    assert parse_absolute("http://[::1]/").authority == "[::1]"


def test_keep_alive_rules():
    parse = http1.parse_request_head
    assert parse(b"GET / HTTP/1.1\r\n\r\n").wants_keep_alive()
    assert not parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").wants_keep_alive()
    assert not parse(b"GET / HTTP/1.0\r\n\r\n").wants_keep_alive()
    assert parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").wants_keep_alive()


def test_request_framing():
    parse = http1.parse_request_head
    assert request_framing(parse(b"GET / HTTP/1.1\r\n\r\n")) == NO_BODY
    assert request_framing(parse(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n")) == ("length", 12)
    assert request_framing(parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")) == CHUNKED
    with pytest.raises(ProtocolError):  # smuggling shape: both, rejected by llhttp or by us
        request_framing(parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"))


def test_response_framing():
    def rf(method, raw):
        return response_framing(method, http1.parse_response_head(raw))

    assert rf("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n") == NO_BODY
    assert rf("GET", b"HTTP/1.1 304 Not Modified\r\n\r\n") == NO_BODY
    assert rf("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n") == ("length", 5)
    assert rf("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") == CHUNKED
    assert rf("GET", b"HTTP/1.0 200 OK\r\n\r\n") == UNTIL_CLOSE
    h = http1.parse_response_head(b"HTTP/1.1 404 Nope Here\r\nA: b\r\n\r\n")
    assert (h.status, h.reason) == (404, b"Nope Here")


def _passed(response):
    """What a client gets from a Response: the head (status, reason, headers with their values'
    surrounding spaces stripped), the framing (a Framing, whichever reader built it), the
    server's keep-alive."""
    out = http1.parse_response_head(response.encode(b"\r\nVia: t"))
    assert type(response.framing) is Framing
    return (out.status, out.reason, [(k, v.strip()) for k, v in out.headers]), response.framing, response.reusable


PASSABLE = [  # heads quick_response passes through as bytes: the result must equal the full parse's
    (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n"
     b"Connection: keep-alive\r\nETag: \"5f-11\"\r\n\r\n", "GET"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD"),
    (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", "GET"),
    (b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", "DELETE"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nX-A: 1\r\n\r\n", "GET"),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding:  Chunked \r\n\r\n", "GET"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", "GET"),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 3\r\n\r\n", "GET"),
    (b"HTTP/1.1 200 OK\r\n\r\n", "GET"),  # until close
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive, close\r\n\r\n", "GET"),
    (b"HTTP/1.1 404 \r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nTE: x\r\nProxy-Connection: close\r\n"
     b"Content-Length: 2\r\nX-Last: 1\r\n\r\n", "GET"),
    (b"HTTP/1.1 502\r\nContent-Length: 2\r\n\r\n", "POST"),
    # "close" wins over "keep-alive" (RFC 9112 9.3), in HTTP/1.0 too
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", "GET"),
    (b"HTTP/1.1 200 OK\r\nX-Connection: a\r\nX-Content-Length: 9\r\nConnectionX: b\r\nContent-Length: 1\r\n\r\n",
     "GET"),
]
NOT_PASSABLE = [  # heads left to the full parse (None), or refused
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.2 200 OK\r\nContent-Length: 1\r\n\r\n",
]


@pytest.mark.parametrize("raw,what", [(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "HTTP/2.0"),
                                      (b"DESCRIBE rtsp://x/a RTSP/1.0\r\nCSeq: 1\r\n\r\n", "RTSP/1.0")])
def test_other_versions_and_protocols_are_505(raw, what):
    with pytest.raises(ProtocolError) as e:
        http1.parse_request_head(raw)
    assert e.value.http_status == 505 and what in str(e.value)


@pytest.mark.parametrize("raw,method", PASSABLE)
def test_quick_response_is_the_full_parse(raw, method):
    quick = http1.quick_response(raw, method)
    assert quick is not None and quick.head is None
    assert _passed(quick) == _passed(http1.Response.of(http1.parse_response_head(raw), method))


def test_quick_response_leaves_the_rest_to_the_parser():
    for raw in NOT_PASSABLE:
        try:
            assert http1.quick_response(raw, "GET") is None, raw
        except ProtocolError:  # llhttp refuses some (a duplicate Content-Length): so does the full parse
            with pytest.raises(ProtocolError):
                http1.Response.of(http1.parse_response_head(raw), "GET")
    with pytest.raises(ProtocolError):
        http1.quick_response(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "GET")
    # both framings (a smuggling shape): refused, never passed on
    both = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n"
    with pytest.raises(ProtocolError):
        http1.quick_response(both, "GET")


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n",  # llhttp takes any three digits: 99 went on as an interim
    b"HTTP/1.1 000 X\r\n\r\n",
    b"HTTP/1.1 200 a\x00b\r\nContent-Length: 0\r\n\r\n",  # llhttp lets controls through in the reason
    b"HTTP/1.1 200 \x1b[31mred\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 a\x7f\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 \x01\r\n\r\n",
])
def test_a_status_below_100_or_a_control_in_the_reason_is_a_bad_response(raw):
    """What an origin may send that llhttp takes but no client should get: refused (502) by
    every path an answer takes, never passed on (found by test_fuzz_origin)."""
    assert _speedups is None or _speedups.response_head(raw, False) is None
    for quick in (http1.quick_response, http1.quick_response_llhttp):  # refused, or left to the full parse
        try:
            assert quick(raw, "GET") is None
        except ProtocolError as e:
            assert e.http_status == 502
    with pytest.raises(ProtocolError) as e:
        http1.parse_response_head(raw)
    assert e.value.http_status == 502
    assert http1.parse_response_head(b"HTTP/1.1 200 caf\xc3\xa9\tok\r\n\r\n").reason == b"caf\xc3\xa9\tok"  # obs-text, HTAB


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Connection", "content-length", "Transfer-Encoding", "Keep-Alive", "TE",
                                           "X-A", "Upgrade", "Trailer", "Proxy-Connection", "te", "connection"]),
                          # values that start the same ("7", "7, x"): a line cut must be the right one
                          st.sampled_from(["keep-alive", "close", "chunked", "5", "0", "x", "", " 7 ", "Chunked", "7",
                                           "7, x", "keep-alive, x"])),
                max_size=6),
       st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.0 200 OK", "HTTP/1.1 304 Not Modified", "HTTP/1.1 500 "]),
       st.sampled_from(["GET", "HEAD"]))
def test_quick_response_agrees_with_the_full_parse(headers, start, method):
    raw = (start + "".join(f"\r\n{k}: {v}" for k, v in headers) + "\r\n\r\n").encode()
    try:
        full = _passed(http1.Response.of(http1.parse_response_head(raw), method))
    except ProtocolError:
        full = None
    try:
        quick = http1.quick_response(raw, method)
    except ProtocolError:
        assert full is None
        return
    if quick is not None:
        assert _passed(quick) == full


@pytest.mark.parametrize("closing", [b"Proxy-Connection: close", b"Connection: close", b"X: 1"])
def test_one_clients_close_never_fails_the_next_head(closing):
    """llhttp ends its message stream after a close (Proxy-Connection too): the parser of
    such a head must not be kept for the next request, which may be another client's."""
    raw = b"GET http://a/ HTTP/1.1\r\n" + closing + b"\r\n\r\n"
    http1.parse_request_head(raw)
    assert http1.parse_request_head(b"GET http://b/ HTTP/1.1\r\n\r\n").target == "http://b/"
    # and should a kept parser be past its stream's end anyway, a fresh one gives the verdict
    stale = http1._Ending()
    parser = httptools.HttpRequestParser(stale)
    parser.feed_data(raw.replace(b"X: 1", b"Connection: close"))
    stale.complete = False
    http1._spare.append((parser, stale))
    assert http1.parse_request_head(b"GET http://c/ HTTP/1.1\r\n\r\n").target == "http://c/"


def test_hop_by_hop_and_connection_named_headers_dropped():
    h = http1.parse_request_head(b"GET / HTTP/1.1\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nTE: trailers\r\n"
                                 b"Proxy-Authorization: Basic x\r\nUpgrade: h2c\r\nX-Keep: 1\r\n\r\n")
    assert [k for k, _ in h.end_to_end()] == [b"X-Keep"]
    assert [k for k, _ in h.end_to_end(frozenset((b"x-keep",)))] == []
    plain = http1.parse_request_head(b"GET / HTTP/1.1\r\nA: 1\r\n\r\n")
    assert plain.end_to_end() == [(b"A", b"1")]


def test_chunk_size_lines():
    assert parse_chunk_size(b"1a") == 26
    assert parse_chunk_size(b"FF;name=value") == 255
    assert parse_chunk_size(b'5 ; a = "x y"; b') == 5
    assert parse_chunk_size(b'5;a="q\\""') == 5
    for bad in (b"", b"-1", b"zz", b"1" * 16, b"0x10", b" 5", b"5 ", b"5;", b"5;a\nb", b"5\n", b"5;a=\"x\r\"",
                b"5;a=\"x", b"5;a=b c", b"5\x00", b"+5", b"5;a=\"\n\""):
        with pytest.raises(ProtocolError):
            parse_chunk_size(bad)


def test_basic_auth():
    token = base64.b64encode(b"user:pa:ss")
    assert parse_basic_auth(b"Basic " + token) == ("user", "pa:ss")
    assert parse_basic_auth(b"basic " + token) == ("user", "pa:ss")
    assert parse_basic_auth(b"Bearer x") is None
    assert parse_basic_auth(b"Basic !!!") is None
    assert parse_basic_auth(None) is None


def test_bad_heads_are_protocol_errors():
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
        with pytest.raises(ProtocolError):
            http1.parse_request_head(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_head_parser_fuzz(data):
    for parse in (http1.parse_request_head, http1.parse_response_head):
        try:
            parse(data + b"\r\n\r\n")
        except ProtocolError:
            pass


def test_header_rules():
    from wmproxy.config import to_header_rule

    rules = [to_header_rule(r) for r in ("+ X-A {client_ip}", "- X-Gone", "? X-B kept", "? X-New set",
                                         "X-R 'replaced value'")]
    headers = [(b"X-Gone", b"1"), (b"x-gone", b"2"), (b"X-B", b"orig"), (b"X-R", b"old")]
    out = apply_header_rules(headers, rules, {"client_ip": "10.1.2.3"})
    assert out == [(b"X-B", b"orig"), (b"X-A", b"10.1.2.3"), (b"X-New", b"set"), (b"X-R", b"replaced value")]
    assert to_header_rule("proxy + X-Real-IP {client_ip}").is_proxy


def test_request_parser_reused_only_when_clean():
    """A parser is kept for the next head only after a body-less keep-alive message: heads
    after a body, a close, an upgrade or an error parse as they would on a fresh parser."""
    heads = [
        b"GET /a HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\n",  # a body follows: not reused
        b"GET /c HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
        b"GET /d HTTP/1.0\r\nHost: d\r\n\r\n",
        b"GET /e HTTP/1.1\r\nHost: e\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET /f HTTP/1.1\r\nHost: f\r\n\r\n",
    ]
    for _ in range(3):
        for raw in heads:
            head = http1.parse_request_head(raw)
            name = raw.split(b" ")[1].decode()
            assert head.target == name and head.get(b"host") == name[1:].encode()
            assert head.get(b"x-one") == (b"1" if name == "/a" else None)
        with pytest.raises(ProtocolError):
            http1.parse_request_head(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n")


def _request(headers: list[tuple[str, str]]) -> bytes:
    return ("GET /p HTTP/1.1" + "".join(f"\r\n{k}: {v}" for k, v in headers) + "\r\n\r\n").encode()


def test_passthrough_head_is_the_head_as_it_came():
    raw = _request([("Host", "a.test"), ("X-A", "1"), ("x-b", "two  words"), ("Accept", "*/*")])
    out = http1.passthrough_head(http1.parse_request_head(raw), raw, b"GET /q HTTP/1.1", b"\r\nVia: t",
                                 frozenset((b"expect",)))
    assert out == b"GET /q HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\nx-b: two  words\r\nAccept: */*\r\nVia: t\r\n\r\n"
    for name in ("Connection", "proxy-connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization",
                 "EXPECT"):
        raw = _request([("Host", "a.test"), (name, "x")])
        assert http1.passthrough_head(http1.parse_request_head(raw), raw, b"GET /p HTTP/1.1", b"",
                                      frozenset((b"expect",))) is None, name


def test_passthrough_head_sets_the_one_host_line():
    raw = _request([("X-A", "1"), ("Host", "proxy.test:8090"), ("Accept", "*/*")])
    head = http1.parse_request_head(raw)
    out = http1.passthrough_head(head, raw, b"GET /q HTTP/1.1", b"\r\nVia: t", frozenset(), b"origin.test:81")
    assert out == b"GET /q HTTP/1.1\r\nX-A: 1\r\nHost: origin.test:81\r\nAccept: */*\r\nVia: t\r\n\r\n"
    last = _request([("Host", "a")])  # the last line, and a value that is the new one already
    for host in (b"b.test", b"a"):
        out = http1.passthrough_head(http1.parse_request_head(last), last, b"GET / HTTP/1.1", b"", frozenset(), host)
        assert out == b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    tab = _request([("Host", "a\t")])  # llhttp keeps trailing white space in the value: the line is whole
    assert http1.passthrough_head(http1.parse_request_head(tab), tab, b"GET / HTTP/1.1", b"", frozenset(),
                                  b"b") == b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
    # no Host, two of them, or one not in the usual form: the list is built again
    for headers in ([("X-A", "1")], [("Host", "a"), ("Host", "b")], [("host", "a")], [("Host", " a")]):
        raw = _request(headers)
        assert http1.passthrough_head(http1.parse_request_head(raw), raw, b"GET / HTTP/1.1", b"", frozenset(),
                                      b"b.test") is None, headers


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Host", "X-A", "Connection", "connection", "Keep-Alive", "TE", "Expect",
                                           "X-Forwarded-For", "Proxy-Connection", "Content-Length", "Via", "x-a"]),
                          st.sampled_from(["x", "keep-alive", "close", "X-A", "0", "", "a b", "keep-alive, X-A"])),
                max_size=6),
       st.sampled_from([frozenset((b"expect",)), frozenset((b"x-forwarded-for", b"expect"))]),
       st.sampled_from([None, b"x", b"new.test:81"]))
def test_passthrough_head_agrees_with_the_list_built_again(headers, drop, host):
    """Passed on as they came exactly when rebuilding the list would drop nothing (and, given
    ``host``, the one Host line is in the usual form), and then they are the same headers in
    the same order, the Host value replaced."""
    raw = _request(headers)
    try:
        head = http1.parse_request_head(raw)
    except ProtocolError:
        return
    out = http1.passthrough_head(head, raw, b"GET /p HTTP/1.1", b"", drop, host)
    kept = head.end_to_end(drop)
    hosts = [k for k, _ in headers if k.lower() == "host"]
    usual = host is None or hosts == ["Host"]
    assert (out is None) == (kept != head.headers or not usual)
    if out is not None:
        if host is not None:
            kept = [(k, host if k == b"Host" else v) for k, v in kept]
        assert http1.parse_request_head(out).headers == kept


# -- the C versions (wmproxy/prot/_speedups.c) against the Python ones ---------------------------
try:
    from wmproxy.prot import _speedups
except ImportError:
    _speedups = None


def test_speedups_built_where_required():
    """`make test` installs a C compiler and Python's headers first: there the C versions must
    be built and in use (a silently skipped build would leave them untested)."""
    if not os.environ.get("WMPROXY_REQUIRE_SPEEDUPS"):
        pytest.skip("WMPROXY_REQUIRE_SPEEDUPS not set")
    assert _speedups is not None
    if not os.environ.get("WMPROXY_NO_SPEEDUPS"):
        assert http1.split_headers is _speedups.split_headers and http1.scan_response is _speedups.scan_response


class _Lines:
    """httptools callbacks collecting the headers: the reference split_headers must equal."""

    def __init__(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


_NAMES = ["Host", "host", "X-A", "x-a", "Connection", "Content-Length", "content-length", "Transfer-Encoding", "TE",
          "te", "Trailer", "Keep-Alive", "Upgrade", "Proxy-Connection", "Proxy-Authorization", "Proxy-Authenticate",
          "Connection-X", "X-Connection", "Tee", "T", "C", "Content-Lengths", "u"]
_VALUES = ["", " ", "x", " x ", "\tx\t", "a b", "keep-alive", " close", "Keep-Alive, Close", "keep-alive, x",
           ",,close,", "chunked", " Chunked\t", "chunked, chunked", "gzip", "0", "17", " 17 ", "007", "1,1",
           "123456789012345678", "1234567890123456789", "-1", "x:y", "\x80\xff", "é"]
_heads = st.tuples(
    st.sampled_from(["GET http://a/ HTTP/1.1", "POST / HTTP/1.0", "HTTP/1.1 200 OK", "HTTP/1.0 404 Not Found",
                     "HTTP/1.1 204 ", "HTTP/1.1 101 Switching"]),
    st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=8),
).map(lambda t: (t[0] + "".join(f"\r\n{k}:{v}" for k, v in t[1]) + "\r\n\r\n").encode("utf-8"))


def _llhttp(raw: bytes):
    """The headers llhttp gives for ``raw``, or None when it refuses it."""
    lines = _Lines()
    parser = (httptools.HttpResponseParser if raw.startswith(b"HTTP/") else httptools.HttpRequestParser)(lines)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return None
    return lines.headers


@settings(max_examples=500, deadline=None)
@given(_heads)
def test_split_headers_is_what_llhttp_gives(raw):
    headers = _llhttp(raw)
    if headers is None:
        return
    index = {}
    for k, v in headers:
        index.setdefault(k.lower(), []).append(v)
    assert http1.split_headers_py(raw) == (headers, index)
    if _speedups is not None:
        assert _speedups.split_headers(raw) == (headers, index)


@settings(max_examples=500, deadline=None)
@given(_heads.filter(lambda raw: raw.startswith(b"HTTP/")))
def test_scan_response_in_c_is_the_python_one(raw):
    if _llhttp(raw) is None:
        return
    if _speedups is None:
        pytest.skip("the C versions are not built here")
    assert _speedups.scan_response(raw) == http1.scan_response_py(raw)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b":", b" ", b"\t", b",", b"a", b"Connection", b"close",
                                 b"Content-Length", b"7", b"Transfer-Encoding", b"chunked", b"HTTP/1.1 200 OK",
                                 b"\x00", b"\xff"]), max_size=30).map(b"".join))
def test_speedups_on_any_bytes_answer_and_never_crash(raw):
    """Bytes llhttp would refuse break the C functions' promises: they still answer (what, the
    callers never ask: they run after llhttp), with the types they promise."""
    if _speedups is None:
        pytest.skip("the C versions are not built here")
    headers, index = _speedups.split_headers(raw)
    assert all(type(k) is bytes and type(v) is bytes for k, v in headers)
    assert sum(len(v) for v in index.values()) == len(headers)
    scanned = _speedups.scan_response(raw)
    if scanned is not None:
        length, chunked, connection, lines = scanned
        assert length >= -1 and chunked in (0, 1) and 0 <= connection <= 3 and len(lines) <= len(raw)
    # the two that validate: None for all of these but a real head, never a crash
    for prefix in (b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b""):
        for parsed in (_speedups.request_head(prefix + raw), _speedups.response_head(prefix + raw, False)):
            assert parsed is None or (type(parsed) is tuple and (prefix + raw).endswith(b"\r\n\r\n"))


def test_speedups_take_only_bytes_and_odd_bytes_safely():
    if _speedups is None:
        pytest.skip("the C versions are not built here")
    for f in (_speedups.split_headers, _speedups.scan_response):
        with pytest.raises(TypeError):
            f("HTTP/1.1 200 OK\r\n\r\n")
        # bytes llhttp would refuse: an answer of some kind, never a crash
        for raw in (b"", b"\r", b"\r\n", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK\r\nA", b"HTTP/1.1 200 OK\r\nA: 1\r",
                    b"X\r\n:\r\n\r\n", b"\r\n\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n"):
            f(raw)


# -- request_head and response_head: a strict grammar, a subset of what llhttp takes ---------------
class _Request(_Lines):
    """httptools callbacks for the reference parse of a request: URL and headers."""

    def __init__(self) -> None:
        super().__init__()
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url


_ODD = ["\x00", "\x7f", "\r", "\n", "\r\n", " ", "\t", ":", "|", "{", "\\", '"', "<", "^", "`", "#", "?", "@", "[",
        "/", "%", ",", "\x80", "\xff", "\x0b"]


def _mutated(heads):
    """Heads, most of them in the usual form, many with a byte or two put in or changed
    anywhere: the edges of both grammars."""
    edits = st.lists(st.tuples(st.integers(0, 400), st.sampled_from(_ODD), st.booleans()), max_size=2)

    def apply(t):
        raw, changes = t
        for pos, odd, replace in changes:
            pos %= len(raw)
            raw = raw[:pos] + odd.encode("latin-1") + raw[pos + replace:]
        return raw
    return st.one_of(heads, heads, heads, st.tuples(heads, edits).map(apply))


_USUAL_HEADER = st.tuples(
    st.sampled_from(["Host", "X-A", "x-a", "Connection", "Keep-Alive", "TE", "Proxy-Connection", "User-Agent", "Accept",
                     "Content-Length", "Transfer-Encoding", "Expect", "Via", "Cookie"]),
    st.sampled_from(["", "a", "keep-alive", "close", "Keep-Alive, close", "x, y", "0", "17", "chunked", "*/*",
                     "upgrade", "a b\tc", "100-continue", "a=1; b=2", "trailers"]),
    st.sampled_from([":", ": ", ":\t", ":  "]))
_PATH = st.text(st.sampled_from(list("aZ09-._~!$&'()*+,;=:@%/?#[]")), max_size=12)
_TARGETS = st.one_of(
    _PATH.map(lambda p: "/" + p),
    _PATH.map(lambda p: "http://127.0.0.1:8080/" + p),
    _PATH.map(lambda p: "http://a.example/" + p),
    st.tuples(st.sampled_from(["http://127.0.0.1:8080", "http://a.example", "HTTP://A", "https://[::1]:8443",
                               "http://a:", "ftp://a", "http://%61", "http://a@b", "http://a.example:80"]), _PATH)
    .map(lambda t: t[0] + ("/" + t[1] if t[1] or t[0].endswith("a") else "")),
    st.sampled_from(["*", "a.example:443", "http:/a", "http:///a", "http//a", "1http://a/", "h-t://a/", "//a",
                     "http://", "http://a?b", "http://a#b"]),
)
_requests = _mutated(st.tuples(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"] * 4
                    + ["CONNECT", "PROPFIND", "M-SEARCH", "PRI", "QUERY", "get", "GETS"]),
    _TARGETS,
    st.sampled_from([" HTTP/1.1", " HTTP/1.0"] * 4 + [" HTTP/2.0", " HTTP/1.2", " HTTP/0.9"]),
    st.lists(st.one_of(_USUAL_HEADER, _USUAL_HEADER, _USUAL_HEADER, st.tuples(
        st.sampled_from(_NAMES + ["Upgrade", "Expect"]), st.sampled_from(_VALUES + ["a\x7fb", "h2c"]),
        st.sampled_from([":", ": ", ":\t"]))), max_size=6),
).map(lambda t: (t[0] + " " + t[1] + t[2] + "".join(f"\r\n{k}{sep}{v}" for k, v, sep in t[3]) + "\r\n\r\n")
      .encode("utf-8")))


def _llhttp_request(raw: bytes):
    """What llhttp gives for a request head: (method, target, version, headers), or None when
    it refuses it or sees an upgrade."""
    seen = _Request()
    parser = httptools.HttpRequestParser(seen)
    try:
        parser.feed_data(raw)
    except (httptools.HttpParserUpgrade, httptools.HttpParserError):
        return None
    return parser.get_method().decode(), seen.url.decode("latin-1"), parser.get_http_version(), seen.headers


def _index(headers):
    index = {}
    for k, v in headers:
        index.setdefault(k.lower(), []).append(v)
    return index


@settings(max_examples=3000, deadline=None)
@given(_requests)
def test_request_head_in_c_takes_only_what_llhttp_takes(raw):
    """Whatever the C grammar takes, llhttp takes too (no error, no upgrade) and reads the same
    method, target, version and headers; and the head the proxy builds from it is llhttp's."""
    if _speedups is None:
        pytest.skip("the C versions are not built here")
    fast = _speedups.request_head(raw)
    if fast is None:
        return
    method, target, version, headers, index = fast
    assert _llhttp_request(raw) == (method, target, version, headers)
    assert index == _index(headers)
    slow = http1.parse_request_head_llhttp(raw)
    assert (slow.method, slow.target, slow.version, slow.headers, slow.index, slow.upgrade) == (
        method, target, version, headers, index, False)


_responses = _mutated(st.tuples(
    st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.0 404 Not Found", "HTTP/1.1 200 ", "HTTP/1.1 200",
                     "HTTP/1.1 099 x", "HTTP/1.1 600 x", "HTTP/1.1 599 x", "HTTP/1.1 101 Switching",
                     "HTTP/1.1 204 No Content", "HTTP/1.1 304 x", "HTTP/1.1 100 Continue", "HTTP/1.2 200 OK"]),
    st.lists(st.one_of(_USUAL_HEADER, _USUAL_HEADER, _USUAL_HEADER, st.tuples(
        st.sampled_from(_NAMES + ["Upgrade", "Server"]), st.sampled_from(_VALUES + ["a\x7fb", "Chunked", "chunked "]),
        st.sampled_from([":", ": ", ":\t"]))), max_size=6),
).map(lambda t: (t[0] + "".join(f"\r\n{k}{sep}{v}" for k, v, sep in t[1]) + "\r\n\r\n").encode("utf-8")))


@settings(max_examples=3000, deadline=None)
@given(_responses)
def test_response_head_in_c_takes_only_what_llhttp_takes(raw):
    """Whatever the C grammar takes, llhttp takes too, as a final answer with the same status
    and version, and the Response is the one llhttp's path gives, to GET and to HEAD."""
    if _speedups is None:
        pytest.skip("the C versions are not built here")
    for method in ("GET", "HEAD"):
        fast = _speedups.response_head(raw, method == "HEAD")
        if fast is None:
            return
        parser = httptools.HttpResponseParser(_Lines())
        parser.feed_data(raw)  # raises (fails the test) on a head llhttp refuses or an upgrade
        assert fast[0] == parser.get_status_code() and 200 <= fast[0] < 600
        assert raw[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ")
        assert _response_parts(http1.Response(*fast)) == _response_parts(http1.quick_response_llhttp(raw, method))


def _response_parts(r):
    assert type(r.framing) is Framing  # the C reader builds the same type as the Python one
    return r.status, r.reason, r.lines, r.framing, r.reusable, r.encode(b"\r\nVia: x")


@pytest.mark.parametrize("raw", [
    b"GET http://127.0.0.1:8080/small.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\n"
    b"Accept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n",
    b"GET http://a.example/x?y=1&z=%20 HTTP/1.1\r\nHost: 127.0.0.1:8090\r\n\r\n",
    b"POST /api/items HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0)\r\n"
    b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\n"
    b"Cookie: a=1; b=\"2\"\r\nIf-None-Match: W/\"abc\"\r\n\r\n",
])
def test_request_head_in_c_takes_the_usual_heads(raw):
    """Not a vacuous subset: the heads clients send every day are read in C, as llhttp reads them."""
    if _speedups is None:
        pytest.skip("the C versions are not built here")
    fast = _speedups.request_head(raw)
    assert fast is not None
    assert _llhttp_request(raw) == fast[:4]
    head = http1.parse_request_head(raw)
    slow = http1.parse_request_head_llhttp(raw)
    assert (head.method, head.target, head.version, head.headers, head.index, head.upgrade, head.connection) == (
        slow.method, slow.target, slow.version, slow.headers, slow.index, slow.upgrade, slow.connection)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 17:00:00 GMT\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 17\r\nConnection: keep-alive\r\nETag: \"abc-11\"\r\nAccept-Ranges: bytes\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
])
def test_response_head_in_c_takes_the_usual_heads(raw):
    if _speedups is None:
        pytest.skip("the C versions are not built here")
    for method in ("GET", "HEAD"):
        assert _speedups.response_head(raw, method == "HEAD") is not None
        assert _response_parts(http1.quick_response(raw, method)) == _response_parts(
            http1.quick_response_llhttp(raw, method))
    with pytest.raises(TypeError):
        _speedups.response_head(raw)


@pytest.mark.parametrize("raw", [
    b"GET http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",  # request bodies by chunks: llhttp's rules
    b"GET http://a/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nContent-Length: 1 \r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\n\r\n",
    b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: \xc3\xa9\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX : y\r\n\r\n",
    b"GET / HTTP/1.1\nX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\n X: y\r\n\r\n",
    b"GET http://@@127.0.0.1:8080/ HTTP/1.1\r\n\r\n",  # llhttp refuses a second '@' (found by Hypothesis)
    b"GET http://u@a/ HTTP/1.1\r\n\r\n",
])
def test_request_head_in_c_leaves_the_rest_to_llhttp(raw):
    """Outside the grammar C answers None, and parse_request_head answers as llhttp does: the
    same head, or the same refusal."""
    if _speedups is None:
        pytest.skip("the C versions are not built here")
    assert _speedups.request_head(raw) is None
    try:
        slow = http1.parse_request_head_llhttp(raw)
    except ProtocolError as e:
        with pytest.raises(ProtocolError, match=re.escape(str(e))):
            http1.parse_request_head(raw)
        return
    head = http1.parse_request_head(raw)
    assert (head.method, head.target, head.headers, head.upgrade) == (
        slow.method, slow.target, slow.headers, slow.upgrade)


@settings(max_examples=1000, deadline=None)
@given(_requests, st.sampled_from([b"GET / HTTP/1.1", b""]), st.sampled_from([b"", b"\r\nVia: 1.1 wmproxy"]),
       st.sampled_from([None, b"", b"a", b"127.0.0.1:8080", b"x y", b"*/*", b"a\r\nb"]),
       st.sampled_from([b"", b"o.test:81", b"[::1]:8080"]))
def test_join_head_in_c_is_the_python_one(raw, start, extra, old, host):
    """Any bytes, not only valid heads: C answers as Python does (and never reads out of bounds)."""
    if _speedups is None:
        pytest.skip("the C versions are not built here")
    if old is None:
        host = None
    if raw.endswith(b"\r\n\r\n") and raw.find(b"\r\n") + 4 <= len(raw):
        assert _speedups.join_head(raw, start, extra, old, host) == http1.join_head_py(raw, start, extra, old, host)
    else:
        _speedups.join_head(raw, start, extra, old, host)  # an answer of some kind, never a crash
    if old is not None:
        assert _speedups.join_head(raw[:5], start, extra, old, host) is None or raw[:5].endswith(b"\r\n\r\n")
    with pytest.raises(TypeError):
        _speedups.join_head(raw, start, extra, old)
    with pytest.raises(TypeError):
        _speedups.join_head(raw, start, extra, old, None if host is not None else b"h")


def _req(text: bytes) -> http1.Head:
    return http1.parse_request_head_llhttp(text)


def test_check_request_host_count_and_value():
    http1.check_request(_req(b"GET / HTTP/1.1\r\nHost: a.test:80\r\n\r\n"))
    http1.check_request(_req(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"))
    http1.check_request(_req(b"GET / HTTP/1.0\r\n\r\n"))  # HTTP/1.0 may leave it out
    http1.check_request(_req(b"CONNECT a:443 HTTP/1.1\r\n\r\n"), host_required=False)
    for bad in (b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n"):
        with pytest.raises(ProtocolError) as e:
            http1.check_request(_req(bad))
        assert e.value.http_status == 400


def test_check_request_limits_and_http10_chunked():
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 100 + b"\r\n"
    with pytest.raises(ProtocolError) as e:
        http1.check_request(_req(many))
    assert e.value.http_status == 431
    http1.check_request(_req(many), max_headers=101)
    with pytest.raises(ProtocolError):
        http1.check_request(_req(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"))


def test_trailer_lines():
    check_trailer_line(b"X-Sum: abc def")
    check_trailer_line(b"X-Empty:")
    for bad in (b"X: a\nb", b" X: a", b"X : a", b"X: a\rb", b"X: a\x00", b"no colon", b": v"):
        with pytest.raises(ProtocolError):
            check_trailer_line(bad)


def test_connection_cannot_drop_framing_or_host():
    head = _req(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host, x-a\r\nX-A: 1\r\n"
                b"Content-Length: 3\r\n\r\n")
    names = [k.lower() for k, _ in head.end_to_end()]
    assert names == [b"host", b"content-length"]


def test_the_new_grammars_refuse_hostile_lines_in_linear_time():
    """ReDoS guard: the longest lines a peer may send (a 4 KiB chunk or trailer line, a Host
    value), shaped to make a backtracking regex try every split, are refused at once. The
    trailer pattern once took 77 ms per such line (quadratic); now each is well under 1 ms,
    so 50 of them under a second leaves a hundredfold margin for a slow machine."""
    import time

    hostile = [
        (check_trailer_line, b"X:" + b" " * 4000 + b"\x00"),
        (check_trailer_line, b"X:" + b"\t " * 2000 + b"\r"),
        (parse_chunk_size, b"5;a" + b" " * 4000 + b"\x00"),
        (parse_chunk_size, b"5" + b";a " * 1300 + b"\x00"),
        (parse_chunk_size, b"5;a=" + b" " * 4000 + b"\n"),
    ]
    started = time.perf_counter()
    for _ in range(50):
        for check, line in hostile:
            with pytest.raises(ProtocolError):
                check(line)
        with pytest.raises(ProtocolError):
            http1.check_request(_req(b"GET / HTTP/1.1\r\nHost: " + b"a" * 4000 + b"@\r\n\r\n"))
    assert time.perf_counter() - started < 1.0
