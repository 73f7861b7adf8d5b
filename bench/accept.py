"""How workers share a listening socket, measured apart from wmproxy (bench/run --only accept).

Two gevent worker processes answer small keep-alive GETs (the least work a worker can do per
request, so the sharing is what differs), in three ways:

- ``shared``: one socket bound by the parent, inherited by both (gunicorn; wmproxy's choice),
  each worker accepting one connection per wake-up (wmproxy's ``max_accept = 1``);
- ``shared, burst``: the same with gevent's default of up to 100 accepts per wake-up;
- ``reuseport``: a socket of its own per worker (SO_REUSEPORT; nginx's ``reuseport``), the
  kernel spreading new connections by a hash.

For each: requests/s under wrk -c64, and how wrk's 64 connections were spread over the two.
Then what a worker that dies with connections waiting in the accept queue loses: one worker is
stopped (SIGSTOP), 200 clients connect, and it is killed: with one shared queue the other worker
takes them all; with its own queue (reuseport) they are reset.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from bench import LOAD_CPU, free_port, wait_port

WORKER = r"""
import os, signal, socket, sys
from gevent import monkey; monkey.patch_all()
from gevent.server import StreamServer
mode, port, out, fd = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if mode == "reuseport":
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
else:
    sock = socket.socket(fileno=fd)
accepted = [0]
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"
def serve(conn, addr):
    accepted[0] += 1
    buf = b""
    while True:
        try:
            data = conn.recv(65536)
        except OSError:  # (wrk resets its connections at the end)
            return
        if not data:
            return
        buf += data
        while b"\r\n\r\n" in buf:
            _, _, buf = buf.partition(b"\r\n\r\n")
            conn.sendall(ANSWER)
server = StreamServer(sock, serve)
if mode == "shared":
    server.max_accept = 1
def done(*a):
    open(out, "w").write(str(accepted[0]))
    os._exit(0)
signal.signal(signal.SIGTERM, done)
server.serve_forever()
"""


def start_pair(b, mode: str) -> tuple[list[subprocess.Popen], int, list[str]]:
    port = free_port()
    outs = [str(b.tmp / f"accept-{mode}-{i}.txt") for i in range(2)]
    listener = None
    if mode != "reuseport":
        listener = socket.socket()
        listener.bind(("127.0.0.1", port))
        listener.listen(1024)
    procs = []
    arg = {"shared": "shared", "shared,burst": "burst", "reuseport": "reuseport"}[mode]
    fd = listener.fileno() if listener is not None else -1
    for out in outs:
        procs.append(subprocess.Popen(["taskset", "-c", "0,1", sys.executable, "-c", WORKER, arg, str(port), out,
                                       str(fd)], pass_fds=(fd,) if fd >= 0 else ()))
    if listener is not None:
        listener.close()  # the workers hold it now
    wait_port(port)
    time.sleep(0.5)
    return procs, port, outs


def stop_pair(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def run(b) -> None:
    print(f"\nsharing a listening socket between two gevent workers: small GETs, wrk -c{b.connections} "
          f"{b.seconds}s (workers on CPUs 0,1, wrk on CPU {LOAD_CPU}):")
    modes = {"shared": "shared", "shared, burst": "shared,burst", "reuseport": "reuseport"}
    spread: dict[str, list[str]] = {}

    def one(label: str) -> float:
        procs, port, outs = start_pair(b, modes[label])
        try:
            rps = b.run_wrk(label, [f"http://127.0.0.1:{port}/"], "accept")
        finally:
            stop_pair(procs)
        counts = []
        for out in outs:
            try:
                counts.append(open(out).read())
            except OSError:
                counts.append("?")
        spread.setdefault(label, []).append("/".join(counts))
        return rps

    b.in_rounds("accept", [(label, lambda label=label: one(label)) for label in modes],
                [("reuseport / shared", "reuseport", "shared", 0),
                 ("shared, burst / shared", "shared, burst", "shared", 0)])
    for label, each in spread.items():
        print(f"    connections per worker, {label:<14} {', '.join(each)}  (of wrk's {b.connections} plus one probe)")
    print("  a worker killed with 200 connections waiting (it was stopped when they came):")
    for label in ("shared", "reuseport"):
        procs, port, _ = start_pair(b, modes[label])
        try:
            procs[0].send_signal(signal.SIGSTOP)
            clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
            time.sleep(0.5)
            procs[0].kill()
            procs[0].wait()
            answered = lost = 0
            for c in clients:
                try:
                    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    answered += c.recv(100).startswith(b"HTTP/1.1 200")
                except OSError:
                    lost += 1
                finally:
                    c.close()
        finally:
            stop_pair(procs)
        print(f"    {label:<10} answered {answered}, reset {lost} of 200")
        b.results.setdefault("accept", {})[f"{label} killed worker"] = {"answered": answered, "reset": lost}
