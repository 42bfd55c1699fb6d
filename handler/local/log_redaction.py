"""Keep credentials out of every log line, uvicorn's access log included.

Redaction follows the server's own query parser (`urllib.parse.parse_qsl`, which Starlette and
the authenticators use): a parameter's name is percent- and plus-decoded before it is compared,
and its value is redacted up to where the parser ends it (the next `&`), whatever characters it
holds. A request target has no whitespace, so a query string ends at the first whitespace.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from uvicorn.config import LOGGING_CONFIG

REDACTED = "[redacted]"
# Query parameters that carry a credential: ours (`token`, the `session` cookie's name, should a
# client put it in a URL) and the OAuth names clients commonly use.
SECRET_PARAMETERS = frozenset({"token", "access_token", "id_token", "session"})
_QUERY = re.compile(r"\?(\S*)")
# A bearer token up to the next blank, whatever it holds (a token is not always base64url).
_BEARER = re.compile(r"(?i)\b(bearer[\s,]+)[^\s,]+")


def _is_secret(name: str) -> bool:
    return unquote_plus(name).strip().lower() in SECRET_PARAMETERS


def _redact_parameter(parameter: str) -> str:
    """One `&`-separated parameter. Over-redacts rather than leaks: a secret name after a `;`
    (a separator some parsers accept) hides the rest of the parameter as well."""
    offset = 0
    for segment in parameter.split(";"):
        name, equals, _ = segment.partition("=")
        if equals and _is_secret(name):
            return parameter[: offset + len(name) + 1] + REDACTED
        offset += len(segment) + 1
    return parameter


def _redact_query(match: re.Match[str]) -> str:
    return "?" + "&".join(_redact_parameter(p) for p in match.group(1).split("&"))


def redact(text: str) -> str:
    """Replace query-string credentials and bearer tokens with `[redacted]`."""
    if "?" in text:
        text = _QUERY.sub(_redact_query, text)
    return _BEARER.sub(r"\1" + REDACTED, text)


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


def log_config(level: str = "info", form: str = "text") -> dict[str, Any]:
    """uvicorn's logging config with the redaction filter on every handler, and the root
    logger (where wschat's own loggers propagate) sent to the same handler. `form` is
    WSCHAT_LOG_FORMAT: `text` (uvicorn's lines, escaped: handler/local/log_text.py) or `json`
    (infra/observability/log_json.py)."""
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactCredentials}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    if form == "json":
        config["formatters"] = {
            name: {"()": "infra.observability.log_json.JsonFormatter"}
            for name in config["formatters"]
        }
    else:
        config["formatters"]["default"]["()"] = "handler.local.log_text.TextFormatter"
        config["formatters"]["access"]["()"] = "handler.local.log_text.AccessTextFormatter"
    config["root"] = {"handlers": ["default"], "level": level.upper()}
    # At debug, botocore and urllib3 log whole requests: signed headers and, in the emulator,
    # the Invoke API's secret path. Never below INFO.
    for noisy in ("botocore", "boto3", "urllib3"):
        config["loggers"][noisy] = {"level": "INFO"}
    return config
