"""The JSON dialect's room verbs, driven on the core directly: `history` with `before`
(scroll back), `members` and `typing`. Each engine's side is in tests/ports; each transport's
in tests/contract."""

from __future__ import annotations

import json
from typing import Any

import pytest

from auth.principal import Principal
from auth.rooms import Right
from handler.chat import wire
from handler.chat.core import ChatCore, ConnectParams, Limits
from handler.chat.ports import Dialect
from infra.memory.connections import MemoryConnections
from infra.memory.message_log import MemoryMessageLog
from tests.handler.chat.recording import FakeClock, RecordingDelivery

JSON = ConnectParams(Dialect.JSON)
TEXT = ConnectParams(Dialect.TEXT)


@pytest.fixture
def core(delivery: RecordingDelivery, clock: FakeClock) -> ChatCore:
    limits = Limits(members_listed=3)
    return ChatCore(MemoryConnections(), MemoryMessageLog(size=50), delivery, limits, clock, clock)


def join(
    core: ChatCore,
    delivery: RecordingDelivery,
    cid: str,
    user: str | None = None,
    params: ConnectParams = JSON,
    room: str = "r",
) -> None:
    user = user or cid
    core.connect(cid, room, Principal(f"id-{user}", user, ""), params)
    core.welcome(cid)
    delivery.frames.clear()  # the welcome, and the others' presence: not what is tested here


def ask(core: ChatCore, delivery: RecordingDelivery, cid: str, **action: Any) -> list[Any]:
    """Send a JSON action; the frames that answered it."""
    core.message(cid, json.dumps(action))
    return delivery.take_json(cid)


def publish(core: ChatCore, count: int, room: str = "r") -> None:
    for n in range(1, count + 1):
        core.publish(room, "id-p", "p", f"m{n}")


# --- history, scrolling back -------------------------------------------------------------


def test_before_answers_the_newest_messages_below_it_oldest_first(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, delivery, "a")
    publish(core, 10)
    delivery.take("a")
    [page] = ask(core, delivery, "a", action="history", before=8, limit=3)
    assert page["type"] == "history" and page["before"] == 8 and page["latest_id"] == 10
    assert [m["id"] for m in page["messages"]] == [5, 6, 7] and page["more"] is False
    [page] = ask(core, delivery, "a", action="history", before=3)  # the default limit
    assert [m["id"] for m in page["messages"]] == [1, 2]
    [page] = ask(core, delivery, "a", action="history", before=1)
    assert page["messages"] == [] and page["before"] == 1  # nothing older: stop scrolling
    [page] = ask(core, delivery, "a", action="history", since=8)  # as before
    assert [m["id"] for m in page["messages"]] == [9, 10] and "before" not in page


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"before": 5, "since": 1}, wire.ONE_BOUND),
        ({"before": "5"}, wire.BEFORE_RANGE),
        ({"before": -1}, wire.BEFORE_RANGE),
        ({"before": 5.0}, wire.BEFORE_RANGE),
        ({"before": True}, wire.BEFORE_RANGE),
        ({"before": None}, wire.BEFORE_RANGE),
        ({"before": wire.MAX_MESSAGE_ID + 1}, wire.BEFORE_RANGE),
        ({"before": 5, "limit": 0}, wire.LIMIT_RANGE),
        ({"before": 5, "limit": wire.HISTORY_PAGE + 1}, wire.LIMIT_RANGE),
        ({"before": 5, "limit": "3"}, wire.LIMIT_RANGE),
        ({"since": 0, "limit": False}, wire.LIMIT_RANGE),
    ],
)
def test_a_history_request_out_of_bounds_is_refused_and_the_socket_stays(
    core: ChatCore, delivery: RecordingDelivery, fields: dict[str, Any], detail: str
) -> None:
    join(core, delivery, "a")
    publish(core, 3)
    delivery.take("a")
    [error] = ask(core, delivery, "a", action="history", **fields)
    assert error == {"type": "error", "code": "bad_request", "detail": detail}
    assert "a" not in delivery.closed
    [page] = ask(core, delivery, "a", action="history", before=wire.MAX_MESSAGE_ID, limit=500)
    assert [m["id"] for m in page["messages"]] == [1, 2, 3]  # the limits themselves are taken


