"""The Python client's ordering (handler/client/sequence.py) and token lifetimes
(handler/client/tokens.py), without a server."""

from __future__ import annotations

import base64
import json
from typing import Any

from handler.client.sequence import Event, Sequencer
from handler.client.tokens import Lifetime, lifetime_of


def message(number: int) -> Event:
    return {"type": "message", "id": number, "text": f"m{number}"}


def ids(events: list[Event]) -> list[Any]:
    return [e["id"] if e["type"] == "message" else (e["from"], e["to"]) for e in events]


def test_each_id_once_in_order_whatever_order_they_arrive_in() -> None:
    seq = Sequencer()
    out: list[Event] = []
    for number in (1, 3, 2, 2, 1, 5, 4):
        out += seq.receive(message(number))
    assert ids(out) == [1, 2, 3, 4, 5] and seq.resume == 5 and not seq.held


def test_a_reply_fills_a_gap_and_reports_what_is_gone() -> None:
    seq = Sequencer()
    seq.reply({"latest_id": 0, "more": False}, [])  # the welcome: an empty room
    assert ids(seq.receive(message(1))) == [1]
    assert seq.receive(message(4)) == [] and list(seq.held) == [4]
    events, more = seq.reply({"latest_id": 4, "more": False}, [message(3), message(4)])
    assert ids(events) == [(2, 2), 3, 4] and not more  # 2 expired: a discontinuity
    events, more = seq.reply({"latest_id": 9, "more": False}, [])  # 5-9 gone too
    assert ids(events) == [(5, 9)] and seq.resume == 9 and not more


def test_a_first_welcome_starts_where_its_history_starts_without_a_discontinuity() -> None:
    seq = Sequencer()
    events, more = seq.reply({"latest_id": 30, "more": False}, [message(29), message(30)])
    assert ids(events) == [29, 30] and not more and seq.oldest == 29


def test_a_reply_in_frames_continues_and_asks_for_the_next_page() -> None:
    seq = Sequencer(resume=10, started=True)
    events, more = seq.reply({"latest_id": 50, "more": True}, [message(11), message(12)])
    assert ids(events) == [11, 12] and not more and seq.continuing
    events, more = seq.reply({"latest_id": 50, "more": False}, [message(13)])
    assert ids(events) == [13] and more  # below the latest id: ask for the next page
    assert seq.resume == 13


def test_a_restart_forgets_the_old_history() -> None:
    seq = Sequencer()
    seq.receive(message(1))
    seq.receive(message(3))
    seq.restart()
    assert (seq.resume, seq.held, seq.started, seq.oldest) == (0, {}, False, None)


def jwt(claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.sig"


def test_a_token_is_renewed_before_exp_by_its_lifetime() -> None:
    assert lifetime_of(jwt({"exp": 1000, "iat": 400})) == Lifetime(1000.0, 400.0)
    assert Lifetime(1000.0, 400.0).renew_at(60) == 940.0  # a minute early
    assert Lifetime(1000.0, 900.0).renew_at(60) == 990.0  # short-lived: a tenth early
    assert Lifetime(1000.0, None).renew_at(60) == 940.0
    for token in (None, "", "opaque", "a.b.c", jwt({"exp": "soon"}), jwt({"exp": True})):
        assert lifetime_of(token) is None
    assert lifetime_of(jwt({"exp": 1e400})) is None  # JSON's Infinity: no time


def test_after_the_first_welcome_every_id_counts_even_before_any_arrived() -> None:
    """Welcomed to an empty room, cut before anything arrived: a reply that starts at 3 means
    1 and 2 are gone, and says so (it skipped them without a word)."""
    seq = Sequencer()
    seq.reply({"latest_id": 0, "more": False}, [])
    assert seq.started and seq.resume == 0
    events, _ = seq.reply({"latest_id": 4, "more": False}, [message(3), message(4)])
    assert ids(events) == [(1, 2), 3, 4]
