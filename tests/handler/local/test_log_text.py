"""`WSCHAT_LOG_FORMAT=text`: whatever a client put in a message, its arguments or an
exception's text, each record is one line, and a terminal shows it as text."""

from __future__ import annotations

import logging
import sys

import pytest

from handler.local.log_text import AccessTextFormatter, TextFormatter

HOSTILE = "a\nINFO:     forged\r\x1b[2J\x85\u2028\u2029\x00\tz\u202ecba\u2066"
ESCAPED = "a\\nINFO:     forged\\r\\x1b[2J\\x85\\u2028\\u2029\\x00\\tz\\u202ecba\\u2066"


def record(msg: str, args: tuple[object, ...], name: str = "wschat") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)


@pytest.mark.parametrize("use_colors", [False, True])
def test_a_message_and_its_arguments_stay_on_one_line(use_colors: bool) -> None:
    formatter = TextFormatter("%(levelprefix)s %(message)s", use_colors=use_colors)
    line = formatter.format(record("refused (%d): %s; room %r", (401, HOSTILE, "r\u2028")))
    assert line.splitlines() == [line]
    assert line.endswith(f"refused (401): {ESCAPED}; room 'r\\u2028'")
    assert "\x1b[2J" not in line  # the formatter's own colours, if any, but not the client's


def test_uvicorns_coloured_variant_is_escaped_too() -> None:
    formatter = TextFormatter("%(levelprefix)s %(message)s", use_colors=True)
    coloured = record("serving %s", (HOSTILE,))
    coloured.color_message = "serving \x1b[1m%s\x1b[0m"
    line = formatter.format(coloured)
    assert line.splitlines() == [line] and f"\x1b[1m{ESCAPED}\x1b[0m" in line


def test_the_access_line_is_escaped() -> None:
    formatter = AccessTextFormatter(
        '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False
    )
    access = record(
        '%s - "%s %s HTTP/%s" %d',
        (f"{HOSTILE}:1", "GET", "/x", "1.1", 200),
        "uvicorn.access",
    )
    line = formatter.format(access)
    assert line.splitlines() == [line] and line.startswith(f"INFO:     {ESCAPED}:1 - ")


def test_a_traceback_keeps_its_lines_and_escapes_the_exceptions_text() -> None:
    formatter = TextFormatter("%(levelprefix)s %(message)s", use_colors=False)
    try:
        try:
            raise RuntimeError("inner\nINFO:     forged")
        except RuntimeError as inner:
            error = ValueError(HOSTILE)
            error.add_note("note\u2028forged")
            raise error from inner
    except ValueError:
        failed = record("it failed", ())
        failed.exc_info = sys.exc_info()
    text = formatter.format(failed)
    lines = text.splitlines()
    assert lines[0] == "INFO:     it failed" and lines[1] == "Traceback (most recent call last):"
    assert [line for line in lines if line.startswith(("INFO:", "forged"))] == [lines[0]]
    assert f"ValueError: {ESCAPED}" in lines
    assert "note\\u2028forged" in lines
    assert "RuntimeError: inner\\nINFO:     forged" in lines
