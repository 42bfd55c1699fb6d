"""Keep credentials out of every log line, uvicorn's access log included."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG

_SECRET_QUERY = re.compile(r"(?i)([?&;](?:token|access_token|id_token|session)=)[^&\s\"']*")
_BEARER = re.compile(r"(?i)\b(bearer[\s,]+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """Replace query-string credentials and bearer tokens with `[redacted]`."""
    return _BEARER.sub(r"\1[redacted]", _SECRET_QUERY.sub(r"\1[redacted]", text))


class RedactCredentials(logging.Filter):
    """Rewrites a record's message and string arguments in place; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's logging config with the redaction filter on every handler, and the root
    logger (where wschat's own loggers propagate) sent to the same handler."""
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactCredentials}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    config["root"] = {"handlers": ["default"], "level": level.upper()}
    return config
