"""The DynamoDB adapters under moto, on the table serverless.yml deploys: what only they do
(the sealed echo, TTLs on a clock, Queries and their pages, transactions that race). What
every engine's connection store and message log promise is tested on each in tests/ports/."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import boto3
import pytest

from handler.chat.ports import Connection, Dialect, Draft
from infra.aws.connections import PRESENCE_KEPT_SECONDS, DynamoConnections
from infra.aws.message_log import DynamoMessageLog
from infra.aws.sealed_echo import EchoSeal
from tests.support.aws import FirstWriteStall

pytestmark = pytest.mark.usefixtures("aws")
TABLE = "wschat-test"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def conn(cid: str, room: str = "r", **fields: Any) -> Connection:
    return Connection(cid, room, f"id-{cid}", f"name-{cid}", Dialect.JSON, "", **fields)


def test_a_text_connections_echo_is_stored_sealed_in_its_record_alone() -> None:
    """Under token auth the echo is the credential: a reader of the table must not find it,
    in the record or in the room's copy that every fan-out reads, while the connection's own
    frames still get it back. A store with another key (a container without the stack's
    WSCHAT_ECHO_KEY) cannot open it, and a sealed echo moved to another record cannot be
    opened there either."""
    client = boto3.client("dynamodb")
    seal = EchoSeal("the stack's key")
    store = DynamoConnections(client, TABLE, seal=seal)
    text = Connection("t", "r", "id-t", "name-t", Dialect.TEXT, "tok-s3cret")
    store.add(text)
    table = client.scan(TableName=TABLE)["Items"]
    assert len(table) == 2 and "s3cret" not in str(table)
    assert [item["sk"]["S"] for item in table if "echo" in item] == ["CONN"]
    assert store.get("t") == text
    assert DynamoConnections(client, TABLE, seal=EchoSeal("the stack's key")).get("t") == text
    assert store.in_room("r")[0].echo == ""
    assert DynamoConnections(client, TABLE, seal=EchoSeal("another")).get("t") == replace(
        text, echo=""
    )
    record = client.get_item(TableName=TABLE, Key={"pk": {"S": "CONN#t"}, "sk": {"S": "CONN"}})
    store.add(replace(text, id="u", echo=""))
    client.update_item(
        TableName=TABLE,
        Key={"pk": {"S": "CONN#u"}, "sk": {"S": "CONN"}},
        UpdateExpression="SET echo = :e",
        ExpressionAttributeValues={":e": record["Item"]["echo"]},
    )
    assert store.get("u") == replace(text, id="u", echo="")


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


def test_a_room_is_counted_by_dynamodb_page_by_page_without_its_members() -> None:
    """A welcome's count used to read every member of the room (a big room's, page after
    page) only to take the list's length."""
    client = boto3.client("dynamodb")
    queries: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.dynamodb.Query", lambda params, **_: queries.append(params)
    )
    clock = Clock()
    store = DynamoConnections(client, TABLE, ttl_seconds=60, page_size=2, clock=clock)
    store.add(conn("gone"))
    clock.now += 61  # "gone" is past its TTL; DynamoDB may not have deleted it yet
    for i in range(5):
        store.add(conn(f"c{i}"))
    store.add(conn("elsewhere", room="other"))
    queries.clear()
    assert store.count("r") == 5
    assert len(queries) >= 3  # 6 items in the room, 2 per page
    assert all(q["Select"] == "COUNT" and q["ConsistentRead"] for q in queries)


@pytest.mark.parametrize("since", [10**12 - 2, 10**12 - 1, 10**13 - 2, 2**53 - 1])
def test_a_since_past_every_keyed_id_reads_nothing_with_a_key_condition_dynamodb_takes(
    since: int,
) -> None:
    """Message keys hold 12 digits. A `since` near 10**13 made the Query's lower bound
    `MSG#9999999999999`, above its upper bound `MSG#999999999999`: DynamoDB refuses that
    key condition with a ValidationException (moto answers it), and any lower bound wider
    than a key sorts among the keys by its first digits. Each Query's bounds must be keys,
    low to high."""
    client = boto3.client("dynamodb")
    bounds: list[tuple[str, str]] = []

    def keep(params: dict[str, Any], **_: Any) -> None:
        values = params["ExpressionAttributeValues"]
        if ":low" in values:
            bounds.append((values[":low"]["S"], values[":high"]["S"]))

    client.meta.events.register("provide-client-params.dynamodb.Query", keep)
    log = DynamoMessageLog(client, TABLE)
    log.append(Draft(room="r", user_id="u", user_name="U", text="m", client_msg_id=None))
    assert log.after("r", since, 10) == []
    assert [m.text for m in log.after("r", 0, 10)] == ["m"]
    assert bounds, "no Query"
    for low, high in bounds:
        assert len(low) == len(high) == len("MSG#") + 12 and low <= high


