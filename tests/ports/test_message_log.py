"""The MessageLog port (handler/chat/ports.py), one suite run against every engine."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from handler.chat.ports import ChatMessage, Draft, StoreBusy, Stored
from handler.chat.wire import MAX_MESSAGE_ID
from tests.ports.engines import Engine


def draft(text: str, room: str = "r", user: str = "u", key: str | None = None) -> Draft:
    return Draft(room, user, f"name-{user}", text, key)


def each(stored: Sequence[Stored]) -> list[tuple[ChatMessage, bool]]:
    """What `append_many` answered, none of it busy."""
    assert not any(isinstance(answer, StoreBusy) for answer in stored), stored
    return [answer for answer in stored if not isinstance(answer, StoreBusy)]


def test_ids_are_consecutive_per_room(engine: Engine) -> None:
    log = engine.messages
    stored = [log.append(draft(f"m{n}")) for n in range(5)]
    assert [(message.id, created) for message, created in stored] == [
        (n, True) for n in range(1, 6)
    ]
    assert log.append(draft("elsewhere", room="other"))[0].id == 1
    assert (log.latest_id("r"), log.latest_id("other"), log.latest_id("nowhere")) == (5, 1, 0)
    assert (log.head("r")[0], log.head("nowhere")[0]) == (5, 0)


def test_after_reads_on_from_an_id_oldest_first_as_stored(engine: Engine) -> None:
    log = engine.messages
    stored = [log.append(draft(f"m{n}", key=f"k{n}" if n % 2 else None))[0] for n in range(5)]
    log.append(draft("elsewhere", room="other"))
    assert log.after("r", 0, 10) == stored  # every field as `append` answered it
    assert log.after("r", 2, 10) == stored[2:]
    assert log.after("r", 2, 1) == stored[2:3]
    assert log.after("r", 5, 10) == []
    assert log.after("r", MAX_MESSAGE_ID, 10) == []  # the largest `since` a client may send
    assert log.after("nowhere", 0, 10) == []


def test_recent_reads_the_newest_oldest_first(engine: Engine) -> None:
    log = engine.messages
    stored = [log.append(draft(f"m{n}"))[0] for n in range(5)]
    log.append(draft("elsewhere", room="other"))
    assert log.recent("r", 2) == stored[3:]
    assert log.recent("r", 10) == stored
    assert log.recent("r", 0) == []
    assert log.recent("nowhere", 5) == []


def test_opening_reads_the_head_then_the_newest_or_those_after_since(engine: Engine) -> None:
    """A welcome's reads (`opening`): the head, then a page as `recent` or `after` reads it."""
    log = engine.messages
    stored = [log.append(draft(f"m{n}"))[0] for n in range(5)]
    log.append(draft("elsewhere", room="other"))
    latest, epoch = log.head("r")
    assert latest == 5 and epoch

    def opened(since: int | None, known: str, limit: int) -> tuple[int, str, list[ChatMessage]]:
        head, current, page = log.opening("r", since, known, limit)
        return head, current, list(page)

    assert opened(None, "", 2) == (5, epoch, stored[3:])
    assert opened(None, epoch, 10) == (5, epoch, stored)
    assert opened(None, epoch, 0) == (5, epoch, [])
    assert opened(2, epoch, 2) == (5, epoch, stored[2:4])
    assert opened(0, "", 10) == (5, epoch, stored)
    assert opened(5, epoch, 10) == (5, epoch, [])
    assert opened(MAX_MESSAGE_ID, "", 10) == (5, epoch, [])
    assert log.opening("nowhere", None, "", 5)[::2] == (0, [])


def test_before_reads_the_newest_below_an_id_oldest_first(engine: Engine) -> None:
    log = engine.messages
    stored = [log.append(draft(f"m{n}"))[0] for n in range(5)]
    log.append(draft("elsewhere", room="other"))
    assert log.before("r", 6, 2) == stored[3:]  # above the latest: the newest
    assert log.before("r", 4, 2) == stored[1:3]
    assert log.before("r", 4, 10) == stored[:3]
    assert log.before("r", 1, 10) == [] and log.before("r", 0, 10) == []
    assert log.before("r", 3, 0) == []
    assert log.before("r", MAX_MESSAGE_ID, 10) == stored
    assert log.before("nowhere", 5, 5) == []


