"""The DynamoDB adapters under moto, on the table serverless.yml deploys."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from handler.ports import Connection, Dialect
from infra.dynamodb import DynamoConnections, DynamoMessageLog

pytestmark = pytest.mark.usefixtures("aws")
TABLE = "wschat-test"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def conn(cid: str, room: str = "r", **fields: Any) -> Connection:
    return Connection(cid, room, f"id-{cid}", f"name-{cid}", Dialect.JSON, "echo", **fields)


def test_round_trip_and_removal() -> None:
    store = DynamoConnections(boto3.client("dynamodb"), TABLE)
    original = conn("a", q=7, expires_at=1_900_000_000.5)
    store.add(original)
    assert store.get("a") == original
    assert store.in_room("r") == [original]
    assert store.remove("a") == original
    assert store.remove("a") is None
    assert store.get("a") is None and store.in_room("r") == []


def test_expired_records_are_invisible() -> None:
    clock = Clock()
    store = DynamoConnections(boto3.client("dynamodb"), TABLE, ttl_seconds=60, clock=clock)
    store.add(conn("old"))
    clock.now += 30
    store.add(conn("new"))
    assert {c.id for c in store.in_room("r")} == {"old", "new"}
    clock.now += 31  # "old" is past its TTL; DynamoDB may not have deleted it yet
    assert [c.id for c in store.in_room("r")] == ["new"]
    assert store.get("old") is None
    assert store.remove("old") is None  # its leftovers are cleaned, but it is not reported


def test_room_members_are_paginated() -> None:
    client = boto3.client("dynamodb")
    queries: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.dynamodb.Query", lambda params, **_: queries.append(params)
    )
    scans: list[object] = []
    client.meta.events.register("provide-client-params.dynamodb.Scan", lambda **_: scans.append(1))
    store = DynamoConnections(client, TABLE, page_size=2)
    for i in range(7):
        store.add(conn(f"c{i}"))
    store.add(conn("elsewhere", room="other"))
    assert sorted(c.id for c in store.in_room("r")) == [f"c{i}" for i in range(7)]
    assert len(queries) >= 4  # 7 members, 2 per page
    assert all(q["ConsistentRead"] and q["Limit"] == 2 for q in queries)
    assert scans == []


def test_ids_increase_per_room_and_history_reads() -> None:
    log = DynamoMessageLog(boto3.client("dynamodb"), TABLE)
    ids = [log.append("r", "u", "U", f"m{i}", None)[0].id for i in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert log.append("other", "u", "U", "x", None)[0].id == 1
    assert [m.text for m in log.recent("r", 2)] == ["m3", "m4"]
    assert [m.id for m in log.after("r", 2, 10)] == [3, 4, 5]
    assert [m.id for m in log.after("r", 2, 1)] == [3]
    assert log.after("r", 5, 10) == [] and log.recent("nowhere", 5) == []
    assert log.latest_id("r") == 5 and log.latest_id("nowhere") == 0


def test_history_expires() -> None:
    clock = Clock()
    log = DynamoMessageLog(boto3.client("dynamodb"), TABLE, retention_seconds=100, clock=clock)
    log.append("r", "u", "U", "old", None)
    clock.now += 50
    log.append("r", "u", "U", "new", None)
    clock.now += 60
    assert [m.text for m in log.after("r", 0, 10)] == ["new"]
    assert [m.text for m in log.recent("r", 10)] == ["new"]


def test_client_msg_id_is_stored_once() -> None:
    log = DynamoMessageLog(boto3.client("dynamodb"), TABLE)
    first, created = log.append("r", "alice", "Alice", "hi", "k1")
    again, created_again = log.append("r", "alice", "Alice", "hi", "k1")
    _, created_bob = log.append("r", "bob", "Bob", "hi", "k1")
    assert created and not created_again and created_bob
    assert again == first
    assert [m.id for m in log.after("r", 0, 10)] == [1, 2]


def test_mark_welcomed_only_while_the_room_is_unchanged() -> None:
    client = boto3.client("dynamodb")
    store, log = DynamoConnections(client, TABLE), DynamoMessageLog(client, TABLE)
    store.add(conn("early"))
    assert store.mark_welcomed("early", "r", 0)  # an empty room: nothing to miss
    store.add(conn("late"))
    log.append("r", "u", "U", "hi", None)
    assert not store.mark_welcomed("late", "r", 0)  # a message arrived since its history
    assert store.mark_welcomed("late", "r", 1)
    assert {c.id: c.welcomed_through for c in store.in_room("r")} == {"early": 0, "late": 1}
    assert store.get("late") == conn("late", welcomed_through=1)
    assert store.mark_welcomed("gone", "r", 0)  # nothing to wait for


def test_a_welcome_over_expired_history_opens_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """Every message of the room has expired, its counter has not: the welcome must open the
    connection at the counter, not wait for ids that will never come back."""
    from auth.principal import Principal
    from handler.core import ChatCore, ConnectParams, Limits
    from tests.handler.recording import RecordingDelivery

    clock = Clock()
    client = boto3.client("dynamodb")
    delivery = RecordingDelivery()
    core = ChatCore(
        DynamoConnections(client, TABLE, clock=clock),
        DynamoMessageLog(client, TABLE, retention_seconds=60, clock=clock),
        delivery,
        Limits(),
        clock,
        clock,
    )
    for i in range(3):
        core.publish("r", "id-u", "u", f"old {i}")
    clock.now += 3600
    core.connect("J", "r", Principal(id="j", name="j", echo="j"), ConnectParams(Dialect.JSON))
    core.welcome("J", since=0)
    [welcome] = delivery.take_json("J")
    assert (welcome["history"], welcome["latest_id"]) == ([], 3)
    assert "too busy" not in caplog.text
    core.publish("r", "id-u", "u", "new")
    assert [f["id"] for f in delivery.take_json("J")] == [4]


def test_concurrent_appends_take_consecutive_ids() -> None:
    import threading

    log = DynamoMessageLog(boto3.client("dynamodb"), TABLE)
    ids: list[int] = []
    lock = threading.Lock()

    def publish(n: int) -> None:
        for i in range(5):
            message, _ = log.append("busy", f"u{n}", f"u{n}", f"{n}:{i}", None)
            with lock:
                ids.append(message.id)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(ids) == list(range(1, 21))
    assert [m.id for m in log.after("busy", 0, 100)] == list(range(1, 21))
