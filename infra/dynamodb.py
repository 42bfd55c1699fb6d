"""DynamoDB adapters for the connection and message-log ports (the serverless transport).

One table, keys `pk`/`sk`, TTL attribute `ttl`:

    CONN#{connection_id}  CONN              the connection record (a text-dialect echo, sealed)
    ROOM#{room}           CONN#{id}         room membership (a copy of the record, for fan-out)
    ROOM#{room}           SEQ               the room's message counter (`last_id`, atomic ADD)
    ROOM#{room}           MSG#{id:012d}     a message in the room's history
    ROOM#{room}           DEDUP#{user}#{k}  a client_msg_id already used, and the id it got
                                            (`#` and `%` percent-encoded in user and k)

Room members and history are read with Query on the room's partition, never Scan.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from auth.rooms import ALL, Rights, rights_from_text, rights_text
from handler.chat.ports import (
    DEFERRED_PRESENCE,
    ChatMessage,
    Connection,
    Dialect,
    Draft,
    StoreBusy,
    Stored,
    append_each,
)
from infra.sealed_echo import EchoSeal
from infra.settings import Settings

log = logging.getLogger(__name__)

Item = dict[str, dict[str, Any]]

MESSAGE_ID_WIDTH = 12
REFRESH_ATTEMPTS = 5
LARGEST_KEYED_ID = 10**MESSAGE_ID_WIDTH - 1  # a trillion ids per room: ages at any real rate


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def _room_key(room: str) -> str:
    return f"ROOM#{room}"


def _member_key(room: str, connection_id: str) -> dict[str, dict[str, str]]:
    """The key of a connection's record in its room's partition (what `in_room` reads)."""
    return {"pk": _s(_room_key(room)), "sk": _s(f"CONN#{connection_id}")}


def _past_ttl(item: Item, now: float) -> bool:
    """An item DynamoDB will delete (it does so only eventually): reads skip it."""
    return "ttl" in item and int(item["ttl"]["N"]) <= now


def _retry_key(user_id: str, client_msg_id: str) -> str:
    """A retry marker's sort key. `#` and `%` are percent-encoded in both parts, so that
    user `a#b` with key `c` and user `a` with key `b#c` are two markers, not one."""
    return f"DEDUP#{_escaped(user_id)}#{_escaped(client_msg_id)}"


def _escaped(part: str) -> str:
    return part.replace("%", "%25").replace("#", "%23")


def _message_key(message_id: int) -> str:
    return f"MSG#{message_id:0{MESSAGE_ID_WIDTH}d}"


def _connection_attributes(connection: Connection, ttl: int) -> Item:
    """The attributes both copies of a connection's record share (the echo is the
    connection record's alone: `DynamoConnections._record`)."""
    item: Item = {
        "id": _s(connection.id),
        "room": _s(connection.room),
        "user_id": _s(connection.user_id),
        "user_name": _s(connection.user_name),
        "dialect": _s(connection.dialect.value),
        "connected_at": _n(connection.connected_at),
        "rights": _s(rights_text(connection.rights)),
        "ttl": _n(ttl),
    }
    if connection.welcomed_through is not None:
        item["welcomed_through"] = _n(connection.welcomed_through)
    if connection.q is not None:
        item["q"] = _n(connection.q)
    if connection.expires_at is not None:
        item["expires_at"] = _n(connection.expires_at)
    return item


def _connection_from(item: Item, echo: str = "") -> Connection:
    return Connection(
        id=item["id"]["S"],
        room=item["room"]["S"],
        user_id=item["user_id"]["S"],
        user_name=item["user_name"]["S"],
        dialect=Dialect(item["dialect"]["S"]),
        echo=echo,
        q=int(item["q"]["N"]) if "q" in item else None,
        expires_at=float(item["expires_at"]["N"]) if "expires_at" in item else None,
        connected_at=float(item["connected_at"]["N"]) if "connected_at" in item else 0.0,
        welcomed_through=(
            int(item["welcomed_through"]["N"]) if "welcomed_through" in item else None
        ),
        # Records written before rooms had rights were written under the open policy.
        rights=rights_from_text(item["rights"]["S"]) if "rights" in item else ALL,
    )


