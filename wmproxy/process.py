"""Running as a service: pid file, daemon mode, logging, then the App until it stops.

``--daemon`` forks twice and detaches (new session, cwd /, stdio to the log file); the
starting process waits until the daemon has bound its listeners and exits 0, or prints why it
could not start and exits 1, so an init script sees a failed start as a failure.
"""

from __future__ import annotations

import logging
import os
import sys

import psutil

from . import __version__
from .app import App, BindError
from .config import Config
from .logs import setup_logging

log = logging.getLogger("wmproxy")


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
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: str) -> None:
    """Remove the pid file if it still names this process."""
    try:
        with open(path, encoding="ascii") as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass


def _daemonize() -> int:
    """Fork twice; in the daemon return the write end of a pipe to report startup on.
    The original process never returns: it exits with the daemon's startup result."""
    rfd, wfd = os.pipe()
    if os.fork() > 0:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            answer = r.read().decode("utf-8", "replace")
        if answer.startswith("ok"):
            os._exit(0)
        print(answer or "the daemon exited before it was ready", file=sys.stderr)
        os._exit(1)
    os.close(rfd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return wfd


def _report(wfd: int | None, message: str) -> None:
    if wfd is not None:
        os.write(wfd, message.encode("utf-8"))
        os.close(wfd)


def serve(prog: str, cfg: Config, config_file: str | None, overrides: list, daemon: bool = False) -> int:
    """Start ``prog`` with ``cfg`` and serve until stopped. Returns the exit status."""
    pidfile = os.path.abspath(cfg.pidfile) if cfg.pidfile else ""
    log_file = os.path.abspath(cfg.log_file) if cfg.log_file else ""
    try:
        if pidfile:
            check_pidfile(pidfile)
    except PidFileError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if daemon and not log_file:
        print(f"{prog}: --daemon without --log-file: logs go nowhere", file=sys.stderr)
    wfd = _daemonize() if daemon else None
    try:
        reopen = setup_logging(cfg.log_level, log_file, capture_stdio=daemon)
    except OSError as e:
        _report(wfd, f"{prog}: cannot open log file {log_file}: {e.strerror}")
        print(f"{prog}: cannot open log file {log_file}: {e.strerror}", file=sys.stderr)
        return 1
    app = App(cfg, config_file, overrides, prog)
    try:
        app.start()
        if pidfile:
            write_pidfile(pidfile)
    except (BindError, OSError) as e:
        log.error("%s", e)
        _report(wfd, f"{prog}: {e}")
        return 1
    log.info("%s %s started (pid %d%s)", prog, __version__, os.getpid(),
             f", config {config_file}" if config_file else ", embedded default config")
    _report(wfd, "ok")
    try:
        app.serve_forever(on_sigusr1=reopen)
    finally:
        if pidfile:
            remove_pidfile(pidfile)
    return 0
