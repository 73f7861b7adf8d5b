"""The text log's lines hold no controls, whatever reaches a message."""

from __future__ import annotations

import logging
import sys

from wmproxy.logs import JOURNAL, TEXT, JournalFormatter, TextFormatter


def _record(msg: str, *args: object, exc_info=None) -> logging.LogRecord:
    record = logging.LogRecord("wmproxy.proxy", logging.INFO, __file__, 1, msg, args, exc_info)
    record.worker = ""
    return record


def test_a_message_cannot_forge_a_line_or_drive_a_terminal():
    sent = "x\n2026-12-07 10:00:00,000 INFO wmproxy: forged\r\x1b[31mred\x7f\x85\u2028\u2029\x00"
    for formatter in (TextFormatter(TEXT), TextFormatter("%(message)s"), JournalFormatter(JOURNAL)):
        line = formatter.format(_record("client said %s", sent))
        assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x85" not in line, line
        assert line.isprintable(), line
        assert "x\\x0a2026-12-07" in line and "\\x1b[31mred\\x7f\\x85\\u2028\\u2029\\x00" in line, line
    plain = "GET http://a.test/ caf\u00e9 done up=1 down=2"  # (printable text, accents included, as it came)
    assert TextFormatter("%(message)s").format(_record(plain)) == plain


def test_a_traceback_keeps_its_lines():
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    text = TextFormatter("%(message)s").format(_record("internal error serving %s", "a\nb", exc_info=info))
    first, *rest = text.splitlines()
    assert first == "internal error serving a\\x0ab" and rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"