def _message_from(item: Item) -> ChatMessage:
    return ChatMessage(
        id=int(item["id"]["N"]),
        room=item["room"]["S"],
        user_id=item["user_id"]["S"],
        user_name=item["user_name"]["S"],
        text=item["text"]["S"],
        ts=float(item["ts"]["N"]),
        client_msg_id=item["client_msg_id"]["S"] if "client_msg_id" in item else None,
    )


def _live_items_query(
    table: str, room: str, sort_condition: str, values: Item, now: float
) -> dict[str, Any]:
    """A consistent Query of a room's partition that skips items past their TTL (DynamoDB
    deletes expired items only eventually)."""
    return {
        "TableName": table,
        "KeyConditionExpression": f"pk = :pk AND {sort_condition}",
        "FilterExpression": "#ttl > :now",
        "ExpressionAttributeNames": {"#ttl": "ttl"},
        "ExpressionAttributeValues": {":pk": _s(_room_key(room)), ":now": _n(int(now)), **values},
        "ConsistentRead": True,
    }


def _query(client: Any, **kwargs: Any) -> Iterator[Item]:
    """Every item of a Query, page by page."""
    for page in _pages(client, **kwargs):
        yield from page.get("Items", [])


def _pages(client: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every page of a Query."""
    while True:
        page: dict[str, Any] = client.query(**kwargs)
        yield page
        last = page.get("LastEvaluatedKey")
        if not last:
            return
        kwargs["ExclusiveStartKey"] = last


class DynamoConnections:
    """Connections with a TTL: API Gateway closes sockets after 2 h and `$disconnect` is
    best-effort, so stale records expire on their own and reads skip expired ones."""

    def __init__(
        self,
        client: Any,
        table: str,
        ttl_seconds: int = Settings.connection_ttl_seconds,
        page_size: int | None = None,
        clock: Callable[[], float] = time.time,
        seal: EchoSeal | None = None,
    ) -> None:
        """`seal` keeps echoes unreadable at rest; every store that reads another's records
        must share one (the runtime's). None: a key of this store's own."""
        self._client = client
        self._table = table
        self._ttl_seconds = ttl_seconds
        self._page_size = page_size
        self._clock = clock
        self._seal = seal or EchoSeal()

    def _record(self, connection: Connection, attributes: Item) -> Item:
        """The connection record: the shared attributes, and the echo sealed (only a text
        connection has one; fan-out reads the room's copies, which never hold it)."""
        record = {"pk": _s(f"CONN#{connection.id}"), "sk": _s("CONN"), **attributes}
        if connection.echo:
            record["echo"] = _s(self._seal.seal(connection.echo, connection.id))
        return record

    def _connection_with_echo(self, item: Item) -> Connection:
        sealed = item.get("echo", {}).get("S")
        opened = self._seal.open(sealed, item["id"]["S"]) if sealed else None
        return _connection_from(item, opened or "")

    def add(self, connection: Connection) -> None:
        ttl = int(self._clock()) + self._ttl_seconds
        attributes = _connection_attributes(connection, ttl)
        self._client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": self._table, "Item": self._record(connection, attributes)}},
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            "pk": _s(_room_key(connection.room)),
                            "sk": _s(f"CONN#{connection.id}"),
                            **attributes,
                        },
                    }
                },
            ]
        )

    def add_many(self, connections: Sequence[Connection]) -> None:
        """Seed many connections at once (a big room for a benchmark or a test): the same
        records as `add`, in batches, without `add`'s all-or-nothing per connection."""
        ttl = int(self._clock()) + self._ttl_seconds
        items = []
        for connection in connections:
            attributes = _connection_attributes(connection, ttl)
            items.append(self._record(connection, attributes))
            items.append(
                {
                    "pk": _s(_room_key(connection.room)),
                    "sk": _s(f"CONN#{connection.id}"),
                    **attributes,
                }
            )
        for start in range(0, len(items), 25):  # BatchWriteItem's limit
            requests = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
            while requests:
                response = self._client.batch_write_item(RequestItems={self._table: requests})
                requests = response.get("UnprocessedItems", {}).get(self._table, [])

    def get(self, connection_id: str) -> Connection | None:
        response = self._client.get_item(
            TableName=self._table,
            Key={"pk": _s(f"CONN#{connection_id}"), "sk": _s("CONN")},
            ConsistentRead=True,
        )
        item = response.get("Item")
        if item is None or self._expired(item):
            return None
        return self._connection_with_echo(item)

    def refresh(self, connection_id: str, expires_at: float | None, rights: Rights) -> bool:
        """Update just these two attributes on both copies of the record, on condition that
        it still exists: rewriting the whole record from a read would undo a welcome's mark
        (the connection would get no more live messages) or bring back a record that
        `$disconnect` deleted meanwhile (a ghost member until its TTL)."""
        connection = self.get(connection_id)
        if connection is None:
            return False
        values: Item = {":rights": _s(rights_text(rights))}
        if expires_at is None:
            expression = "SET rights = :rights REMOVE expires_at"
        else:
            expression = "SET rights = :rights, expires_at = :expires"
            values[":expires"] = _n(expires_at)
        keys = [
            {"pk": _s(f"CONN#{connection_id}"), "sk": _s("CONN")},
            _member_key(connection.room, connection_id),
        ]
        update = {
            "TableName": self._table,
            "UpdateExpression": expression,
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": values,
        }
        for attempt in range(REFRESH_ATTEMPTS):
            try:
                self._client.transact_write_items(
                    TransactItems=[{"Update": {**update, "Key": key}} for key in keys]
                )
            except self._client.exceptions.TransactionCanceledException as error:
                reasons = error.response.get("CancellationReasons", [])
                if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                    return False  # gone meanwhile
                # Another transaction on the record (a welcome's mark, presence kept for it):
                # DynamoDB cancels rather than waits. Try again.
                time.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311
                continue
            return True
        raise StoreBusy(f"connection {connection_id}: its record stayed busy")

    def remove(self, connection_id: str) -> Connection | None:
        response = self._client.delete_item(
            TableName=self._table,
            Key={"pk": _s(f"CONN#{connection_id}"), "sk": _s("CONN")},
            ReturnValues="ALL_OLD",
        )
        item = response.get("Attributes")
        if item is None:
            return None
        connection = _connection_from(item)
        self._client.delete_item(
            TableName=self._table,
            Key=_member_key(connection.room, connection_id),
        )
        return None if self._expired(item) else connection

    def in_room(self, room: str) -> Sequence[Connection]:
        # Strongly consistent: a client whose $connect just returned gets the next message.
        query = self._members_query(room)
        if self._page_size:
            query["Limit"] = self._page_size
        return [_connection_from(item) for item in _query(self._client, **query)]

    def count(self, room: str) -> int:
        """Counted by DynamoDB (`Select=COUNT`): a big room's members are read there but
        not sent here, page after page, for every welcome."""
        query = {**self._members_query(room), "Select": "COUNT"}
        if self._page_size:
            query["Limit"] = self._page_size
        return sum(int(page["Count"]) for page in _pages(self._client, **query))

    def _members_query(self, room: str) -> dict[str, Any]:
        return _live_items_query(
            self._table, room, "begins_with(sk, :conn)", {":conn": _s("CONN#")}, self._clock()
        )

    # --- a big room, in slices (infra/fanout.py) ----------------------------------------------

    def room_slice(
        self, room: str, after: str | None, through: str | None, limit: int
    ) -> tuple[list[Connection], str | None]:
        """The room's members with ids above `after` and up to `through` (None: unbounded),
        in id order, from one Query that reads at most `limit` records. Returns them and,
        when the slice holds more than that, the id to continue after."""
        upper = "BETWEEN :conn AND :through" if through is not None else None
        query = _live_items_query(
            self._table,
            room,
            f"sk {upper}" if upper else "begins_with(sk, :conn)",
            {":conn": _s("CONN#")} | ({":through": _s(f"CONN#{through}")} if upper else {}),
            self._clock(),
        )
        query["Limit"] = limit
        if after is not None:
            query["ExclusiveStartKey"] = _member_key(room, after)
        page = self._client.query(**query)
        last = page.get("LastEvaluatedKey")
        members = [_connection_from(item) for item in page.get("Items", [])]
        return members, last["sk"]["S"].removeprefix("CONN#") if last else None

    def slice_bounds(self, room: str, size: int) -> list[tuple[str | None, str | None]]:
        """Cut the room into slices of at most `size` member records, as (after, through)
        pairs for `room_slice`: disjoint, in order, and together the whole room, including
        members who join later (the last slice is open-ended). Reads only the keys."""
        bounds: list[tuple[str | None, str | None]] = []
        after: str | None = None
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :conn)",
            "ExpressionAttributeValues": {":pk": _s(_room_key(room)), ":conn": _s("CONN#")},
            "ProjectionExpression": "sk",
            "ConsistentRead": True,
            "Limit": size,
        }
        while True:
            last = self._client.query(**query).get("LastEvaluatedKey")
            if not last:
                bounds.append((after, None))
                return bounds
            through = last["sk"]["S"].removeprefix("CONN#")
            bounds.append((after, through))
            after = through
            query["ExclusiveStartKey"] = last

    def mark_welcomed(
        self, connection_id: str, room: str, through_id: int, force: bool = False
    ) -> bool:
        """Set `welcomed_through` on both copies of the record, on condition that the room's
        counter (`SEQ`) still reads `through_id`: one transaction, so no message can slip in
        between the welcome's history and the start of live delivery."""
        if through_id == 0:
            unchanged = "attribute_not_exists(last_id) OR last_id = :through"
        else:
            unchanged = "last_id = :through"
        update = {
            "TableName": self._table,
            "UpdateExpression": "SET welcomed_through = :through",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": {":through": _n(through_id)},
        }
        check: list[dict[str, Any]] = []
        if not force:
            check.append(
                {
                    "ConditionCheck": {
                        "TableName": self._table,
                        "Key": {"pk": _s(_room_key(room)), "sk": _s("SEQ")},
                        "ConditionExpression": unchanged,
                        "ExpressionAttributeValues": {":through": _n(through_id)},
                    }
                }
            )
        keys = [
            {"pk": _s(f"CONN#{connection_id}"), "sk": _s("CONN")},
            _member_key(room, connection_id),
        ]
        try:
            self._client.transact_write_items(
                TransactItems=[*check, *({"Update": {**update, "Key": key}} for key in keys)]
            )
        except self._client.exceptions.TransactionCanceledException:
            return self.get(connection_id) is None  # gone: nothing to wait for
        return True

    def defer_presence(self, member: Connection, frame: str) -> bool:
        """On the room's copy of the record, the one `in_room` reads and `mark_welcomed` sets
        in the same transaction as the other: either this lands before the gate opens, and
        `take_deferred` (which reads after) finds it, or it fails, and the frame goes now."""
        key = _member_key(member.room, member.id)
        try:
            self._client.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression="SET kept_presence = "
                "list_append(if_not_exists(kept_presence, :none), :f)",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists("
                "welcomed_through) AND (attribute_not_exists(kept_presence) "
                "OR size(kept_presence) < :cap)",
                ExpressionAttributeValues={
                    ":none": {"L": []},
                    ":f": {"L": [_s(frame)]},
                    ":cap": _n(DEFERRED_PRESENCE),
                },
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            item = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True)
            return "welcomed_through" not in item.get("Item", {})  # else: open, send it now
        return True

    def take_deferred(self, connection: Connection) -> Sequence[str]:
        key = _member_key(connection.room, connection.id)
        item = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True)
        deferred = item.get("Item", {}).get("kept_presence")
        if deferred is None:
            return []
        # The gate is open: nothing is added any more. Off the record that every fan-out
        # reads.
        with contextlib.suppress(self._client.exceptions.ConditionalCheckFailedException):
            self._client.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression="REMOVE kept_presence",
                ConditionExpression="attribute_exists(pk)",  # unless gone meanwhile
            )
        return [frame["S"] for frame in deferred["L"]]

    def _expired(self, item: Item) -> bool:
        return _past_ttl(item, self._clock())


