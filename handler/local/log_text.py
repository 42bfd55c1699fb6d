"""`WSCHAT_LOG_FORMAT=text`: uvicorn's lines, one line per record whatever a client sent.

A client's text reaches log lines in many places (a JWT header in a refusal reason, a room or
user name, a path), and a line break in it would start a line the client wrote. So the
formatters escape, in every message with its arguments and in an exception's own text, each
character that `str.splitlines()` or a terminal acts on: the C0 and C1 controls (ESC
included), U+2028/U+2029 and the bidirectional controls, written as `\\n`, `\\x1b`,
`\\u2028`. Escaping happens here, where a line is written, so no call site can forget it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from copy import copy
from types import TracebackType

from uvicorn.logging import AccessFormatter, DefaultFormatter

from infra.observability.log_json import BIDI_CONTROLS

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {
    code: _SHORT.get(chr(code), f"\\x{code:02x}") for code in (*range(0x20), *range(0x7F, 0xA0))
} | {code: f"\\u{code:04x}" for code in (0x2028, 0x2029, *BIDI_CONTROLS)}

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def escape(text: str) -> str:
    """`text` on one line, with nothing a terminal would act on."""
    return text.translate(_ESCAPES)


def _escaped_args(record: logging.LogRecord) -> None:
    """Escape a record's string arguments in place (for formats that use them directly)."""
    if isinstance(record.args, tuple):
        record.args = tuple(escape(a) if isinstance(a, str) else a for a in record.args)


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # the traceback module writes "<exception str() failed>" instead
        return ""


def _messages(error: BaseException | None, seen: set[int]) -> Iterator[str]:
    """The texts an exception and those chained to it add to a traceback."""
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield _text(error)
        yield from (note for note in getattr(error, "__notes__", ()) if isinstance(note, str))
        for member in getattr(error, "exceptions", ()):  # an exception group's
            if isinstance(member, BaseException):
                yield from _messages(member, seen)
        yield from _messages(error.__cause__, seen)
        error = error.__context__


class TextFormatter(DefaultFormatter):
    """uvicorn's default line (`INFO:     message`) with the message escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record = copy(record)  # other handlers may format the same record
        record.message = escape(record.message)
        if "color_message" in record.__dict__:  # uvicorn's coloured variant, formatted again
            _escaped_args(record)
        return super().formatMessage(record)

    def formatException(self, ei: ExcInfo) -> str:
        """The traceback keeps its lines; an exception's message and notes are escaped."""
        text = super().formatException(ei)
        for message in set(_messages(ei[1], set())):
            if escape(message) != message:
                text = text.replace(message, escape(message))
        return text


class AccessTextFormatter(AccessFormatter):
    """uvicorn's access line, built from its arguments (client, method, path, ...), escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record = copy(record)
        _escaped_args(record)
        return super().formatMessage(record)
