"""gRPC through [http] (#27): a real grpcio service behind wmproxy (proxy_url grpc://, HTTP/2 to
the service) and grpcio clients in front of it, over h2c and over TLS (ALPN h2): unary, server
streaming, client streaming, bidirectional streaming in lock step (no buffering), a deadline,
an error status and its message (trailers passed through)."""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures

import pytest

from conftest import curl, free_port, wait_port, write_cert

grpc = pytest.importorskip("grpc")

SERVICE = "test.Echo"
NO_PROXY = [("grpc.enable_http_proxy", 0)]


def start_service(credentials=None):
    """A gRPC service (bytes in, bytes out: no protobuf needed) on a free port; TLS with
    ``credentials``."""
    seen = {"cancelled": threading.Event()}

    def unary(request, context):
        return b"echo:" + request + b" " + dict(context.invocation_metadata()).get("x-forwarded-for", "").encode()

    def server_stream(request, context):
        for i in range(5):
            yield b"%d:%s" % (i, request)

    def client_stream(requests, context):
        return b"+".join(requests)

    def bidi(requests, context):
        for message in requests:
            yield message.upper()

    def slow(request, context):
        if not context.add_callback(seen["cancelled"].set):
            seen["cancelled"].set()
        time.sleep(3)
        return b"late"

    def fail(request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    server.port = port
    server.seen = seen
    return server


@pytest.fixture
def service():
    server = start_service()
    yield server
    server.stop(0)


def check_every_kind_of_call(channel, service) -> None:
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    assert unary(b"hi", timeout=10) == b"echo:hi 127.0.0.1"  # (X-Forwarded-For added on the way)
    big = bytes(range(256)) * 4000  # 1 MB: several DATA frames and window updates each way
    assert unary(big, timeout=20) == b"echo:" + big + b" 127.0.0.1"
    assert list(channel.unary_stream(f"/{SERVICE}/ServerStream")(b"x", timeout=10)) == [
        b"0:x", b"1:x", b"2:x", b"3:x", b"4:x"]
    assert channel.stream_unary(f"/{SERVICE}/ClientStream")(iter([b"a", b"b", b"c"]), timeout=10) == b"a+b+c"
    # bidirectional in lock step: each message is sent only once the answer to the last came back,
    # which a proxy that buffers either way would never let happen
    outbox: queue.Queue = queue.Queue()

    def requests():
        while (item := outbox.get(timeout=10)) is not None:
            yield item

    outbox.put(b"one")
    answers = []
    for answer in channel.stream_stream(f"/{SERVICE}/Bidi")(requests(), timeout=20):
        answers.append(answer)
        outbox.put(b"two" if len(answers) == 1 else (b"three" if len(answers) == 2 else None))
    assert answers == [b"ONE", b"TWO", b"THREE"]
    # an error status and its message travel in the trailers
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(f"/{SERVICE}/Fail")(b"", timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and e.value.details() == "not for you"
    # a deadline: the client gives up, the proxy cancels the stream upstream, and goes on serving
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(f"/{SERVICE}/Slow")(b"", timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 2.5
    assert service.seen["cancelled"].wait(5)  # the service saw its call cancelled
    assert unary(b"after", timeout=10) == b"echo:after 127.0.0.1"


def test_grpc_through_http_over_h2c(start_proxy, service):
    p = start_proxy(config=f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                           f'rule = "/{SERVICE}/"\nproxy_url = "grpc://127.0.0.1:{service.port}"\n', bind=False)
    with grpc.insecure_channel(f"127.0.0.1:{p.port}", options=NO_PROXY) as channel:
        check_every_kind_of_call(channel, service)
    log = p.wait_log(f'"POST 127.0.0.1:{p.port}/{SERVICE}/Unary HTTP/2.0" 200')
    assert f"/{SERVICE}/Bidi HTTP/2.0\" 200" in log and f"(127.0.0.1:{service.port})" in log


def test_grpc_through_http_over_tls_with_an_upstream_group(start_proxy, service, ca, tmp_path):
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_cert(ca, tmp_path, "site", "grpc.test")
    p = start_proxy(config=f'[[http.upstream]]\nname = "echo"\nprotocol = "h2"\n'
                           f'server = [{{ addr = "127.0.0.1:{service.port}" }}]\n'
                           f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n'
                           f'cert = "{tmp_path}/site.pem"\nkey = "{tmp_path}/site.key"\n'
                           f'[[http.server.location]]\nproxy_url = "http://echo"\n', bind=False)
    credentials = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "ca.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{p.port}", credentials,
                             options=[*NO_PROXY, ("grpc.ssl_target_name_override", "grpc.test")]) as channel:
        check_every_kind_of_call(channel, service)


def test_grpcs_upstream_verified_and_a_plain_client(start_proxy, ca, tmp_path):
    """grpcs://: TLS with ALPN h2 to the service, its certificate verified (proxy_ssl_ca); the
    client speaks h2c to wmproxy."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_cert(ca, tmp_path, "svc", "svc.test")
    credentials = grpc.ssl_server_credentials([((tmp_path / "svc.key").read_bytes(),
                                                 (tmp_path / "svc.pem").read_bytes())])
    service = start_service(credentials)
    try:
        conf = (f'[[http.server]]\nbind = "127.0.0.1:{{port}}"\n[[http.server.location]]\n'
                f'proxy_url = "grpcs://127.0.0.1:{service.port}"\nproxy_ssl_name = "svc.test"\n'
                f'proxy_ssl_ca = "{tmp_path}/ca.pem"\n')
        p = start_proxy(config=conf, bind=False)
        with grpc.insecure_channel(f"127.0.0.1:{p.port}", options=NO_PROXY) as channel:
            check_every_kind_of_call(channel, service)
        # the same service named with a name its certificate does not carry: refused, 502
        p.stop()
        wrong = start_proxy(config=conf.replace('"svc.test"', '"other.test"'), bind=False)
        with grpc.insecure_channel(f"127.0.0.1:{wrong.port}", options=NO_PROXY) as channel:
            with pytest.raises(grpc.RpcError) as e:
                channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=10)
        assert "502" in e.value.details()
        wrong.wait_log("certificate verify failed")
    finally:
        service.stop(0)


def test_grpc_through_https_and_http_mappings_and_http1_beside(pair, service, origin, tmp_path):
    """Intranet penetration of a gRPC service (local_http2): an https mapping (TLS ends on the
    center server, ALPN h2) and an http one (h2c), each request an HTTP/2 stream over one
    connection to the service through the link; an HTTP/1.1 client reaches the same mapping, and
    an HTTP/2 client reaches an ordinary HTTP/1.1 mapping."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "map-ca.pem"))
    write_cert(ca, tmp_path, "grpc", "grpc.test", "web.test")
    web, secure = free_port(), free_port()
    p = pair(start_client=False, server_extra=(
        f'map_http_bind = "127.0.0.1:{web}"\nmap_https_bind = "127.0.0.1:{secure}"\n'
        f'map_cert = ["{tmp_path}/grpc.pem"]\nmap_key = ["{tmp_path}/grpc.key"]'))
    mappings = "".join(
        f'[[mappings]]\nname = "{name}"\nmode = "{mode}"\nlocal_addr = "127.0.0.1:{port}"\ndomain = "{domain}"\n'
        f'{extra}' for name, mode, port, domain, extra in (
            ("grpcs", "https", service.port, "grpc.test", "local_http2 = true\n"),
            ("grpc", "http", service.port, "grpc.test", "local_http2 = true\n"),
            ("web", "https", origin.port, "web.test", "")))
    p.client = p.start_client(tail=mappings)
    p.client.wait_log("mapping 'web' published")
    wait_port(web)
    wait_port(secure)
    credentials = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "map-ca.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{secure}", credentials,
                             options=[*NO_PROXY, ("grpc.ssl_target_name_override", "grpc.test")]) as channel:
        check_every_kind_of_call(channel, service)
    service.seen["cancelled"].clear()
    with grpc.insecure_channel(f"127.0.0.1:{web}", options=[*NO_PROXY, ("grpc.default_authority", "grpc.test")]) \
            as channel:
        check_every_kind_of_call(channel, service)
    # HTTP/1.1 to the same gRPC mapping: the answer's trailers come as the chunked body's
    frame = b"\x00\x00\x00\x00\x02hi"
    (tmp_path / "frame").write_bytes(frame)
    r = curl("-sS", "--http1.1", "--raw", "--cacert", str(tmp_path / "map-ca.pem"), "--resolve",
             f"grpc.test:{secure}:127.0.0.1", "-H", "Content-Type: application/grpc", "-H", "TE: trailers",
             "--data-binary", f"@{tmp_path / 'frame'}", f"https://grpc.test:{secure}/{SERVICE}/Unary")
    assert b"echo:hi 127.0.0.1" in r.stdout and b"grpc-status: 0" in r.stdout, r.stdout + r.stderr
    # HTTP/2 to an HTTP/1.1 service's mapping
    r = curl("-sS", "--http2", "-w", "\n%{http_version}", "--cacert", str(tmp_path / "map-ca.pem"), "--resolve",
             f"web.test:{secure}:127.0.0.1", f"https://web.test:{secure}/whoami")
    assert r.stdout == b"origin-A\n2", r.stdout + r.stderr