def test_a_scroll_back_page_keeps_the_newest_within_the_byte_budget(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    limits = Limits(max_message_bytes=32 * 1024)
    core = ChatCore(MemoryConnections(), MemoryMessageLog(size=100), delivery, limits, clock, clock)
    join(core, delivery, "a")
    for n in range(40):  # 40 of 32 KiB: more than a 1 MiB page
        core.publish("r", "id-p", "p", f"{n:02d}" + "x" * (32 * 1024 - 2))
    delivery.take("a")
    frames = ask(core, delivery, "a", action="history", before=41, limit=40)
    ids = [m["id"] for frame in frames for m in frame["messages"]]
    assert ids == list(range(41 - len(ids), 41)) and 20 < len(ids) < 40  # the newest run
    assert [f["more"] for f in frames] == [True] * (len(frames) - 1) + [False]
    assert all(len(json.dumps(f).encode()) <= wire.MAX_SEND_BYTES for f in frames)


# --- members -----------------------------------------------------------------------------


def test_members_lists_the_rooms_distinct_users_by_name(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, delivery, "b1", "bob")
    join(core, delivery, "b2", "bob")  # one user, two sockets
    join(core, delivery, "a", "alice", TEXT)  # a text connection is a member too
    join(core, delivery, "x", "xavier", room="elsewhere")
    [reply] = ask(core, delivery, "b1", action="members")
    assert reply == {
        "type": "members",
        "room": "r",
        "count": 3,
        "complete": True,
        "more": False,
        "members": [{"id": "id-alice", "name": "alice"}, {"id": "id-bob", "name": "bob"}],
    }


def test_members_lists_at_most_the_limit_and_says_it_is_incomplete(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    for name in "edcba":
        join(core, delivery, name)
    [reply] = ask(core, delivery, "a", action="members")
    assert reply["count"] == 5 and reply["complete"] is False and len(reply["members"]) == 3


def test_a_members_reply_splits_within_the_frame_cap(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    core = ChatCore(MemoryConnections(), MemoryMessageLog(), delivery, Limits(), clock, clock)
    for n in range(30):  # 30 names of 10 KB: about 300 KB of members
        join(core, delivery, f"c{n}", f"{n:02d}" + "n" * 10_000)
    frames = ask(core, delivery, "c0", action="members")
    assert len(frames) > 2 and all(
        len(json.dumps(f).encode()) <= wire.MAX_SEND_BYTES for f in frames
    )
    assert [f["more"] for f in frames] == [True] * (len(frames) - 1) + [False]
    names = [m["name"][:2] for f in frames for m in f["members"]]
    assert names == [f"{n:02d}" for n in range(30)]


# --- typing ------------------------------------------------------------------------------


def test_typing_reaches_the_rooms_other_json_users_and_is_not_stored(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    for cid, user, params in (("a1", "ann", JSON), ("a2", "ann", JSON), ("b", "bob", JSON)):
        join(core, delivery, cid, user, params)
    join(core, delivery, "t", "tim", TEXT)
    join(core, delivery, "x", "xavier", room="elsewhere")
    assert ask(core, delivery, "a1", action="typing") == []  # no answer to the typist
    typing = {"type": "typing", "room": "r", "user": {"id": "id-ann", "name": "ann"}}
    assert delivery.take_json("b") == [typing]
    # Not ann's other tab, not a text socket (the seed's dialect stays byte for byte), not
    # another room; and nothing stored.
    assert [delivery.take("a2"), delivery.take("t"), delivery.take("x")] == [[], [], []]
    assert core.messages.latest_id("r") == 0


def test_typing_is_forwarded_once_per_user_per_interval(
    core: ChatCore, delivery: RecordingDelivery, clock: FakeClock
) -> None:
    join(core, delivery, "a1", "ann")
    join(core, delivery, "a2", "ann")
    join(core, delivery, "b", "bob")
    for cid in ("a1", "a1", "a2"):  # extras within 2 s are dropped, without an error
        assert ask(core, delivery, cid, action="typing") == []
    assert len(delivery.take("b")) == 1
    clock.now += core.limits.typing_seconds
    ask(core, delivery, "a2", action="typing")
    assert len(delivery.take("b")) == 1
    join(core, delivery, "a3", "ann", room="elsewhere")  # another room: another interval
    join(core, delivery, "c", "cy", room="elsewhere")
    ask(core, delivery, "a3", action="typing")
    assert len(delivery.take("c")) == 1


def test_typing_needs_the_write_right(core: ChatCore, delivery: RecordingDelivery) -> None:
    join(
        core, delivery, "reader", params=ConnectParams(Dialect.JSON, rights=frozenset({Right.READ}))
    )
    join(core, delivery, "b")
    [error] = ask(core, delivery, "reader", action="typing")
    assert error["type"] == "error" and error["code"] == "forbidden"
    assert delivery.take("b") == []


def test_a_verb_in_the_text_dialect_is_a_chat_line(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, delivery, "t", "tim", TEXT)
    join(core, delivery, "u", "una", TEXT)
    core.message("t", '{"action":"typing"}')
    assert delivery.take("u") == ['tim: {"action":"typing"}']
