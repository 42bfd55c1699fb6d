from __future__ import annotations

import logging

import pytest

from infra.log_redaction import RedactCredentials, redact


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/items/a/ws?token=abc&q=1", "/items/a/ws?token=[redacted]&q=1"),
        ("/items/a/ws?q=1&token=abc", "/items/a/ws?q=1&token=[redacted]"),
        ("/x?access_token=abc", "/x?access_token=[redacted]"),
        ("/x?TOKEN=abc", "/x?TOKEN=[redacted]"),
        ("Authorization: Bearer eyJ.a.b", "Authorization: Bearer [redacted]"),
        ("subprotocols bearer, eyJhbGci.x.y", "subprotocols bearer, [redacted]"),
        ("/items/a/ws?q=1", "/items/a/ws?q=1"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_redact(line: str, expected: str) -> None:
    assert redact(line) == expected


def test_filter_rewrites_args_and_keeps_the_record() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s"', ("1.2.3.4", "/w?token=s3"), None
    )
    assert RedactCredentials().filter(record) is True
    assert record.getMessage() == '1.2.3.4 - "/w?token=[redacted]"'