class DynamoMessageLog:
    """Per-room history: consecutive ids from a per-room counter, items expiring after
    `retention_seconds`."""

    def __init__(
        self,
        client: Any,
        table: str,
        retention_seconds: int = Settings.history_ttl_seconds,
        clock: Callable[[], float] = time.time,
        attempts: int = 25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._table = table
        self._retention = retention_seconds
        self._clock = clock
        self._attempts = attempts
        self._sleep = sleep

    def append(self, draft: Draft) -> tuple[ChatMessage, bool]:
        """Store a message under the room's next id: the counter moves and the message (with
        its de-duplication marker) lands in one transaction, conditioned on the counter still
        reading what we read. So every id up to the counter is written: no id is drawn and
        then lost, and none is visible before its message (the welcome seam and resume rely
        on it). A concurrent publisher makes the condition fail: read again and retry."""
        room, user_id, client_msg_id = draft.room, draft.user_id, draft.client_msg_id
        if client_msg_id is not None:
            stored = self._deduplicated(room, user_id, client_msg_id)
            if stored is not None:
                return stored, False
        for attempt in range(self._attempts):
            last = self.latest_id(room)
            message = ChatMessage(
                id=last + 1,
                room=room,
                user_id=user_id,
                user_name=draft.user_name,
                text=draft.text,
                ts=self._clock(),
                client_msg_id=client_msg_id,
            )
            try:
                self._client.transact_write_items(TransactItems=self._writes(message, last))
            except self._client.exceptions.TransactionCanceledException:
                if client_msg_id is not None:  # perhaps a concurrent retry of this message
                    stored = self._deduplicated(room, user_id, client_msg_id)
                    if stored is not None:
                        return stored, False
                self._sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 5)))  # noqa: S311
                continue
            return message, True
        raise StoreBusy(f"room {room!r}: {self._attempts} publishers in a row took the next id")

    def _writes(self, message: ChatMessage, last: int) -> list[dict[str, Any]]:
        room_key = _s(_room_key(message.room))
        unchanged = "attribute_not_exists(last_id)" if last == 0 else "last_id = :last"
        ttl = int(message.ts) + self._retention
        item: Item = {
            "pk": room_key,
            "sk": _s(_message_key(message.id)),
            "id": _n(message.id),
            "room": _s(message.room),
            "user_id": _s(message.user_id),
            "user_name": _s(message.user_name),
            "text": _s(message.text),
            "ts": _n(message.ts),
            "ttl": _n(ttl),
        }
        writes: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": {"pk": room_key, "sk": _s("SEQ")},
                    "UpdateExpression": "SET last_id = :next",
                    "ConditionExpression": unchanged,
                    "ExpressionAttributeValues": {
                        ":next": _n(message.id),
                        **({":last": _n(last)} if last else {}),
                    },
                }
            },
            {"Put": {"TableName": self._table, "Item": item}},
        ]
        if message.client_msg_id is not None:
            item["client_msg_id"] = _s(message.client_msg_id)
            writes.append(
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            "pk": room_key,
                            "sk": _s(_retry_key(message.user_id, message.client_msg_id)),
                            "message_id": _n(message.id),
                            "ttl": _n(ttl),
                        },
                        # A marker past its TTL (deleted only eventually) is no longer one.
                        "ConditionExpression": "attribute_not_exists(pk) OR #ttl <= :now",
                        "ExpressionAttributeNames": {"#ttl": "ttl"},
                        "ExpressionAttributeValues": {":now": _n(int(message.ts))},
                    }
                }
            )
        return writes

    def _deduplicated(self, room: str, user_id: str, client_msg_id: str) -> ChatMessage | None:
        """The message a retry was stored as, while it is in history: a marker or a message
        past its TTL (which DynamoDB deletes only eventually) is none."""
        marker = self._client.get_item(
            TableName=self._table,
            Key={"pk": _s(_room_key(room)), "sk": _s(_retry_key(user_id, client_msg_id))},
            ConsistentRead=True,
        ).get("Item")
        if marker is None or self._expired(marker):
            return None
        stored = self._client.get_item(
            TableName=self._table,
            Key={"pk": _s(_room_key(room)), "sk": _s(_message_key(int(marker["message_id"]["N"])))},
            ConsistentRead=True,
        ).get("Item")
        return _message_from(stored) if stored is not None and not self._expired(stored) else None

    def _expired(self, item: Item) -> bool:
        return _past_ttl(item, self._clock())

    def append_many(self, drafts: Sequence[Draft]) -> Sequence[Stored]:
        return append_each(self, drafts)

    def after(self, room: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        if after_id >= LARGEST_KEYED_ID:
            # No id past it has a key: a wider bound would sort among the keys by its first
            # digits, or past the upper one, which DynamoDB refuses (moto does not).
            return []
        return self._messages(room, _message_key(after_id + 1), limit, forward=True)

    def recent(self, room: str, limit: int) -> Sequence[ChatMessage]:
        if limit <= 0:
            return []
        newest_first = self._messages(room, _message_key(0), limit, forward=False)
        return list(reversed(newest_first))

    def latest_id(self, room: str) -> int:
        item = self._client.get_item(
            TableName=self._table,
            Key={"pk": _s(_room_key(room)), "sk": _s("SEQ")},
            ConsistentRead=True,
        ).get("Item")
        return int(item["last_id"]["N"]) if item else 0

    def head(self, room: str) -> tuple[int, str]:
        """DynamoDB never loses a room's counter: one epoch, always."""
        return self.latest_id(room), "1"

    def _messages(self, room: str, bound: str, limit: int, forward: bool) -> list[ChatMessage]:
        bounds = {
            ":low": _s(bound if forward else _message_key(0)),
            ":high": _s(_message_key(LARGEST_KEYED_ID)),
        }
        query = _live_items_query(
            self._table, room, "sk BETWEEN :low AND :high", bounds, self._clock()
        )
        query.update(ScanIndexForward=forward, Limit=limit)
        messages: list[ChatMessage] = []
        for item in _query(self._client, **query):
            messages.append(_message_from(item))
            if len(messages) >= limit:
                break
        return messages


def create_chat_table(client: Any, table: str) -> None:
    """Create the ChatTable exactly as infra/resources.yml (which serverless.yml deploys)
    defines it: keys, billing mode and TTL."""
    from pathlib import Path

    import yaml

    resources = yaml.safe_load((Path(__file__).parent / "resources.yml").read_text())
    properties = resources["Resources"]["ChatTable"]["Properties"]
    client.create_table(
        TableName=table,
        AttributeDefinitions=properties["AttributeDefinitions"],
        KeySchema=properties["KeySchema"],
        BillingMode=properties["BillingMode"],
    )
    client.get_waiter("table_exists").wait(TableName=table)
    ttl = properties["TimeToLiveSpecification"]
    client.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": ttl["Enabled"]},
    )
