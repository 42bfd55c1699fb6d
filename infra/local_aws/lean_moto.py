"""moto's DynamoDB, fit to run for hours as the emulator's local DynamoDB
(infra/local_aws/dynamodb.py).

moto is a test double, and three of its habits made a long-running emulator grow to gigabytes
and slow to a crawl (measured in docs/performance.md, "The emulator's DynamoDB"):

- Every model object it makes (each `Item`, and each deep copy of one) is appended to a
  class-level list for its dashboard, and never let go.
- TransactWriteItems backs up each table it names by a deep copy of the whole table, once per
  action: time and garbage in proportion to everything stored.
- A Query on the table sorts every item of every partition, then keeps the one it asked for.
- Its response serializer walks the service model for every attribute of every item, when
  the items it answers a Query or a GetItem with are already in DynamoDB's JSON form.

`install()` replaces the last three with versions that do the same work on what the request
names; `forget_tracked_models()` drops the lists, after each request. Both rely on moto's
internals (pinned in pyproject.toml); tests/infra/local_aws/test_lean_moto.py holds them to
moto's own results. Only the emulator's own moto server uses them; the unit tests run moto as it is.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any


def install() -> None:
    """Patch moto's DynamoDB backend in this process (idempotent)."""
    from moto.core.responses import ActionResult
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    if getattr(DynamoDBBackend.transact_write_items, "lean", False):
        return
    query = Table.query
    serialize = ActionResult.execute_result

    def execute_result(result: Any, context: Any) -> Any:
        return dump_read(serialize, result, context)

    def partition_query(table: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        return query_partition(query, table, hash_key, *args, **kwargs)

    partition_query.lean = True  # type: ignore[attr-defined]
    transact_write_items.lean = True  # type: ignore[attr-defined]
    ActionResult.execute_result = execute_result  # type: ignore[method-assign, assignment]
    Table.query = partition_query  # type: ignore[method-assign, assignment]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign, assignment]


def forget_tracked_models() -> None:
    """Drop moto's record of every DynamoDB model object it made; the backend keeps its own."""
    from moto.core.model_instances import model_data

    for model in model_data.get("dynamodb", {}).values():
        model.instances_tracked = []  # type: ignore[attr-defined]


# The reads whose answers moto already holds in DynamoDB's JSON form.
PLAIN_READS = frozenset({"Query", "GetItem"})


def dump_read(serialize: Any, result: Any, context: Any) -> Any:
    """moto's answer to a request: for a DynamoDB Query or GetItem, its result dumped as JSON
    (binary values base64-encoded, as the wire has them) under the headers moto would send."""
    from moto.core.responses import ActionResult

    service, operation = context.service_model.service_name, context.operation_model.name
    if service != "dynamodb" or operation not in PLAIN_READS or not isinstance(result.result, dict):
        return serialize(result, context)
    status, headers, _ = serialize(ActionResult({}), context)
    return status, headers, json.dumps(result.result, separators=(",", ":"), default=_base64)


def _base64(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def query_partition(query: Any, table: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
    """moto's `Table.query`, shown only the partition asked for. A query on an index reads
    every partition, as moto does. Safe only while no other request runs: the emulator's moto
    server takes one request at a time."""
    if kwargs.get("index_name") or not table.range_key_attr or hash_key is None:
        return query(table, hash_key, *args, **kwargs)
    everything = table.items
    partition = type(everything)(dict)
    if hash_key in everything:
        partition[hash_key] = everything[hash_key]
    table.items = partition
    try:
        return query(table, hash_key, *args, **kwargs)
    finally:
        table.items = everything


def transact_write_items(backend: Any, transact_items: list[dict[str, Any]]) -> None:
    """All or nothing, as DynamoDB: every condition is checked against the state before the
    transaction (its actions name distinct items, so no write of it can change what a later
    check sees), then the writes are made; should one be refused midway, the items already
    written are put back. Only the items written are copied."""
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    targets: set[tuple[str, str]] = set()
    actions: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    errors: list[Any] = []
    for entry in transact_items:  # 1. check everything; write nothing
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        failed_item = None
        try:
            op_type, op = next(iter(entry.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            if op_type == "Put":
                table = backend.get_table(op["TableName"])
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            target = (str(op["TableName"]), str(dict(sorted(key.items()))))
            if target in targets:
                raise MultipleTransactionsException()
            targets.add(target)
            actions.append((op_type, op, key))
            current = backend.get_item(op["TableName"], key)
            if op.get("ConditionExpression") is not None:
                condition = get_filter_expression(
                    op["ConditionExpression"],
                    op.get("ExpressionAttributeNames"),
                    op.get("ExpressionAttributeValues"),
                )
                if not condition.expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        failed_item = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=failed_item)
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            raise
        except ConditionalCheckFailed as error:
            errors.append(("ConditionalCheckFailed", str(error.message), failed_item))
        except Exception as error:
            errors.append((type(error).__name__, str(error), None))
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)

    undo: list[tuple[Any, Any, Any, Any]] = []
    failing = 0
    try:  # 2. write, keeping a copy of each item before it changes
        for position, (op_type, op, key) in enumerate(actions):
            failing = position
            if op_type == "ConditionCheck":
                continue
            name = op["TableName"]
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            table = backend.get_table(name)
            hash_value, range_value = backend.get_keys_value(table, key)
            before = table.get_item(hash_value, range_value)
            undo.append((table, hash_value, range_value, copy.deepcopy(before)))
            if op_type == "Put":
                backend.put_item(name, op["Item"])
            elif op_type == "Delete":
                backend.delete_item(name, key, names, values)
            elif op_type == "Update":
                backend.update_item(name, key, op["UpdateExpression"], names, values)
    except Exception as error:
        for table, hash_value, range_value, before in reversed(undo):
            if before is None:
                table.delete_item(hash_value, range_value)
            elif range_value is not None:
                table.items[hash_value][range_value] = before
            else:
                table.items[hash_value] = before
        if isinstance(error, MockValidationException):
            raise
        errors[failing] = (type(error).__name__, str(error), None)
        raise TransactionCanceledException(errors) from error
