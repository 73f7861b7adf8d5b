"""The floor of this design for the HTTP proxy benchmark: a gevent loop that relays each
request to one fixed upstream and the reply back, with the readers' kept watchers, but parses
nothing (pproxy's shortcut, minus asyncio). What wmproxy costs above it is the parsing and the
rules; see docs/BENCHMARKS.md.

    bench/floor.py LISTEN_PORT ORIGIN_PORT      (then wrk with absolute-form requests to it)
    bench/floor.py LISTEN_PORT                  (the static floor: each read answered with the
                                                 bytes of a small file's 200, parsing nothing)

Not a proxy: the absolute-form target is cut to origin-form by a byte replace.
"""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from gevent.server import StreamServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wmproxy.net.reader import _Watch  # noqa: E402


STATIC = (b"HTTP/1.1 200 OK\r\nDate: Mon, 07 Dec 2026 07:10:47 GMT\r\nContent-Type: text/plain; charset=utf-8\r\n"
          b"ETag: \"18eee725-11\"\r\nLast-Modified: Mon, 07 Dec 2026 07:10:47 GMT\r\nAccept-Ranges: bytes\r\n"
          b"Vary: Accept-Encoding\r\nContent-Length: 17\r\n\r\nhello from nginx\n")


def static(listen: int) -> None:
    def handle(client, _address) -> None:
        watch, recv, send = _Watch(client.fileno()), client._sock.recv, client._sock.send
        try:
            while True:
                watch.wait()
                if not recv(65536):
                    return
                send(STATIC)
        except OSError:
            pass
        finally:
            watch.close()

    StreamServer(("127.0.0.1", listen), handle).serve_forever()


def main() -> None:
    if len(sys.argv) == 2:
        return static(int(sys.argv[1]))
    listen, origin = int(sys.argv[1]), int(sys.argv[2])
    prefix = f"http://127.0.0.1:{origin}".encode()

    def handle(client, _address) -> None:
        upstream = socket.create_connection(("127.0.0.1", origin))
        cw, uw = _Watch(client.fileno()), _Watch(upstream.fileno())
        crecv, urecv, csend, usend = client._sock.recv, upstream._sock.recv, client._sock.send, upstream._sock.send
        try:
            while True:
                cw.wait()
                data = crecv(65536)
                if not data:
                    return
                usend(data.replace(prefix, b"", 1))
                uw.wait()
                data = urecv(65536)
                if not data:
                    return
                csend(data)
        except OSError:
            pass
        finally:
            cw.close()
            uw.close()
            upstream.close()

    StreamServer(("127.0.0.1", listen), handle).serve_forever()


if __name__ == "__main__":
    main()