def test_history_expires() -> None:
    """Each message goes its TTL after it was sent, as in memory (test_memory.py, on a clock
    too); Redis keeps a room's stream whole until its TTL after the latest message."""
    clock = Clock()
    log = DynamoMessageLog(boto3.client("dynamodb"), TABLE, retention_seconds=100, clock=clock)
    log.append(Draft(room="r", user_id="u", user_name="U", text="old", client_msg_id=None))
    clock.now += 50
    log.append(Draft(room="r", user_id="u", user_name="U", text="new", client_msg_id=None))
    clock.now += 60
    assert [m.text for m in log.after("r", 0, 10)] == ["new"]
    assert [m.text for m in log.recent("r", 10)] == ["new"]


def test_a_retry_of_a_message_past_its_ttl_is_stored_anew() -> None:
    """A retry is answered while its message is in history, and is a new message once that
    one has left it (memory drops its retry key with the message; Redis, with the stream).
    DynamoDB deletes an expired item only eventually, and reads skip it meanwhile."""
    clock = Clock()
    log = DynamoMessageLog(boto3.client("dynamodb"), TABLE, retention_seconds=100, clock=clock)
    log.append(Draft(room="r", user_id="u", user_name="U", text="hi", client_msg_id="k1"))
    clock.now += 150
    assert log.after("r", 0, 10) == [] and log.recent("r", 10) == []
    again, created = log.append(
        Draft(room="r", user_id="u", user_name="U", text="hi", client_msg_id="k1")
    )
    assert (again.id, created) == (2, True)
    assert log.after("r", 0, 10) == [again]


def test_a_welcome_over_expired_history_opens_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """Every message of the room has expired, its counter has not: the welcome must open the
    connection at the counter, not wait for ids that will never come back."""
    from auth.principal import Principal
    from handler.chat.core import ChatCore, ConnectParams, Limits
    from tests.handler.chat.recording import RecordingDelivery

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


def test_a_publisher_that_lost_the_race_takes_the_next_id() -> None:
    """A reads the counter, B stores a message, then A's write: A's transaction must fail its
    condition and retry with the next id, never store a second message 1 or skip one."""
    client = boto3.client("dynamodb")
    log = DynamoMessageLog(client, TABLE)
    stall = FirstWriteStall(client, "TransactWriteItems")
    results: list[int] = []
    a = stall.start(
        lambda: results.append(
            log.append(
                Draft(room="race", user_id="a", user_name="a", text="A", client_msg_id=None)
            )[0].id
        )
    )
    assert (
        log.append(Draft(room="race", user_id="b", user_name="b", text="B", client_msg_id=None))[
            0
        ].id
        == 1
    )
    stall.release()
    a.join(10)
    assert results == [2]
    assert [(m.id, m.text) for m in log.after("race", 0, 10)] == [(1, "B"), (2, "A")]
    assert log.latest_id("race") == 2


@pytest.mark.parametrize("meanwhile", ["welcomed", "disconnected"])
def test_a_refresh_keeps_what_landed_between_its_read_and_its_write(meanwhile: str) -> None:
    """A refresh reads the connection, then writes its new expiry and rights. A welcome's
    gate opened meanwhile must stay open (else the connection gets no more live messages),
    and a record `$disconnect` deleted meanwhile must stay deleted (else a ghost member)."""
    from auth.principal import Principal
    from auth.rooms import Grants, GrantsPolicy, Right
    from handler.chat.core import ChatCore, ConnectParams
    from tests.handler.chat.recording import RecordingDelivery, TokenBook

    client = boto3.client("dynamodb")
    store = DynamoConnections(client, TABLE)
    delivery = RecordingDelivery()
    fresh = Principal("u", "u", "u", 1_900_000_000.0, Grants.from_claim({"r": ["read"]}))
    core = ChatCore(
        store,
        DynamoMessageLog(client, TABLE),
        delivery,
        policy=GrantsPolicy(),
        credentials=TokenBook(fresh=fresh),
    )
    writer = Principal("u", "u", "u", 1_800_000_000.0, Grants.from_claim({"r": ["read", "write"]}))
    core.connect("J", "r", writer, ConnectParams(Dialect.JSON))
    other = DynamoConnections(boto3.client("dynamodb"), TABLE)  # another Lambda invocation

    def land_meanwhile(**_: Any) -> None:  # once the refresh has read, before it writes
        client.meta.events.unregister("before-call.dynamodb.TransactWriteItems", land_meanwhile)
        if meanwhile == "welcomed":
            assert other.mark_welcomed("J", "r", 0)
        else:
            assert other.remove("J") is not None

    client.meta.events.register("before-call.dynamodb.TransactWriteItems", land_meanwhile)
    core.message("J", '{"action":"refresh","token":"fresh"}')
    if meanwhile == "welcomed":
        for record in (store.get("J"), *store.in_room("r")):
            assert record is not None
            assert (record.welcomed_through, record.expires_at) == (0, 1_900_000_000.0)
            assert record.rights == {Right.READ}
        delivery.take("J")
        core.publish("r", "w", "w", "live")
        assert [f["text"] for f in delivery.take_json("J")] == ["live"]
    else:
        assert store.get("J") is None and store.in_room("r") == []
        assert delivery.take("J") == []  # gone: nothing to tell it


