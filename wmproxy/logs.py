"""Logging: where lines go (stderr, the journal, a file SIGUSR1 reopens) and how they look.

- ``log_format = "text"``: ``2026-11-22 04:16:00,123 INFO wmproxy.proxy: ...``. Under systemd
  (stderr is the journal's stream, ``$JOURNAL_STREAM``) the journal stamps each line itself:
  ours carry no time, and a ``<N>`` syslog priority the journal reads as the line's level.
- ``log_format = "json"``: one JSON object per line (time, level, logger, message; an access
  line's fields as keys of their own).
- The access log (logger ``wmproxy.access``): ``access_log_format = "wmproxy"`` (combined plus the
  time taken and a note) or ``"combined"``, exactly the NCSA combined format that goaccess and
  awstats read. ``access_log_file`` gives it a file of its own, its lines bare (no prefix).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

TEXT = "%(asctime)s %(levelname)s %(worker)s%(name)s: %(message)s"
JOURNAL = "%(levelname)s %(worker)s%(name)s: %(message)s"
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

access_log = logging.getLogger("wmproxy.access")

_make_record = logging.getLogRecordFactory()
class _Worker:  # set in a worker process: its lines say which one
    prefix = ""
    id: Optional[int] = None


def _record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _make_record(*args, **kwargs)
    record.worker = _Worker.prefix  # (every record has it: the formats name it)
    return record


logging.setLogRecordFactory(_record)


def set_worker(worker_id: int) -> None:
    """This process is worker ``worker_id`` of a master: every log line says so (``worker 2
    wmproxy.proxy: ...`` in text, ``"worker": 2`` in JSON)."""
    _Worker.prefix, _Worker.id = f"worker {worker_id} ", worker_id


@dataclass(frozen=True)
class LogSettings:
    """What a configuration says about logging (the keys of the same names)."""

    level: str = "info"
    file: str = ""
    format: str = "text"
    access_file: str = ""
    access_format: str = "wmproxy"

    @classmethod
    def of(cls, cfg: Any) -> "LogSettings":
        """The settings of a config.Config; file names made absolute (a daemon runs in /)."""
        return cls(cfg.log_level, os.path.abspath(cfg.log_file) if cfg.log_file else "", cfg.log_format,
                   os.path.abspath(cfg.access_log_file) if cfg.access_log_file else "", cfg.access_log_format)


def stderr_is_journal() -> bool:
    """Whether stderr is the stream systemd's journal reads (``JOURNAL_STREAM=dev:inode``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


# what a line may not hold as it is: C0 and C1 controls (a newline would start a forged line, an
# escape sequence would drive the terminal that shows the log) and the Unicode line separators
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


class TextFormatter(logging.Formatter):
    """A line of text, whatever its message holds: controls written as \\xNN (what a client
    sent may reach a message; a traceback, added after, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return line if line.isprintable() else line.translate(_ESCAPES)


class JournalFormatter(TextFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


class JsonFormatter(logging.Formatter):
    """One object per line; an access line carries its fields (client_ip, status, bytes...)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
               + f".{int(record.msecs):03d}" + time.strftime("%z", time.localtime(record.created)),
               "level": record.levelname.lower(), "logger": record.name}
        if _Worker.id is not None:
            out["worker"] = _Worker.id
        fields = getattr(record, "access", None)
        if fields is not None:
            out.update(fields.as_dict())
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _Reopenable(logging.FileHandler):
    def reopen(self) -> None:
        """Open the file again (logrotate moved it); on failure keep writing to the old one."""
        stream = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, stream
            if old is not None:
                old.close()
        finally:
            self.release()


class _State:
    files: list[_Reopenable] = []
    settings = LogSettings()
    capture_stdio = False
    access_style = "wmproxy"  # or "combined", or "json"


def _formatter(fmt: str, bare: bool = False) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if bare:
        return TextFormatter("%(message)s")
    return TextFormatter(TEXT)


def setup_logging(settings: LogSettings, capture_stdio: bool | None = None) -> None:
    """Configure the root logger and the access logger; again on a reload whose settings
    changed. Every file is opened before anything is replaced: raises OSError (and changes
    nothing) if one cannot be. With ``capture_stdio`` (daemon mode) file descriptors 1 and 2
    point at the log file too, so that a stray traceback is not lost (None: as before)."""
    main: Optional[logging.Handler] = _Reopenable(settings.file, encoding="utf-8") if settings.file else None
    try:
        access = _Reopenable(settings.access_file, encoding="utf-8") if settings.access_file else None
    except OSError:
        if main is not None:
            main.close()
        raise
    if main is not None:
        main.setFormatter(_formatter(settings.format))
    else:
        main = logging.StreamHandler(sys.stderr)
        journal = settings.format == "text" and stderr_is_journal()
        main.setFormatter(JournalFormatter(JOURNAL) if journal else _formatter(settings.format))
    root = logging.getLogger()
    old = [*root.handlers, *access_log.handlers]
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in list(access_log.handlers):
        access_log.removeHandler(h)
    root.addHandler(main)
    root.addHandler(_RECENT)
    root.setLevel(settings.level.upper())
    access_log.propagate = access is None
    if access is not None:
        access.setFormatter(_formatter(settings.format, bare=True))
        access_log.addHandler(access)
    for h in old:
        h.close()
    _State.files = [h for h in (main, access) if isinstance(h, _Reopenable)]
    _State.settings = settings
    if capture_stdio is not None:
        _State.capture_stdio = capture_stdio
    _State.access_style = "json" if settings.format == "json" else settings.access_format
    _point_stdio()


