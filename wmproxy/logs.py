"""Logging setup: stderr, or a file that SIGUSR1 reopens (for logrotate).

Lines look like ``2026-11-22 04:16:00,123 INFO wmproxy.proxy: ...``; the HTTP access log
(logger ``wmproxy.access``) carries combined-format lines in the same stream.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str, log_file: str = "", capture_stdio: bool = False) -> Callable[[], None]:
    """Configure the root logger. Returns the function that reopens the log file (a no-op
    for stderr). With ``capture_stdio`` (daemon mode) file descriptors 1 and 2 point at the
    log file too, so a stray traceback is not lost. Raises OSError if the file cannot be opened.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(level.upper())
    if not log_file:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
        return lambda: None
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)

    def point_stdio() -> None:
        if capture_stdio:
            fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)

    def reopen() -> None:
        try:
            stream = file_handler._open()
        except OSError as e:  # keep writing to the old file rather than to nothing
            logging.getLogger("wmproxy").error("cannot reopen log file %s (SIGUSR1): %s", log_file, e.strerror)
            return
        file_handler.acquire()
        try:
            old, file_handler.stream = file_handler.stream, stream
            old.close()
        finally:
            file_handler.release()
        point_stdio()
        logging.getLogger("wmproxy").info("log file reopened (SIGUSR1)")

    point_stdio()
    return reopen


access_log = logging.getLogger("wmproxy.access")


def _text(value: bytes | None) -> str:
    """A header value for the access log: '-' when absent, quotes and controls escaped."""
    if not value:
        return "-"
    return value[:300].decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')


def log_access(ip: str, user: str, head, target: str, status: int, size: int, started: float, note: str = "") -> None:
    """One combined-like access line: ``ip - user [time] "METHOD target HTTP/v" status bytes
    "referer" "user-agent" 1.2ms (note)``. ``head`` is the request's http1.Head."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    ms = (time.monotonic() - started) * 1000
    access_log.info('%s - %s [%s] "%s %s HTTP/%s" %d %d "%s" "%s" %.1fms%s', ip, user or "-", when, head.method,
                    target[:2000], head.version, status, size, _text(head.get(b"referer")),
                    _text(head.get(b"user-agent")), ms, f" ({note})" if note else "")
