"""negotiate(): the handshake's rules, once, for both transports."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from handler.chat.handshake import Accepted, Refused, negotiate
from handler.chat.ports import Dialect

MAX = 16


def ask(path: str | None = "r", subprotocols: tuple[str, ...] = (), **query: str) -> object:
    """`path`: the room from the URL's path (locally), None on API Gateway."""
    return negotiate(path, query, subprotocols, MAX)


def test_defaults_are_the_seeds() -> None:
    assert ask() == Accepted("r", Dialect.TEXT)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        (ask(format="json"), Accepted("r", Dialect.JSON)),
        (
            ask(subprotocols=("wschat.json",)),
            Accepted("r", Dialect.JSON, subprotocol="wschat.json"),
        ),
        (ask(subprotocols=("bearer", "tok")), Accepted("r", Dialect.TEXT, subprotocol="bearer")),
        (
            ask(format="text", subprotocols=("wschat.json",)),
            Accepted("r", Dialect.TEXT, subprotocol="wschat.json"),
        ),
        (ask(since="41", format="json"), Accepted("r", Dialect.JSON, since=41)),
        (ask(since=str(2**53 - 1)), Accepted("r", Dialect.TEXT, since=2**53 - 1)),
        (ask(None, room="lobby"), Accepted("lobby", Dialect.TEXT)),
        (ask(None, item_id="lobby"), Accepted("lobby", Dialect.TEXT)),
    ],
)
def test_what_a_client_may_ask_for(asked: object, expected: Accepted) -> None:
    assert asked == expected


@pytest.mark.parametrize(
    ("asked", "status"),
    [
        (ask(None), 400),
        (ask(""), 403),
        (ask("r" * (MAX + 1)), 403),
        (ask("a\x00b"), 403),
        (ask("a\u202eb"), 403),
        (ask("a\ud800"), 403),
        (ask(q="x"), 403),
        (ask(q="1e3"), 403),
        (ask(q="\u0663"), 403),  # an Arabic-Indic 3: Python's int() takes it, FastAPI does not
        (ask(since="-1"), 403),
        (ask(since="one"), 403),
        (ask(since=str(2**53)), 403),  # past the largest id (handler/chat/wire.py)
        (ask(since=str(2**64 - 1)), 403),
        (ask(since="9" * 5000), 403),  # past what Python's int() reads
        (ask(format="xml"), 403),
    ],
)
def test_what_is_refused_and_how(asked: object, status: int) -> None:
    assert isinstance(asked, Refused) and asked.status == status and asked.reason


@pytest.mark.parametrize(
    "q",
    [
        "3",
        " 3 ",
        "+3",
        "-3",
        "03",
        "3_000",
        "3.0",
        "3.00",
        "3.5",
        "1e3",
        "0x10",
        "",
        " ",
        "٣",
        "1_",
        "_1",
        "3 3",
        "9" * 30,
    ],
)
def test_q_is_read_as_fastapi_reads_the_seeds_q(q: str) -> None:
    try:
        expected: int | None = TypeAdapter(int).validate_python(q)
    except ValidationError:
        expected = None
    asked = ask(q=q)
    assert (asked.q if isinstance(asked, Accepted) else None) == expected
