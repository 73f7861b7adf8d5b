"""Running as a service: pid file, daemon mode, logging, then the App until it stops.

``--daemon`` starts the same command again, detached (new session, cwd /, stdio to the log
file); the starting process waits until the daemon has bound its listeners and exits 0, or
prints why it could not start and exits 1, so an init script sees a failed start as a failure.
"""

from __future__ import annotations

import grp
import logging
import os
import resource
import select
import subprocess
import sys
from typing import Sequence

import psutil

from . import __version__
from .app import App, BindError, check_files
from .config import Config
from .errors import ConfigError
from .logs import LogSettings, reopen, setup_logging
from .net import gevent_io
from .net.certstore import write_private
from .prot import http1, speedups
from .service import PrivilegeError, drop_privileges, notify
from .workers import Master

log = logging.getLogger("wmproxy")
READY_FD = "WMPROXY_READY_FD"


class PidFileError(Exception):
    pass


def check_pidfile(path: str) -> None:
    """Raise PidFileError if ``path`` names a live process other than this one."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return
    except OSError as e:
        raise PidFileError(f"cannot read pid file {path}: {e.strerror}") from None
    if text.isdigit() and int(text) != os.getpid() and psutil.pid_exists(int(text)):
        raise PidFileError(f"pid file {path} names process {text}, which is running: already started?")


def write_pidfile(path: str) -> None:
    """This process's pid in ``path``, written as every file this process writes is
    (net.certstore.write_private: a new file of a random name beside it, renamed over it), so
    never through a link someone put in the directory (which may be writable by others, and
    this runs as root); a link at ``path`` itself is replaced, its target left as it was."""
    write_private(path, f"{os.getpid()}\n".encode("ascii"), 0o644)


def remove_pidfile(path: str) -> None:
    """Remove the pid file if it still names this process."""
    try:
        with open(path, encoding="ascii") as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass


def _daemonize() -> None:
    """Start this same command again without --daemon, detached (new session, stdio on
    /dev/null), and exit with its start-up result, which it writes to an inherited pipe
    (``WMPROXY_READY_FD``). A fresh interpreter rather than fork(): forking a process with a
    gevent hub and its locks is where daemons hang. Never returns."""
    rfd, wfd = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "WMPROXY_DAEMON"}
    env[READY_FD] = str(wfd)
    argv = [sys.executable, os.path.abspath(sys.argv[0]), *(a for a in sys.argv[1:] if a != "--daemon")]
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, pass_fds=(wfd,), start_new_session=True, env=env)
    os.close(wfd)
    # Read up to the end of the one-line answer rather than to EOF (gevent's Popen keeps a
    # copy of the write end here); stop early if the daemon dies without answering.
    answer = b""
    while not answer.endswith(b"\n"):
        readable, _, _ = select.select([rfd], [], [], 0.5)
        if readable:
            chunk = os.read(rfd, 4096)
            answer += chunk
            if not chunk:
                break
        elif child.poll() is not None:
            break
    text = answer.decode("utf-8", "replace").strip()
    if text == "ok":
        os._exit(0)
    print(text or f"the daemon exited with status {child.poll()} before it was ready", file=sys.stderr)
    os._exit(1)


def _ready_fd() -> int | None:
    """In a daemon started by _daemonize: the pipe to report start-up on."""
    value = os.environ.pop(READY_FD, "")
    return int(value) if value.isdigit() else None


def _raise_fd_limit() -> None:
    """Every connection is a descriptor (two for a proxy): take the hard limit, not the soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _report(wfd: int | None, message: str) -> None:
    if wfd is not None:
        os.write(wfd, message.replace("\n", " ").encode("utf-8") + b"\n")
        os.close(wfd)


def _check_readable(cfg: Config, config_file: str | None) -> None:
    """After dropping root: what a reload reads (the config file, the certificates and keys it
    names) must be readable now, not found unreadable at the first reload. Raises ConfigError."""
    if config_file and not os.access(config_file, os.R_OK):
        group = grp.getgrgid(os.getgid()).gr_name
        raise ConfigError(config_file, "user", f"the configuration file is not readable by user {cfg.user}, so "
                          f"no reload could read it: chgrp {group} {config_file} && chmod g+r {config_file}")
    check_files(cfg, config_file)


def serve(prog: str, cfg: Config, config_file: str | None, overrides: list, daemon: bool = False,
          source: str = "", warnings: Sequence[str] = ()) -> int:
    """Start ``prog`` with ``cfg`` (``source``: where it came from, for the log; ``warnings``:
    what its reading found, logged once logging is set up) and serve until stopped. Returns
    the exit status."""
    pidfile = os.path.abspath(cfg.pidfile) if cfg.pidfile else ""
    log_file = os.path.abspath(cfg.log_file) if cfg.log_file else ""
    try:
        if pidfile:
            check_pidfile(pidfile)
    except PidFileError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if daemon:
        if not log_file:
            print(f"{prog}: --daemon without --log-file: logs go nowhere", file=sys.stderr)
        _daemonize()
    wfd = _ready_fd()
    try:
        setup_logging(LogSettings.of(cfg), capture_stdio=wfd is not None)
    except OSError as e:
        _report(wfd, f"{prog}: cannot open log file {e.filename}: {e.strerror}")
        print(f"{prog}: cannot open log file {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    for line in warnings:
        log.warning("%s", line)
    _raise_fd_limit()
    try:
        gevent_io.check()
    except gevent_io.GeventChanged as e:
        log.error("%s", e)
        _report(wfd, f"{prog}: {e}")
        return 1
    def settle() -> None:  # bound: the pid file, then (started as root) the user to serve as
        if pidfile:
            write_pidfile(pidfile)
        if cfg.user:
            log.info("%s", drop_privileges(cfg.user, cfg.group, own=(log_file, LogSettings.of(cfg).access_file)))
            _check_readable(cfg, config_file)

    runner: App | Master
    if cfg.worker_count > 1:  # a master: it binds, the workers (started after settle) serve
        runner = Master(cfg, config_file, overrides, prog)
    else:
        runner = App(cfg, config_file, overrides, prog)
    try:
        if isinstance(runner, Master):
            runner.start(before_workers=settle)
        else:
            runner.start()
            settle()
    except (BindError, ConfigError, OSError, PrivilegeError) as e:
        log.error("%s", e)
        _report(wfd, f"{prog}: {e}")
        runner.stop(0)
        if pidfile:
            remove_pidfile(pidfile)
        return 1

    def ready() -> None:  # the signal handlers are in place: SIGHUP from now on reloads
        log.info("%s %s started (pid %d, %s)", prog, __version__, os.getpid(),
                 f"config {config_file}" if config_file else source or "embedded default config")
        if not http1.SPEEDUPS:
            log.info("the C speedups of the HTTP head readers are not in use (%s): llhttp and the Python "
                     "versions run, about half as many instructions again per proxied request",
                     "WMPROXY_NO_SPEEDUPS is set"
                     if speedups.DISABLED else "not built: install gcc and python3-dev, "
                     "then install wmproxy again")
        if wfd is not None:
            os.chdir("/")  # a daemon keeps no directory busy; every path it uses is absolute
        _report(wfd, "ok")
        notify("READY=1", f"MAINPID={os.getpid()}", "STATUS=serving")

    try:
        if isinstance(runner, Master):
            runner.serve_forever(on_ready=ready)
        else:
            runner.serve_forever(on_sigusr1=reopen, on_ready=ready)
    finally:
        if pidfile:
            remove_pidfile(pidfile)
    return 0