@pytest.mark.parametrize(
    ("answers", "outcome"),
    [
        (["TransactionConflict", None], True),  # DynamoDB cancels a clash: tried again
        (["ConditionalCheckFailed"], False),  # the record is gone
        (["TransactionConflict"] * 5, "busy"),
    ],
)
def test_a_refresh_tells_a_clash_from_a_record_gone(
    answers: list[str | None], outcome: bool | str
) -> None:
    """moto never cancels a transaction for a clash; DynamoDB does, when another one (a
    welcome's mark) is on the record. That is not the record gone: the refresh is tried
    again, and a record that stays busy is a StoreBusy the client is told about."""
    from botocore.stub import Stubber

    from auth.rooms import ALL
    from handler.chat.ports import StoreBusy

    client = boto3.client("dynamodb")
    store = DynamoConnections(client, TABLE)
    record = {"pk": {"S": "CONN#a"}, "sk": {"S": "CONN"}, "id": {"S": "a"}, "room": {"S": "r"}}
    record |= {"user_id": {"S": "u"}, "user_name": {"S": "u"}, "dialect": {"S": "json"}}
    with Stubber(client) as stub:
        stub.add_response("get_item", {"Item": record})
        for answer in answers:
            if answer is None:
                stub.add_response("transact_write_items", {})
            else:
                stub.add_client_error(
                    "transact_write_items",
                    "TransactionCanceledException",
                    modeled_fields={
                        "CancellationReasons": [{"Code": answer}, {"Code": "None"}],
                    },
                )
        if outcome == "busy":
            with pytest.raises(StoreBusy):
                store.refresh("a", 1.0, ALL)
        else:
            assert store.refresh("a", 1.0, ALL) is outcome
        stub.assert_no_pending_responses()


def test_presence_is_numbered_on_an_item_of_its_own_and_leaves_message_ids_alone() -> None:
    """Each join or leave draws the room's next presence number from an item no transaction
    holds (on the message counter's item, a number drawn during a message's append cancels
    it), kept three hours after the room's last change: a handshake leaves nothing for good."""
    client = boto3.client("dynamodb")
    now = [1_000_000.0]
    store = DynamoConnections(client, TABLE, clock=lambda: now[0])
    log = DynamoMessageLog(client, TABLE)
    assert store.presence_seq("p") == 0
    store.add(conn("a", room="p"))
    assert store.next_presence_seq("p") == 1
    assert (store.presence_seq("p"), log.latest_id("p")) == (1, 0)
    assert store.mark_welcomed("a", "p", 0)
    message, _ = log.append(Draft(room="p", user_id="u", user_name="u", text="hi"))
    assert message.id == 1
    now[0] += 60
    assert [store.next_presence_seq("p") for _ in range(2)] == [2, 3]
    assert (store.presence_seq("p"), log.latest_id("p"), store.presence_seq("q")) == (3, 1, 0)
    assert log.append(Draft(room="p", user_id="u", user_name="u", text="again"))[0].id == 2
    items = {item["sk"]["S"]: item for item in client.scan(TableName=TABLE)["Items"]}
    assert set(items) >= {"SEQ", "PRESENCE"} and "presence_seq" not in items["SEQ"]
    assert int(items["PRESENCE"]["ttl"]["N"]) == 1_000_060 + PRESENCE_KEPT_SECONDS
