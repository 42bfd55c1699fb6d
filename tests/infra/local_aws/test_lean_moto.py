"""The emulator's lean moto (infra/local_aws/lean_moto.py) answers exactly as moto does: each
scenario runs once on moto as it is and once patched, and both must end the same."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.local_aws import lean_moto
from infra.local_aws.dynamodb import create_chat_table

TABLE = "t"
Scenario = Callable[[Any], object]


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: int) -> dict[str, str]:
    return {"N": str(value)}


CONN = {"pk": s("CONN#1"), "sk": s("CONN")}
MEMBER = {"pk": s("ROOM#a"), "sk": s("CONN#1")}


def put(pk: str, sk: str, condition: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"TableName": TABLE, "Item": {"pk": s(pk), "sk": s(sk), **fields}}
    if condition:
        body["ConditionExpression"] = condition
    return {"Put": body}


def mark(key: dict[str, Any], through: int) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": TABLE,
            "Key": key,
            "UpdateExpression": "SET welcomed_through = :t",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": {":t": n(through)},
        }
    }


def counter_reads(value: int) -> dict[str, Any]:
    return {
        "ConditionCheck": {
            "TableName": TABLE,
            "Key": {"pk": s("ROOM#a"), "sk": s("SEQ")},
            "ConditionExpression": "last_id = :t",
            "ExpressionAttributeValues": {":t": n(value)},
        }
    }


TRANSACTIONS: dict[str, list[dict[str, Any]]] = {
    "the seam moved on": [counter_reads(2), mark(CONN, 2), mark(MEMBER, 2)],
    "the seam holds": [counter_reads(3), mark(CONN, 3), mark(MEMBER, 3)],
    "update of a missing item": [mark({"pk": s("CONN#9"), "sk": s("CONN")}, 1)],
    "dedup marker taken: nothing written": [
        put("ROOM#a", "MSG#1", text=s("hi")),
        put("CONN#1", "CONN", "attribute_not_exists(pk)"),
    ],
    "dedup marker free": [
        put("ROOM#a", "MSG#1", text=s("hi")),
        put("ROOM#a", "DEDUP#u#k", "attribute_not_exists(pk)"),
    ],
    "the same item twice": [put("ROOM#a", "MSG#2"), put("ROOM#a", "MSG#2")],
    "the old item on failure": [
        {
            "ConditionCheck": {
                "TableName": TABLE,
                "Key": CONN,
                "ConditionExpression": "attribute_not_exists(pk)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
    ],
    "refused midway, after a put": [
        put("ROOM#a", "MSG#3", text=s("x")),
        {
            "Update": {
                "TableName": TABLE,
                "Key": CONN,
                "UpdateExpression": "ADD #x :one",
                "ExpressionAttributeNames": {"#x": "name"},
                "ExpressionAttributeValues": {":one": n(1)},
            }
        },
    ],
    "delete and put": [
        {"Delete": {"TableName": TABLE, "Key": {"pk": s("ROOM#a"), "sk": s("SEQ")}}},
        put("ROOM#a", "MSG#4"),
    ],
    "a missing table": [
        put("ROOM#a", "MSG#5"),
        {"Put": {"TableName": "nope", "Item": {"pk": s("a"), "sk": s("b")}}},
    ],
}


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """Switch lean moto on or off for what follows; always restored after the test."""
    from moto.core.responses import ActionResult
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    originals = (DynamoDBBackend.transact_write_items, Table.query, ActionResult.execute_result)

    def switch(lean: bool) -> None:
        monkeypatch.setattr(DynamoDBBackend, "transact_write_items", originals[0])
        monkeypatch.setattr(Table, "query", originals[1])
        monkeypatch.setattr(ActionResult, "execute_result", originals[2])
        if lean:
            lean_moto.install()

    yield switch


def outcome(scenario: Callable[[Any], object]) -> tuple[object, list[str]]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_chat_table(client, TABLE)
        client.put_item(TableName=TABLE, Item={"pk": s("ROOM#a"), "sk": s("SEQ"), "last_id": n(3)})
        client.put_item(TableName=TABLE, Item={**CONN, "name": s("c")})
        client.put_item(TableName=TABLE, Item={**MEMBER, "name": s("c")})
        try:
            result = scenario(client)
        except client.exceptions.TransactionCanceledException as error:
            result = ("canceled", error.response.get("CancellationReasons"))
        except Exception as error:
            result = (type(error).__name__, getattr(error, "response", {}).get("Error"))
        items = client.scan(TableName=TABLE)["Items"]
    return result, sorted(json.dumps(item, sort_keys=True, default=repr) for item in items)


@pytest.mark.parametrize("name", list(TRANSACTIONS))
def test_transactions_end_as_moto_ends_them(name: str, patched: Callable[[bool], None]) -> None:
    def scenario(client: Any) -> object:
        return client.transact_write_items(TransactItems=TRANSACTIONS[name])["ResponseMetadata"][
            "HTTPStatusCode"
        ]

    patched(False)
    expected = outcome(scenario)
    patched(True)
    assert outcome(scenario) == expected


QUERIES: dict[str, dict[str, Any]] = {
    "members": {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :c)",
        "ExpressionAttributeValues": {":pk": s("ROOM#a"), ":c": s("CONN#")},
    },
    "messages backwards, a page": {
        "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
        "ExpressionAttributeValues": {":pk": s("ROOM#a"), ":lo": s("MSG#0"), ":hi": s("MSG#9")},
        "ScanIndexForward": False,
        "Limit": 2,
    },
    "an empty partition": {
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": s("ROOM#none")},
    },
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_queries_answer_as_moto_answers(name: str, patched: Callable[[bool], None]) -> None:
    def scenario(client: Any) -> object:
        for i in range(5):
            for room in ("a", "b"):
                client.put_item(
                    TableName=TABLE, Item={"pk": s(f"ROOM#{room}"), "sk": s(f"MSG#{i}")}
                )
        page = client.query(TableName=TABLE, ConsistentRead=True, **QUERIES[name])
        return page["Items"], page.get("LastEvaluatedKey"), page["Count"]

    patched(False)
    expected = outcome(scenario)
    patched(True)
    assert outcome(scenario) == expected


def test_forgetting_tracked_models_keeps_the_data(patched: Callable[[bool], None]) -> None:
    def scenario(client: Any) -> object:
        lean_moto.forget_tracked_models()
        return client.get_item(TableName=TABLE, Key=CONN)["Item"]

    assert outcome(scenario)[0] == {**CONN, "name": s("c")}


def test_reads_answer_every_attribute_type_as_moto_does(patched: Callable[[bool], None]) -> None:
    item = {
        "pk": s("ROOM#types"),
        "sk": s("MSG#1"),
        "n": n(42),
        "f": {"N": "-0.5"},
        "b": {"B": b"\x00\xffbinary"},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2"]},
        "bs": {"BS": [b"x", b"y"]},
        "l": {"L": [s("x"), n(1), {"NULL": True}]},
        "m": {"M": {"k": {"BOOL": False}, "u": s("caf\u00e9 \u2615")}},
    }

    def scenario(client: Any) -> object:
        client.put_item(TableName=TABLE, Item=item)
        got = client.get_item(TableName=TABLE, Key={"pk": item["pk"], "sk": item["sk"]})
        missing = client.get_item(TableName=TABLE, Key={"pk": s("none"), "sk": s("none")})
        page = client.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": item["pk"]},
        )
        return got["Item"], "Item" in missing, page["Items"], page["Count"]

    patched(False)
    expected = outcome(scenario)
    patched(True)
    assert outcome(scenario) == expected
