from __future__ import annotations

import logging
from urllib.parse import parse_qsl

import pytest

from handler.local.log_redaction import RedactCredentials, redact


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/items/a/ws?token=abc&q=1", "/items/a/ws?token=[redacted]&q=1"),
        ("/items/a/ws?q=1&token=abc", "/items/a/ws?q=1&token=[redacted]"),
        ("/x?access_token=abc", "/x?access_token=[redacted]"),
        ("/x?id_token=abc", "/x?id_token=[redacted]"),
        ("/x?session=abc", "/x?session=[redacted]"),
        ("/x?TOKEN=abc", "/x?TOKEN=[redacted]"),
        ("Authorization: Bearer eyJ.a.b", "Authorization: Bearer [redacted]"),
        ("subprotocols bearer, eyJhbGci.x.y", "subprotocols bearer, [redacted]"),
        ("authorization: Bearer abc!SECRET2 x", "authorization: Bearer [redacted] x"),
        ("bearer, a%b@c:d, wschat.json", "bearer, [redacted], wschat.json"),
        ("/items/a/ws?q=1", "/items/a/ws?q=1"),
        ("/items/a/ws?q=1&token", "/items/a/ws?q=1&token"),
        ("no secrets here", "no secrets here"),
        ("what? nothing", "what? nothing"),
    ],
)
def test_redact(line: str, expected: str) -> None:
    assert redact(line) == expected


# Each target carries SECRET where the server's query parser finds the `token` parameter.
HOSTILE_TARGETS = [
    "/w?%74oken=SECRET",  # a percent-encoded name
    "/w?%74%6F%6B%65%6E=SECRET",
    "/w?%54OKEN=SECRET&q=1",
    "/w?q=1&tok%65n=SECRET",
    '/w?token=x"SECRET',  # a quote inside the value
    "/w?token=x'SECRET&q=1",
    "/w?token=x<SECRET>",
    "/w?token=x;SECRET",  # `;` does not end a value for parse_qsl
    "/w?token=x%26SECRET",
    "/w?token=x#SECRET",
    "/w?token=x?SECRET",
    "/w?token=x=SECRET",
    "/w?q=1&token=SECRET&token=SECRET2",
    "/w?a=1;token=SECRET",  # not a parameter for parse_qsl, redacted all the same
]


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_redacts_what_the_query_parser_reads(target: str) -> None:
    line = f'127.0.0.1:5 - "WebSocket {target}" [accepted]'
    redacted = redact(line)
    assert "SECRET" not in redacted
    assert redacted.endswith('" [accepted]') or redacted.endswith("[accepted]")
    # And what is left is still the same request: the parameters that carry no credential.
    query = target.partition("?")[2]
    kept = {k: v for k, v in parse_qsl(query) if "SECRET" not in v}
    assert kept.items() <= dict(parse_qsl(redact(target).partition("?")[2])).items()


def test_filter_rewrites_args_and_keeps_the_record() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s"', ("1.2.3.4", "/w?token=s3"), None
    )
    assert RedactCredentials().filter(record) is True
    assert record.getMessage() == '1.2.3.4 - "/w?token=[redacted]"'


def test_filter_redacts_an_encoded_name_in_args() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("1.2.3.4:5", "/items/r/ws?%74oken=SECRET"),
        None,
    )
    RedactCredentials().filter(record)
    assert "SECRET" not in record.getMessage()
