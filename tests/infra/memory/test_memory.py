"""The in-memory adapters' own behaviour: the history's byte budget and its TTL. What every
engine's connection store and message log promise is tested on each in tests/ports/."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from handler.chat.ports import Connection, Dialect, Draft
from infra.memory.connections import MemoryConnections
from infra.memory.message_log import MemoryMessageLog


def conn(cid: str, room: str) -> Connection:
    return Connection(cid, room, "u", "u", Dialect.TEXT, "echo")


def test_a_connection_added_again_in_another_room_moves_there() -> None:
    """Memory's refresh and welcome mark write a record by adding it again, and an add
    leaves no copy behind. (The core never adds a connection id to a second room: Redis and
    DynamoDB would keep it in the first one too.)"""
    store = MemoryConnections()
    store.add(conn("a", "r1"))
    store.add(conn("b", "r1"))
    store.add(conn("a", "r2"))
    assert [c.id for c in store.in_room("r1")] == ["b"] and store.count("r1") == 1
    assert store.in_room("r2") == [conn("a", "r2")] and len(store) == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_all_rooms_stay_within_the_byte_budget_least_recently_used_first() -> None:
    log = MemoryMessageLog(max_bytes=1024 * 1024)
    for room in range(200):  # names of one length: rooms that hold the same, to the byte
        log.append(
            Draft(
                room=f"room-{room:03d}",
                user_id="u",
                user_name="u",
                text="x" * 20_000,
                client_msg_id=None,
            ),
        )
        assert log.retained_bytes <= 1024 * 1024
    assert log.after("room-199", 0, 10) and log.after("room-190", 0, 10)
    assert log.after("room-000", 0, 10) == []  # the least recently used went first
    # A forgotten room's ids do not go back: it continues above every id it had.
    assert log.latest_id("room-000") >= 1
    message, _ = log.append(
        Draft(room="room-000", user_id="u", user_name="u", text="back", client_msg_id=None)
    )
    assert message.id > 1


def test_the_budget_counts_what_each_message_holds_of_its_sender() -> None:
    """REST publishes bring their own strings: 2,000 one-letter messages from a JWT with a
    2,800-character name held 5.7 MB under a 1 MiB budget when only the text was counted."""
    budget = 1024 * 1024
    log = MemoryMessageLog(max_bytes=budget)
    for i in range(2000):
        name = f"{i:04d}" + "n" * 2800  # a new string each time, as each request makes
        log.append(
            Draft(room=f"r{i % 10}", user_id=name, user_name=name, text="a", client_msg_id=None)
        )
    kept = [m for room in range(10) for m in log.after(f"r{room}", 0, 10_000)]
    assert sum(sys.getsizeof(m.user_name) for m in kept) <= log.retained_bytes <= budget


def test_reading_a_room_keeps_it() -> None:
    log = MemoryMessageLog(max_bytes=1024 * 1024)
    log.append(
        Draft(room="kept", user_id="u", user_name="u", text="x" * 20_000, client_msg_id=None)
    )
    for room in range(200):
        log.after("kept", 0, 1)
        log.append(
            Draft(
                room=f"room-{room}",
                user_id="u",
                user_name="u",
                text="x" * 20_000,
                client_msg_id=None,
            )
        )
    assert [m.text[:1] for m in log.after("kept", 0, 10)] == ["x"]


def test_one_room_over_the_budget_loses_its_oldest_messages() -> None:
    log = MemoryMessageLog(max_bytes=1024 * 1024)
    for i in range(200):
        log.append(
            Draft(
                room="big",
                user_id="u",
                user_name="u",
                text=f"{i}:" + "x" * 20_000,
                client_msg_id=None,
            ),
        )
    kept = log.after("big", 0, 1000)
    assert log.retained_bytes <= 1024 * 1024
    assert kept[-1].id == 200 and [m.id for m in kept] == list(range(kept[0].id, 201))


def test_messages_and_idle_rooms_expire_after_the_ttl() -> None:
    """Each message goes its TTL after it was sent, as on DynamoDB. Not in tests/ports/: a
    clock drives it here and in test_dynamodb.py, and Redis keeps a room's stream whole until
    its TTL after the latest message."""
    clock = Clock()
    log = MemoryMessageLog(clock=clock, ttl_seconds=60)
    log.append(Draft(room="old", user_id="u", user_name="u", text="stale", client_msg_id=None))
    log.append(Draft(room="live", user_id="u", user_name="u", text="first", client_msg_id=None))
    clock.now += 30
    log.append(Draft(room="live", user_id="u", user_name="u", text="second", client_msg_id=None))
    clock.now += 40
    assert [m.text for m in log.after("live", 0, 10)] == ["second"]
    log.append(Draft(room="other", user_id="u", user_name="u", text="sweeps", client_msg_id=None))
    assert log.after("old", 0, 10) == [] and log.latest_id("old") == 1  # forgotten, ids kept
    assert log.retained_bytes < 10_000


def _post(log: MemoryMessageLog, room: str, user: str, text: str) -> None:
    log.append(Draft(room=room, user_id=user, user_name=user, text=text, client_msg_id=None))


def _flood_one_room(log: MemoryMessageLog) -> None:
    for i in range(200):
        _post(log, "flood", "mallory", f"{i}" + "x" * 30_000)


def _flood_many_rooms(log: MemoryMessageLog) -> None:
    for i in range(200):
        _post(log, f"mallory-{i}", "mallory", "x" * 30_000)


@pytest.mark.parametrize("flood", [_flood_one_room, _flood_many_rooms])
def test_a_flood_takes_from_the_flooded_rooms_not_from_the_others(
    flood: Callable[[MemoryMessageLog], None],
) -> None:
    budget = 4 * 1024 * 1024
    log = MemoryMessageLog(max_bytes=budget)
    for i in range(20):
        _post(log, "victim", "alice", f"recent {i}")
    flood(log)  # 6 MB: over the budget by half
    assert log.retained_bytes <= budget
    assert [m.text for m in log.after("victim", 0, 100)] == [f"recent {i}" for i in range(20)]


def test_the_budget_takes_from_the_largest_room_first() -> None:
    log = MemoryMessageLog(max_bytes=1024 * 1024)
    for i in range(30):  # 610 KB
        _post(log, "big", "u", f"{i}:" + "b" * 20_000)
    for i in range(20):  # 207 KB
        _post(log, "middle", "u", f"{i}:" + "m" * 10_000)
    for i in range(15):  # 305 KB, and over the budget by 74 KB: the largest room pays
        _post(log, "last", "u", f"{i}:" + "l" * 20_000)
    middle = log.after("middle", 0, 100)
    big = log.after("big", 0, 100)
    assert len(middle) == 20 and len(log.after("last", 0, 100)) == 15
    assert 0 < len(big) < 30 and big[-1].id == 30  # its oldest went
    # Once it is no larger than the others, they share: each keeps about an equal share.
    for i in range(60):
        _post(log, "last", "u", f"{15 + i}:" + "l" * 20_000)
    shares = {room: len(log.after(room, 0, 100)) for room in ("big", "middle", "last")}
    assert log.retained_bytes <= 1024 * 1024
    assert shares["middle"] == 20  # never the largest: untouched
    assert abs(shares["big"] - shares["last"]) <= 1


def test_many_small_rooms_leave_each_room_an_equal_share() -> None:
    budget = 1024 * 1024
    log = MemoryMessageLog(max_bytes=budget)
    for i in range(100):  # the room holds the whole budget, and more
        _post(log, "victim", "alice", f"{i}:" + "v" * 10_000)
    for i in range(100):
        _post(log, f"small-{i}", "mallory", "x" * 3_000)
    rooms = 101
    kept = log.after("victim", 0, 1000)
    one_message = 10_050 + 300
    # At least an equal share of the budget, less one message.
    assert len(kept) * one_message >= budget / rooms - one_message
    assert all(log.after(f"small-{i}", 0, 1) for i in range(100))  # smaller: untouched
    assert kept[-1].id == 100