def test_a_repeated_client_msg_id_is_stored_once_per_user_and_room(engine: Engine) -> None:
    log = engine.messages
    first, created = log.append(draft("hi", user="alice", key="k1"))
    assert created
    # The retry is answered with the message as first stored, whatever it says now.
    assert log.append(draft("hi, again", user="alice", key="k1")) == (first, False)
    bob, bob_created = log.append(draft("hi", user="bob", key="k1"))
    elsewhere, elsewhere_created = log.append(draft("hi", room="other", user="alice", key="k1"))
    assert (bob.id, bob_created, elsewhere.id, elsewhere_created) == (2, True, 1, True)
    assert [(m.id, m.user_id) for m in log.after("r", 0, 10)] == [(1, "alice"), (2, "bob")]
    assert log.latest_id("r") == 2


def test_append_many_stores_in_order_as_append_would_one_after_another(engine: Engine) -> None:
    drafts = [
        draft("one", key="c1"),
        draft("two"),
        draft("one again", key="c1"),
        draft("three", user="u2", key="c1"),  # another user's c1
        draft("first here", room="other"),
        draft("four"),
    ]
    stored = each(engine.messages.append_many(drafts))
    assert [(m.room, m.id, m.text, created) for m, created in stored] == [
        ("r", 1, "one", True),
        ("r", 2, "two", True),
        ("r", 1, "one", False),
        ("r", 3, "three", True),
        ("other", 1, "first here", True),
        ("r", 4, "four", True),
    ]
    created_here = [m for m, created in stored if created and m.room == "r"]
    assert engine.messages.after("r", 0, 10) == created_here


@pytest.mark.parametrize("separator", ["#", ":"])
def test_a_retry_is_the_same_user_with_the_same_key_never_another_pair(
    engine: Engine, separator: str
) -> None:
    """User `a#b` sending key `c` is not user `a` sending key `b#c`: whatever a user id
    holds (a JWT's `sub` may hold anything), each user's keys are its own."""
    log = engine.messages
    log.append(draft("from a#b", user=f"a{separator}b", key="c"))
    second, created = log.append(draft("from a", user="a", key=f"b{separator}c"))
    assert (second.id, second.user_id, second.text, created) == (2, "a", "from a", True)


def test_the_epoch_stays_while_the_history_lasts(engine: Engine) -> None:
    log = engine.messages
    log.append(draft("one"))
    latest, epoch = log.head("r")
    assert latest == 1 and epoch
    log.append(draft("two"))
    log.after("r", 0, 10)
    log.recent("r", 10)
    assert log.head("r") == (2, epoch) and log.latest_id("r") == 2


def test_a_restart_keeps_the_history_and_its_epoch_or_starts_over_under_another(
    engine: Engine,
) -> None:
    """A client resumes from an id under an epoch: the same epoch must mean the same ids.
    Memory's history is its process's, and a Redis without persistence loses its rooms: they
    start over from id 1 under a new epoch. DynamoDB never loses a room's counter: one epoch
    for good, and its history is all there after a cold start."""
    stored = [engine.messages.append(draft(text))[0] for text in ("one", "two")]
    _, before = engine.messages.head("r")
    engine.restart()
    log = engine.messages
    after, _ = log.append(draft("three"))
    latest, epoch = log.head("r")
    if engine.durable:
        assert (after.id, latest, epoch) == (3, 3, before)
        assert log.after("r", 0, 10) == [*stored, after]
    else:
        assert (after.id, latest) == (1, 1) and epoch not in ("", before)
        assert log.after("r", 0, 10) == [after]


@pytest.mark.parametrize("history_size", [3])
def test_a_room_keeps_its_newest_messages_up_to_the_cap(engine: Engine) -> None:
    """Memory and Redis cap a room's history (WSCHAT_HISTORY_SIZE); DynamoDB keeps messages
    by age alone. Ids go on all the same."""
    log = engine.messages
    stored = [log.append(draft(f"m{n}"))[0] for n in range(5)]
    kept = stored if engine.cap is None else stored[-engine.cap :]
    assert log.after("r", 0, 10) == kept and log.recent("r", 10) == kept
    assert log.before("r", 6, 10) == kept and log.before("r", 5, 10) == kept[:-1]
    assert log.after("r", 3, 10) == stored[3:]
    assert log.latest_id("r") == 5 and log.append(draft("m5"))[0].id == 6


@pytest.mark.parametrize("history_size", [2])
def test_a_retry_is_answered_while_its_message_is_in_history_then_stored_anew(
    engine: Engine,
) -> None:
    log = engine.messages
    first, _ = log.append(draft("a", key="k1"))
    log.append(draft("b"))
    assert log.append(draft("a", key="k1")) == (first, False)
    log.append(draft("c"))  # "a" leaves a history of 2 (DynamoDB, without a cap, keeps it)
    again, created = log.append(draft("a", key="k1"))
    if engine.cap is None:
        assert (again, created) == (first, False)
    else:
        assert (again.id, again.text, created) == (4, "a", True)
        assert log.append(draft("a", key="k1")) == (again, False)  # and stored once
