"""`WSCHAT_LOG_FORMAT=json`: one JSON object per log line, uvicorn's lines included.

Each object has `time` (UTC, ISO 8601, milliseconds), `level`, `logger` and `message`, plus what
is known of the work the line belongs to: `connection_id`, `room` and `user_id` on a socket,
`request_id` in a Lambda invocation (`log_context`). Credentials are redacted before any
formatter sees the line (handler/local/log_redaction.py); a field never carries one: a user
id is the verified subject, never the token.

A line is one line for any reader: besides what JSON escapes itself (the C0 controls), the C1
controls and U+2028/U+2029, which `str.splitlines()`, JavaScript and several log shippers take
for line breaks, are written as `\\u` escapes wherever a client's text put them (a room name, a
reason). The object decodes to the same text.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# The bidirectional controls: raw, a client's text would reorder what a reader sees of the
# rest of the line (a refusal reason that appears to say something else).
BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
# JSON strings may hold these raw, and json.dumps(ensure_ascii=False) leaves them so.
_LINE_SAFE = {
    code: f"\\u{code:04x}" for code in (*range(0x7F, 0xA0), 0x2028, 0x2029, *BIDI_CONTROLS)
}

# Fields as (name, value) pairs: a context's default must not be shared and mutable.
_CONTEXT: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("wschat_log_context", default=())


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add `fields` to every line logged inside the block, in this task and those it starts
    (contextvars follow tasks, threads run with `run_in_threadpool`, and greenlets here)."""
    token = _CONTEXT.set((*_CONTEXT.get(), *fields.items()))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **dict(_CONTEXT.get()),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # These characters occur only inside strings here, so escaping them keeps the JSON.
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_LINE_SAFE)
