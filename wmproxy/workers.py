"""Every core: a master process and worker processes sharing the listeners (``workers = N``).

With ``workers`` above 1 the process started by ``bin/wmproxy-server`` / ``wmproxy-client`` is a
small master that proxies nothing. It:

- **binds** every listening socket the configuration asks for, once: one TCP socket per listener,
  which every worker accepts from (the kernel's one accept queue: a worker that dies or drains
  strands no connection, as with gunicorn's shared socket); and for a UDP listener one
  ``SO_REUSEPORT`` socket per worker (the kernel hashes a client's address to one of them, so a
  client's session stays in one worker; a restarted worker gets the same socket back, with the
  datagrams queued meanwhile). A reload binds what is new before anything changes.
- **starts** the workers: fresh interpreters (``python -m wmproxy.launch worker``; no fork of a process
  with a gevent hub) that get the configuration and their sockets over a Unix socket
  (SCM_RIGHTS) and run the one-process App on them. They die with the master
  (PR_SET_PDEATHSIG, and the socket's end).
- **supervises** them: one that dies is started again (at once after a long life, with a
  doubling delay up to 30 s when it dies young), the others serve meanwhile.
- **reloads** (SIGHUP, ``POST /reload``, ``watch``): the file is loaded and checked once, new
  sockets bound; only then does every worker apply it (the same diff rules as one process:
  live connections keep their settings). An invalid file changes nothing anywhere. A change of
  ``workers`` starts or stops workers (the stopped ones drain).
- **stops** (SIGTERM, ``POST /stop``): every worker stops accepting at once and drains for
  ``grace``; the master exits 0 when they are gone.
- **upgrades**: ``POST /upgrade`` (``upgrade``) starts new workers, running the code installed
  now, beside the old ones, which drain once their successors are ready; SIGUSR2 executes the
  master itself again first (same pid, every listening socket kept open across the exec, the
  installed code's ``--check`` passed first), whose new image starts new workers; once they are
  ready the old ones drain.
- serves the **control API** itself: ``/status`` and ``/metrics`` sum the workers' figures (and
  show each worker), so one scrape covers the whole process tree.

The center link lives in worker 0 with everything that depends on it: the center server's
listener, its mapping ports and the shared http(s) mapping listeners, or a center client's
link and its local proxy. One registry then sees every mapping (conflicts are refused across
all links), and a client's public ports are in the process that holds its link. Losing
worker 0 loses the links (their clients reconnect to the new worker 0), nothing else.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import pickle
import re
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import gevent
from gevent import socket as gsocket
from gevent import subprocess as gsubprocess
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore

from . import config, logs
from .app import App, Role, check_files, listener_specs, open_socket, serve_until
from .config import Config
from .errors import ConfigError
from .listener import ListenerSpec
from .metrics import add_histograms, merge_servers
from .net import live
from .net.listen import BindError, open_listener, open_udp
from .net.targets import register_tree
from .service import notify, notify_reloading

log = logging.getLogger("wmproxy")

WORKER_FD = "WMPROXY_WORKER_FD"  # the worker's end of its Unix socket to the master
INHERIT = "WMPROXY_INHERIT"  # a re-executed master's sockets and old workers (JSON)
MASTER_PID = "WMPROXY_MASTER_PID"
START_TIMEOUT = 30.0  # seconds a worker has to report ready
ASK_TIMEOUT = 5.0  # seconds a worker has to answer a status request
YOUNG = 5.0  # a worker that dies sooner than this after its start is restarted after a delay
MAX_DELAY = 30.0
CENTER_KINDS = frozenset(("center", "map-http", "map-https"))
Key = tuple[str, str]


# -- the channel between the master and a worker ------------------------------------------------

class Channel:
    """Messages (pickled dicts, each with the descriptors sent beside it: SCM_RIGHTS) over a
    Unix stream socket between a master and the worker it started: a channel between two
    processes of one program, never open to anything else."""

    MAX_FDS = 250  # per message (the kernel's SCM_MAX_FD is 253)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._fds: list[int] = []
        self._send = Semaphore()

    def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        if len(fds) > self.MAX_FDS:
            raise ValueError(f"more than {self.MAX_FDS} sockets in one message")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        data = struct.pack("!I", len(data)) + data
        with self._send:
            sent = socket.send_fds(self.sock, [data], list(fds)) if fds else 0
            if sent < len(data):
                self.sock.sendall(data[sent:])

    def receive(self) -> tuple[dict[str, Any], list[int]]:
        """The next message and the descriptors that came with it. Raises EOFError."""
        while True:
            if len(self._buf) >= 4:
                (size,) = struct.unpack_from("!I", self._buf)
                if len(self._buf) >= 4 + size:
                    message = pickle.loads(bytes(self._buf[4:4 + size]))
                    del self._buf[:4 + size]
                    fds, self._fds = self._fds, []
                    return message, fds
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, self.MAX_FDS)
            if not data:
                for fd in fds:
                    os.close(fd)
                raise EOFError("the other end closed the channel")
            self._buf += data
            self._fds += fds

    def close(self) -> None:
        self.sock.close()


def worker_serves(worker: int, spec: ListenerSpec, cfg: Config) -> bool:
    """Which listeners worker ``worker`` serves: not the control API (the master's); the center
    link's listeners, and a center client's local proxy, in worker 0 only."""
    if spec.kind == "control":
        return False
    if spec.kind in CENTER_KINDS or (spec.kind == "proxy" and cfg.center is not None and not cfg.center.is_server):
        return worker == 0
    return True


# -- the master --------------------------------------------------------------------------------

@dataclass(eq=False)
class Worker:
    """One worker as the master knows it."""

    id: int
    proc: Any = None  # gevent.subprocess.Popen
    channel: Optional[Channel] = None
    started_at: float = 0.0
    restarts: int = 0
    delay: float = 0.0  # before the next restart, when it dies young
    ready: Event = field(default_factory=Event)
    failed: str = ""  # why it could not start
    retired: bool = False  # stopped by a reload that lowered ``workers``: not restarted
    pending: dict[int, AsyncResult] = field(default_factory=dict)
    asked: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def ask(self, op: str, timeout: float, fds: Sequence[int] = (), **args: Any) -> dict[str, Any]:
        """Send a request and wait for its answer. Raises OSError, EOFError, gevent.Timeout."""
        if self.channel is None:
            raise EOFError(f"worker {self.id} is not running")
        self.asked += 1
        ident = self.asked
        result: AsyncResult = AsyncResult()
        self.pending[ident] = result
        try:
            self.channel.send({"op": op, "id": ident, **args}, fds)
            answer: dict[str, Any] = result.get(timeout=timeout)
            return answer
        finally:
            self.pending.pop(ident, None)


class Master:
    """The master of ``workers`` processes (see the module's doc). Runs like an App: start(),
    serve_forever(), stop()."""

    def __init__(self, cfg: Config, config_file: str | None, overrides: list[config.Override], prog: str) -> None:
        self.cfg = cfg
        self.config_file = config_file
        self.overrides = overrides
        self.prog = prog
        self.tcp: dict[Key, socket.socket] = {}  # one listening socket per TCP listener, every worker's
        self.udp: dict[tuple[Key, int], socket.socket] = {}  # one SO_REUSEPORT socket per UDP listener and worker
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.running = False  # every worker of the start is ready
        self._stopped = Event()
        self._lock = Semaphore()
        self.started_at = time.time()
        # what the master had before it re-executed itself (SIGUSR2): its sockets, its old workers
        self.inherited: dict[tuple[Key, int], socket.socket] = {}  # (key, worker or -1) -> socket
        self.old_workers: list[int] = []
        self.old_channels: list[socket.socket] = []
        self._inherit()
        # the control API, served here (its App serves nothing else)
        self.app = App(cfg, config_file, overrides, prog,
                       Role(serves=lambda spec, cfg: spec.kind == "control", bind=self._control_socket,
                            center_client=False, process=self))
        self.app.reload = self.reload  # type: ignore[method-assign]  # (its file watch reloads the master)

    @property
    def grace(self) -> float:
        return self.cfg.grace

    # -- sockets ----------------------------------------------------------------------------
    def _bind_new(self, cfg: Config,
                  count: int) -> tuple[dict[Key, socket.socket], dict[tuple[Key, int], socket.socket]]:
        """Bind what ``cfg`` asks for that is not bound yet (for ``count`` workers). Raises
        BindError or ConfigError, having closed what it bound."""
        specs = listener_specs(cfg)
        tcp: dict[Key, socket.socket] = {}
        udp: dict[tuple[Key, int], socket.socket] = {}
        try:
            for key, spec in specs.items():
                if spec.kind == "control":
                    continue
                if spec.transport == "udp":
                    for i in range(count):
                        if (key, i) not in self.udp:
                            kept = self.inherited.pop((key, i), None)
                            udp[(key, i)] = kept or open_udp(spec.bind, spec.label, reuseport=True)
                elif key not in self.tcp:
                    kept = self.inherited.pop((key, -1), None)
                    tcp[key] = kept or open_listener(spec.bind, spec.label)
        except BindError:
            for sock in [*tcp.values(), *udp.values()]:
                sock.close()
            raise
        return tcp, udp

    def _forget_sockets(self, cfg: Config, count: int) -> None:
        """Close the sockets ``cfg`` no longer asks for (the workers hold their own copies
        while they drain)."""
        keys = set(listener_specs(cfg))
        for key in [k for k in self.tcp if k not in keys]:
            self.tcp.pop(key).close()
        for key, i in [k for k in self.udp if k[0] not in keys or k[1] >= count]:
            self.udp.pop((key, i)).close()

    def _control_socket(self, spec: ListenerSpec) -> socket.socket:
        kept = self.inherited.pop((spec.key, -1), None)
        return kept or open_socket(spec)

    def _inherit(self) -> None:
        """After a re-execution (SIGUSR2): the sockets this same process held before, and the
        workers it had, reaped here. Their channels came across too: closed once the new workers
        are ready (:meth:`start`), which makes the old ones stop accepting and drain, so that
        the listeners are never without a worker accepting."""
        text = os.environ.pop(INHERIT, "")
        if not text:
            return
        state = json.loads(text)
        for kind, bind, worker, fd in state["sockets"]:
            self.inherited[((kind, bind), worker)] = socket.socket(fileno=fd)
        self.old_channels = [socket.socket(fileno=fd) for fd in state.get("channels", [])]
        self.old_workers = list(state["workers"])
        for pid in self.old_workers:
            gevent.spawn(self._reap, pid)

    def _reap(self, pid: int) -> None:
        """Wait for an old worker (from before a re-execution: no Popen here) to end."""
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                if pid in self.old_workers:
                    self.old_workers.remove(pid)
                return
            gevent.sleep(0.5)

    def reexec(self, trigger: str) -> None:
        """SIGUSR2: run the installed code in this process again (execv: same pid, so the pid
        file and systemd's MAINPID stay right), keeping every listening socket open across it.
        The new image starts new workers; the old ones serve meanwhile, and stop accepting and
        drain for ``grace`` once those are ready (their channels cross the exec, and the new
        image closes them then). First the installed code checks the
        configuration (``--check``, in a process of its own): a new version that cannot start,
        or a file it refuses, leaves this master serving. Returns only on failure."""
        argv = [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]
        try:
            check = gsubprocess.run([*argv, "--check"], capture_output=True, text=True, timeout=120)
        except (OSError, gsubprocess.TimeoutExpired) as e:
            log.error("upgrade (%s): the installed code could not be checked (%s); this master keeps serving",
                      trigger, e)
            return
        if check.returncode != 0:
            why = (check.stderr or check.stdout).strip().splitlines()[-1:] or ["(no output)"]
            log.error("upgrade (%s): the installed code refuses to start (%s); this master keeps serving",
                      trigger, why[0])
            return
        with self._lock:
            sockets = [(key, -1, sock) for key, sock in self.tcp.items()]
            sockets += [(key, i, sock) for (key, i), sock in self.udp.items()]
            sockets += [(key, -1, listener.socket) for key, listener in self.app.listeners.items()
                        if listener.socket is not None]
            old = [*self.old_workers, *(w.pid for w in self.workers.values()
                                        if w.proc is not None and w.proc.poll() is None)]
            channels = [w.channel.sock.fileno() for w in self.workers.values() if w.channel is not None]
            channels += [sock.fileno() for sock in self.old_channels]
            state = {"sockets": [[key[0], key[1], i, sock.fileno()] for key, i, sock in sockets], "workers": old,
                     "channels": channels}
            for fd in [*(sock.fileno() for _, _, sock in sockets), *channels]:
                os.set_inheritable(fd, True)
            notify_reloading(trigger)
            log.info("upgrade (%s): the master runs the installed code again (pid %d stays), then new workers "
                     "take over while the old ones (%s) drain", trigger, os.getpid(),
                     " ".join(map(str, old)))
            for handler in logging.getLogger().handlers:
                handler.flush()
            try:
                os.execve(sys.executable, argv, {**os.environ, INHERIT: json.dumps(state)})
            except OSError as e:
                log.error("upgrade (%s): cannot run %s again: %s; this master keeps serving", trigger,
                          sys.executable, e.strerror or e)
                notify("READY=1", "STATUS=serving")

    def _tree_addresses(self) -> list[tuple[str, int, int]]:
        """(host, port, type) of every listening socket here, the control API's too: the
        workers' forward proxies never dial them."""
        socks = [*self.tcp.values(), *self.udp.values(),
                 *(listener.socket for listener in self.app.listeners.values() if listener.socket is not None)]
        out = []
        for sock in socks:
            try:
                host, port = sock.getsockname()[:2]
            except OSError:
                continue
            out.append((host, port, int(sock.type)))
        return out

    def _sockets_for(self, worker: int) -> tuple[list[Key], list[int]]:
        """The (keys, descriptors) a worker gets, at its start and with each reload: every TCP
        listener's and its own UDP ones (it keeps those it serves: which it serves may change
        with a reload, a center client's coming or going moves the local proxy)."""
        out = [(key, sock) for key, sock in self.tcp.items()]
        out += [(key, sock) for (key, i), sock in self.udp.items() if i == worker]
        return [key for key, _ in out], [sock.fileno() for _, sock in out]

    # -- starting ---------------------------------------------------------------------------
    def start(self, before_workers: Callable[[], None] = lambda: None) -> None:
        """Bind everything, call ``before_workers`` (dropping root), start the workers and wait
        until each is ready. Raises BindError, ConfigError (then nothing is left running)."""
        try:
            listener_specs(self.cfg)  # (a configuration that starts nothing is refused here)
        except ConfigError as e:
            raise ConfigError(self.config_file or "", e.path, e.message) from None
        self.tcp, self.udp = self._bind_new(self.cfg, self.cfg.worker_count)
        try:
            self.app.start()  # the control API
            before_workers()
            for i in range(self.cfg.worker_count):
                self._start_worker(self.workers.setdefault(i, Worker(i)))
            for worker in list(self.workers.values()):
                worker.ready.wait(START_TIMEOUT)
                if worker.failed or not worker.ready.is_set():
                    raise ConfigError(self.config_file or "", "", f"worker {worker.id} did not start: "
                                      f"{worker.failed or f'not ready within {START_TIMEOUT:g}s'}")
        except BaseException:
            self.stopping = True
            self._stop_workers(0)
            self._close_sockets()
            self.app.stop(0)
            raise
        self.running = True
        # (logged before the old workers hear of it: the log tells the handover in its order)
        log.info("master %d: %d workers started (pids %s)", os.getpid(), len(self.workers),
                 " ".join(str(w.pid) for w in self.workers.values()))
        for sock in self.inherited.values():  # listeners the configuration no longer has
            sock.close()
        self.inherited.clear()
        for sock in self.old_channels:  # the new workers are ready: the old ones stop and drain
            sock.close()
        self.old_channels.clear()

    def _start_worker(self, worker: Worker) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env[WORKER_FD] = str(child.fileno())
        env[MASTER_PID] = str(os.getpid())
        env.pop("NOTIFY_SOCKET", None)  # the master speaks to systemd
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        worker.ready.clear()
        worker.failed = ""
        worker.proc = gsubprocess.Popen([sys.executable, "-m", "wmproxy.launch", "worker", self.prog],
                                        pass_fds=(child.fileno(),), env=env, stdin=gsubprocess.DEVNULL)
        child.close()
        worker.started_at = time.time()
        worker.channel = Channel(gsocket.socket(fileno=parent.detach()))
        keys, fds = self._sockets_for(worker.id)
        worker.channel.send({"op": "start", "worker": worker.id, "config": self.cfg, "config_file": self.config_file,
                             "overrides": self.overrides, "prog": self.prog, "keys": keys,
                             "tree": self._tree_addresses()}, fds)
        gevent.spawn(self._read, worker, worker.channel)
        gevent.spawn(self._supervise, worker, worker.proc)

    def _read(self, worker: Worker, channel: Channel) -> None:
        """The worker's messages: its answers, and ready / failed."""
        while True:
            try:
                message, fds = channel.receive()
            except (EOFError, OSError):
                return
            for fd in fds:
                os.close(fd)
            op = message.get("op")
            if op == "ready":
                worker.ready.set()
            elif op == "failed":
                worker.failed = message.get("error", "?")
                worker.ready.set()
            elif op == "answer":
                waiting = worker.pending.get(message.get("id", 0))
                if waiting is not None:
                    waiting.set(message)

    def _supervise(self, worker: Worker, proc: Any) -> None:
        """Wait for the worker's end; start it again unless the master stops or retired it."""
        status = proc.wait()
        if worker.proc is not proc:
            return
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        for waiting in list(worker.pending.values()):
            waiting.set({"op": "answer", "ok": False, "error": f"worker {worker.id} exited"})
        if not self.running and not worker.ready.is_set():  # at start: the start fails, no retry
            worker.failed = worker.failed or f"it exited with status {status} before it was ready"
            worker.ready.set()
            return
        if status == 0 and not self.stopping:  # it was told to stop: systemd's KillMode=control-group
            gevent.sleep(1.0)                  # signals the whole group, the master too
        if self.stopping or worker.retired:
            return
        lived = time.time() - worker.started_at
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        worker.delay = 0.0 if lived >= YOUNG else min(MAX_DELAY, max(0.5, worker.delay * 2))
        log.warning("worker %d (pid %d) %s after %.1fs; starting it again%s", worker.id, proc.pid, how, lived,
                    f" in {worker.delay:g}s (it died young)" if worker.delay else "")
        if worker.delay:
            gevent.sleep(worker.delay)
        if self.stopping or worker.retired:
            return
        worker.restarts += 1
        try:
            self._start_worker(worker)
        except OSError as e:
            log.error("worker %d: cannot start: %s", worker.id, e)
            gevent.spawn(self._supervise, worker, proc)  # (tries again after the delay)
            return
        worker.ready.wait(START_TIMEOUT)
        if worker.ready.is_set() and not worker.failed:
            log.info("worker %d started again (pid %d)", worker.id, worker.pid)
        elif worker.failed:
            log.error("worker %d could not start again: %s", worker.id, worker.failed)

    # -- reload -----------------------------------------------------------------------------
    def reload(self, trigger: str) -> dict[str, Any]:
        """Load and check the file once, bind what is new, then have every worker apply it.
        Never raises; answers as App.reload."""
        with self._lock:
            notify_reloading(trigger)
            try:
                return self._reload(trigger)
            finally:
                notify("READY=1", "STATUS=serving")

    def _reload(self, trigger: str) -> dict[str, Any]:
        old = self.cfg
        try:
            new = self.app.load_again()
            check_files(new, self.config_file)
            specs = listener_specs(new)
            count = new.worker_count
            tcp, udp = self._bind_new(new, count)
        except (ConfigError, BindError) as e:
            return self.app.reload_failed(trigger, str(e))
        answer = self.app.apply(new, trigger)  # the control API's listener (and the log settings)
        if not answer.get("ok"):
            for sock in [*tcp.values(), *udp.values()]:
                sock.close()
            return answer
        self.tcp.update(tcp)
        self.udp.update(udp)
        self.cfg = new
        failures = []
        jobs = []
        tree = self._tree_addresses()
        for worker in list(self.workers.values()):
            if worker.id < count:
                keys, fds = self._sockets_for(worker.id)
                jobs.append((worker, gevent.spawn(worker.ask, "reload", START_TIMEOUT, fds, config=new,
                                                   trigger=trigger, keys=keys, tree=tree)))
        for worker, job in jobs:
            job.join()
            result = job.value if job.successful() else {"ok": False, "error": str(job.exception)}
            if not result.get("ok"):
                failures.append(f"worker {worker.id}: {result.get('error')}")
        self._resize(count)
        self._forget_sockets(new, count)
        old_specs = {k: s for k, s in listener_specs(old).items()}
        changes = {
            "added": [f"{k[0]} {k[1]}" for k in specs if k not in old_specs],
            "removed": [f"{k[0]} {k[1]}" for k in old_specs if k not in specs],
            "changed": [f"{k[0]} {k[1]}" for k in specs if k in old_specs and old_specs[k] != specs[k]],
        }
        changes["unchanged"] = len(specs) - len(changes["added"]) - len(changes["changed"])  # type: ignore[assignment]
        for failure in failures:
            log.error("reload (%s): %s", trigger, failure)
        return {**answer, **changes, "workers": count, **({"worker_errors": failures} if failures else {})}

    def _resize(self, count: int) -> None:
        """Start or retire workers so that ``count`` serve (retired ones drain, as on stop)."""
        for i in range(count):
            if i not in self.workers:
                worker = self.workers[i] = Worker(i)
                self._start_worker(worker)
                log.info("worker %d started (workers = %d)", i, count)
        for i in [i for i in self.workers if i >= count]:
            worker = self.workers.pop(i)
            self._retire(worker)
            log.info("worker %d (pid %d) stops: workers = %d", i, worker.pid, count)

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The App's status summed over the workers, with a row per worker."""
        workers = sorted(self.workers.values(), key=lambda w: w.id)
        jobs = [gevent.spawn(w.ask, "status", ASK_TIMEOUT) for w in workers]
        gevent.joinall(jobs)
        mine = self.app.status()  # the control listener, the reload figures, this process
        rows: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        for worker, job in zip(workers, jobs):
            st = job.value.get("status") if job.successful() and job.value.get("ok") else None
            row = {"id": worker.id, "pid": worker.pid, "state": "serving" if st else "starting or gone",
                   "started_at": worker.started_at, "restarts": worker.restarts}
            if st:
                parts.append(st)
                row.update(connections=st["connections"],
                           connections_total=sum(r["connections_total"] for r in st["listeners"]),
                           **{k: st["process"][k] for k in ("rss_bytes", "cpu_percent", "cpu_seconds", "open_fds")})
            rows.append(row)
        merged = merge_status([mine, *parts])
        merged["master"] = {"pid": os.getpid(), **mine["process"]}
        merged["workers"] = rows
        merged["mode"] = "master"
        return merged

    # -- stopping -----------------------------------------------------------------------------
    def request_stop(self, why: str) -> None:
        if self.stopping:
            return
        log.info("stopping (%s): the workers drain for up to %.1fs", why, self.cfg.grace)
        notify("STOPPING=1")
        gevent.spawn(self.stop)

    def stop(self, grace: float | None = None) -> None:
        grace = self.cfg.grace if grace is None else grace
        self.stopping = True
        self.app.stop(0)  # the control API stops accepting
        self._stop_workers(grace)
        self._close_sockets()
        self._stopped.set()

    def _stop_workers(self, grace: float) -> None:
        for pid in self.old_workers:  # (from before a re-execution, still draining)
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        procs = [w.proc for w in self.workers.values() if w.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # each stops accepting and drains
        deadline = time.monotonic() + grace + 5.0
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except gsubprocess.TimeoutExpired:
                log.warning("worker pid %d still running %.1fs after the grace period: killed", proc.pid, 5.0)
                proc.kill()
                proc.wait()
        while self.old_workers and time.monotonic() < deadline:
            gevent.sleep(0.1)
        for pid in self.old_workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _close_sockets(self) -> None:
        for sock in [*self.tcp.values(), *self.udp.values()]:
            sock.close()
        self.tcp.clear()
        self.udp.clear()

    # -- upgrade ------------------------------------------------------------------------------
    def act(self, action: str, **args: Any) -> dict[str, Any]:
        """ProcessControl.act: done by worker 0, which holds the center link's listeners; the
        live connections are listed by every worker and cut by the one holding it (its id
        begins with its number)."""
        if action == "connections":
            workers = sorted(self.workers.values(), key=lambda w: w.id)
            jobs = [gevent.spawn(w.ask, "act", ASK_TIMEOUT, action=action, args=args) for w in workers]
            gevent.joinall(jobs)
            answers = [job.value for job in jobs if job.successful() and job.value.get("ok")]
            rows = [row for answer in answers for row in answer["connections"]]
            return {"ok": True, "total": sum(answer["total"] for answer in answers),
                    "connections": live.top(rows, int(args.get("limit", 100))),
                    **({"missing_workers": len(jobs) - len(answers)} if len(answers) < len(jobs) else {})}
        number = 0
        if action == "cut":
            head, dash, _ = str(args.get("id", "")).partition("-")
            if not dash or not re.fullmatch(r"[0-9]{1,6}", head) or int(head) not in self.workers:
                return {"ok": False, "status": 404, "error": f"no live connection {args.get('id')!r} (GET "
                                                            f"/api/connections lists their ids)"}
            number = int(head)
        worker = self.workers.get(number)
        if worker is None:
            return {"ok": False, "status": 503, "error": f"worker {number} is not running"}
        try:
            answer = worker.ask("act", ASK_TIMEOUT, action=action, args=args)
        except (OSError, EOFError, gevent.Timeout) as e:
            return {"ok": False, "status": 503, "error": f"worker {number} did not answer: {e or type(e).__name__}"}
        return {k: v for k, v in answer.items() if k not in ("op", "id")}

    def upgrade(self, trigger: str) -> dict[str, Any]:
        """New workers, running the code installed now, take over the listening sockets while
        the old ones drain (for ``grace``): an upgrade of wmproxy without a refused connection.
        A new worker starts beside each old one and the old one retires once it is ready;
        with a center link, worker 0 (the link's: its mapping ports and registry cannot be in
        two processes) retires first and its successor starts once it is gone, as when it dies:
        its links' clients reconnect. The master's own code changes only on a restart.
        Never raises: ``{"ok": True, "workers": [pids]}`` or ``{"ok": False, "error"}``."""
        with self._lock:
            log.info("upgrade (%s): new workers take over from %s", trigger,
                     " ".join(str(w.pid) for w in self.workers.values()))
            center = self.cfg.center is not None
            for wid in sorted(self.workers):
                old = self.workers[wid]
                new = Worker(wid, restarts=old.restarts)
                first = wid == 0 and center  # the old one goes before the new one starts
                if first:
                    self._retire(old)
                    try:
                        old.proc.wait(timeout=self.cfg.grace + 5)
                    except gsubprocess.TimeoutExpired:
                        old.proc.kill()
                self.workers[wid] = new
                try:
                    self._start_worker(new)
                except OSError as e:
                    return {"ok": False, "error": f"worker {wid}: cannot start: {e}"}
                new.ready.wait(START_TIMEOUT)
                if new.failed or not new.ready.is_set():
                    error = new.failed or f"not ready within {START_TIMEOUT:g}s"
                    log.error("upgrade (%s): the new worker %d did not start: %s; the old one keeps serving",
                              trigger, wid, error)
                    self._retire(new)
                    self.workers[wid] = old
                    if first:  # (gone already: started again as after a death)
                        old.retired = False
                        gevent.spawn(self._supervise, old, old.proc)
                    return {"ok": False, "error": f"worker {wid}: {error}"}
                if not first:
                    self._retire(old)
            pids = [self.workers[wid].pid for wid in sorted(self.workers)]
            log.info("upgrade (%s) done: workers %s serve, the old ones drain", trigger, " ".join(map(str, pids)))
            return {"ok": True, "workers": pids}

    def _retire(self, worker: Worker) -> None:
        worker.retired = True
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)

    def reopen_logs(self) -> None:
        """SIGUSR1: this process's log files, then each worker's."""
        logs.reopen()
        for worker in self.workers.values():
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGUSR1)

    def serve_forever(self, on_ready: Optional[Callable[[], None]] = None) -> None:
        """Block until stopped: SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 reopens every
        process's logs, SIGUSR2 re-executes the master and so upgrades every process."""
        serve_until(self._stopped, {signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
                                    signal.SIGINT: lambda: self.request_stop("SIGINT"),
                                    signal.SIGHUP: lambda: gevent.spawn(self.reload, "SIGHUP"),
                                    signal.SIGUSR1: self.reopen_logs,
                                    signal.SIGUSR2: lambda: gevent.spawn(self.reexec, "SIGUSR2")}, on_ready)


def merge_status(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One status from several processes' (the master's first): listeners' figures summed by
    (kind, bind), histograms added, upstream servers merged, links and mappings listed, the
    process figures of the whole tree."""
    out = dict(parts[0])
    listeners: dict[tuple[str, str], dict[str, Any]] = {}
    for st in [*parts[1:], parts[0]]:  # (the master's own, the control API, last: as one process lists it)
        for row in st["listeners"]:
            key = (row["kind"], row["bind"])
            seen = listeners.get(key)
            if seen is None:
                listeners[key] = {**row, "requests": dict(row["requests"])}
                continue
            for name in ("connections", "connections_total", "bytes_in", "bytes_out"):
                seen[name] += row[name]
            for code, n in row["requests"].items():
                seen["requests"][code] = seen["requests"].get(code, 0) + n
            if "request_seconds" in row:
                seen["request_seconds"] = add_histograms(seen["request_seconds"], row["request_seconds"])
            if row["state"] == "serving":
                seen["state"] = "serving"
    out["listeners"] = list(listeners.values())
    for name in ("connections", "bytes_in", "bytes_out"):
        out[name] = sum(r[name] for r in out["listeners"])
    out["center_links"] = [link for st in parts for link in st["center_links"]]
    out["recent_errors"] = sorted((e for st in parts for e in st.get("recent_errors", [])),
                                  key=lambda e: float(e["time"]))[-50:]
    out["mappings"] = [m for st in parts for m in st["mappings"]]
    out["certificates"] = [c for st in parts for c in st.get("certificates", [])]  # (worker 0's: it runs ACME)
    out["upstreams"] = merge_servers([u for st in parts for u in st["upstreams"]])
    out["process"] = {name: sum(st["process"][name] for st in parts)
                      for name in ("rss_bytes", "cpu_percent", "cpu_seconds", "open_fds", "threads")}
    out["process"]["cpu_seconds"] = round(out["process"]["cpu_seconds"], 3)
    return out


# -- a worker ------------------------------------------------------------------------------------

def _die_with_parent(master: int) -> None:
    """SIGTERM (a graceful stop) when the master dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != master:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> int:
    """A worker: take the configuration and the sockets from the master, serve them with the
    one-process App, answer the master's requests, stop on SIGTERM or when the master goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the master, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the master reloads (a stray SIGHUP must not kill us)
    fd = int(os.environ.pop(WORKER_FD))
    _die_with_parent(int(os.environ.pop(MASTER_PID, "0")))
    channel = Channel(gsocket.socket(fileno=fd))
    message, fds = channel.receive()
    wid: int = message["worker"]
    cfg: Config = message["config"]
    logs.set_worker(wid)
    live.set_worker(wid)
    try:
        logs.setup_logging(logs.LogSettings.of(cfg))
    except OSError as e:
        channel.send({"op": "failed", "error": f"cannot open log file {e.filename}: {e.strerror}"})
        return 1
    sockets: dict[Key, socket.socket] = {}

    def take(keys: list[Key], fds: list[int]) -> None:
        for key, fd in zip(keys, fds):
            old = sockets.pop(key, None)
            if old is not None:
                old.close()
            sockets[key] = socket.socket(fileno=fd)

    def bind(spec: ListenerSpec) -> socket.socket:
        sock = sockets.pop(spec.key, None)
        if sock is None:
            raise BindError(f"{spec.label}: the master passed no socket for {spec.bind}")
        return sock

    def unused() -> None:  # what this worker does not serve: the master keeps its own copy
        for key in list(sockets):
            sockets.pop(key).close()

    take(message["keys"], fds)
    register_tree(message["tree"])
    app = App(cfg, message["config_file"], message["overrides"], message["prog"],
              Role(serves=lambda spec, cfg: worker_serves(wid, spec, cfg), bind=bind, center_client=wid == 0,
                   watch_file=False, worker=wid,
                   # one accept per wake-up: the workers share each socket, and one that took a whole
                   # burst would serve alone the keep-alive clients that came at once (bench/accept.py)
                   max_accept=1))
    try:
        app.start()
    except (BindError, ConfigError, OSError) as e:
        channel.send({"op": "failed", "error": str(e)})
        return 1
    unused()
    channel.send({"op": "ready", "pid": os.getpid()})

    def answer(request: dict[str, Any], fds: list[int]) -> None:
        op, reply = request["op"], {"op": "answer", "id": request.get("id", 0)}
        try:
            if op == "status":
                reply.update(ok=True, status=app.status())
            elif op == "act":
                reply.update(app.act(request["action"], **request["args"]))
            elif op == "reload":
                take(request["keys"], fds)
                register_tree(request["tree"])
                reply.update(app.apply(request["config"], request["trigger"]))
                unused()
            else:
                reply.update(ok=False, error=f"unknown request {op!r}")
        except Exception as e:  # answered, logged: the master must not wait for nothing
            log.exception("worker %d: the master's %s request failed", wid, op)
            reply.update(ok=False, error=f"{type(e).__name__}: {e}")
        try:
            channel.send(reply)
        except OSError:
            pass

    def listen() -> None:
        while True:
            try:
                request, fds = channel.receive()
            except (EOFError, OSError):
                app.request_stop("the master closed our channel (it stopped, died or was upgraded)")
                return
            gevent.spawn(answer, request, fds)

    gevent.spawn(listen)
    app.serve_forever(on_sigusr1=logs.reopen, reload_on_hup=False)
    return 0