class _Recent(logging.Handler):
    """The last RECENT warnings and errors, for the control API's status (the dashboard)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: collections.deque[dict[str, object]] = collections.deque(maxlen=RECENT)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append({"time": record.created, "level": record.levelname.lower(),
                               "message": record.getMessage()[:500]})
        except Exception:  # (a log line must never break what logged it)
            pass


RECENT = 50
_RECENT = _Recent()


def recent() -> list[dict[str, object]]:
    """The last warnings and errors logged (time, level, message), oldest first."""
    return list(_RECENT.lines)


def current() -> LogSettings:
    return _State.settings


def _point_stdio() -> None:
    if _State.capture_stdio and _State.settings.file:
        fd = os.open(_State.settings.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


def reopen() -> None:
    """SIGUSR1: open the log files again (logrotate moved them)."""
    for h in _State.files:
        try:
            h.reopen()
        except OSError as e:  # keep writing to the old file rather than to nothing
            logging.getLogger("wmproxy").error("cannot reopen log file %s (SIGUSR1): %s", h.baseFilename, e.strerror)
            return
    _point_stdio()
    logging.getLogger("wmproxy").info("log file reopened (SIGUSR1)")


# -- the access log ---------------------------------------------------------------------------


def _text(value: bytes | None, limit: int = 300) -> str:
    """A value for the access log: '-' when absent, quotes and controls escaped."""
    if not value:
        return "-"
    return value[:limit].decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')


class AccessFields:
    """One access line's values, for the JSON format."""

    __slots__ = ("ip", "user", "created", "method", "target", "version", "status", "size", "referer", "agent",
                 "ms", "note")

    def __init__(self, ip: str, user: str, created: float, method: str, target: str, version: str, status: int,
                 size: int, referer: bytes | None, agent: bytes | None, ms: float, note: str) -> None:
        self.ip, self.user, self.created, self.method, self.target, self.version = \
            ip, user, created, method, target, version
        self.status, self.size, self.referer, self.agent, self.ms, self.note = status, size, referer, agent, ms, note

    def as_dict(self) -> dict[str, Any]:
        return {"client_ip": self.ip, "user": self.user or None, "method": self.method, "target": self.target,
                "protocol": f"HTTP/{self.version}", "status": self.status, "bytes": self.size,
                "referer": self.referer[:300].decode("latin-1") if self.referer else None,
                "user_agent": self.agent[:300].decode("latin-1") if self.agent else None,
                "duration_ms": round(self.ms, 3), "note": self.note or None}


class _Clock:
    """The access log's time, formatted once a second rather than per request."""

    second = -1
    text = ""

    @classmethod
    def now(cls) -> str:
        t = time.time()
        if int(t) != cls.second:
            cls.second = int(t)
            cls.text = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(t))
        return cls.text


def _combined(ip: str, user: str, method: str, target: str, version: str, status: int, size: int,
              referer: bytes | None, agent: bytes | None) -> str:
    if not (target.isprintable() and '"' not in target and "\\" not in target and len(target) <= 2000):
        target = _text(target.encode("latin-1", "replace"), 2000)
    return (f'{ip} - {user or "-"} [{_Clock.now()}] "{method} {target} '
            f'HTTP/{version}" {status} {size} "{_text(referer)}" "{_text(agent)}"')


def log_access(ip: str, user: str, head: Any, target: str, status: int, size: int, took: float,
               note: str = "") -> None:
    """One access line for a request (``head``: its http1.Head; ``size``: the body bytes sent,
    as nginx's $body_bytes_sent; ``took``: seconds, as the listener's histogram counted them)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    ms = took * 1000
    style = _State.access_style
    if style == "json":
        fields = AccessFields(ip, user, time.time(), head.method, target[:2000], head.version, status, size,
                              head.get(b"referer"), head.get(b"user-agent"), ms, note)
        access_log.info("", extra={"access": fields})
        return
    line = _combined(ip, user, head.method, target, head.version, status, size, head.get(b"referer"),
                     head.get(b"user-agent"))
    if style == "wmproxy":
        line = f"{line} {ms:.1f}ms" + (f" ({note})" if note else "")
    access_log.info("%s", line)
