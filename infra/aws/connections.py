"""The connection store on DynamoDB: a record per connection and its copy in the room's
partition (infra/aws/table.py)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from auth.rooms import ALL, Rights, rights_from_text, rights_text
from handler.chat.ports import (
    DEFERRED_PRESENCE,
    Connection,
    Dialect,
    StoreBusy,
    User,
    distinct_users,
)
from infra.aws.sealed_echo import EchoSeal
from infra.aws.table import (
    Item,
    live_items_query,
    member_key,
    number,
    past_ttl,
    query_items,
    query_pages,
    room_key,
    string,
)
from infra.settings import Settings

REFRESH_ATTEMPTS = 5
# A room's presence number outlives its last join or leave by this long: longer than API
# Gateway keeps a connection (2 h), so no client still holds a number when the item expires
# and the room's numbers start from 1 again; and a handshake into a new name leaves no item
# for good.
PRESENCE_KEPT_SECONDS = 3 * 3600


def _connection_attributes(connection: Connection, ttl: int) -> Item:
    """The attributes both copies of a connection's record share (the echo is the
    connection record's alone: `DynamoConnections._record`)."""
    item: Item = {
        "id": string(connection.id),
        "room": string(connection.room),
        "user_id": string(connection.user_id),
        "user_name": string(connection.user_name),
        "dialect": string(connection.dialect.value),
        "connected_at": number(connection.connected_at),
        "rights": string(rights_text(connection.rights)),
        "ttl": number(ttl),
    }
    if connection.welcomed_through is not None:
        item["welcomed_through"] = number(connection.welcomed_through)
    if connection.q is not None:
        item["q"] = number(connection.q)
    if connection.expires_at is not None:
        item["expires_at"] = number(connection.expires_at)
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
        record = {"pk": string(f"CONN#{connection.id}"), "sk": string("CONN"), **attributes}
        if connection.echo:
            record["echo"] = string(self._seal.seal(connection.echo, connection.id))
        return record

    def _connection_with_echo(self, item: Item) -> Connection:
        sealed = item.get("echo", {}).get("S")
        opened = self._seal.open(sealed, item["id"]["S"]) if sealed else None
        return _connection_from(item, opened or "")

    def add(self, connection: Connection) -> None:
        # No count: it would take a query of the room (a welcome makes it when it needs it).
        ttl = int(self._clock()) + self._ttl_seconds
        attributes = _connection_attributes(connection, ttl)
        self._client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": self._table, "Item": self._record(connection, attributes)}},
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            "pk": string(room_key(connection.room)),
                            "sk": string(f"CONN#{connection.id}"),
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
                    "pk": string(room_key(connection.room)),
                    "sk": string(f"CONN#{connection.id}"),
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
            Key={"pk": string(f"CONN#{connection_id}"), "sk": string("CONN")},
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
        values: Item = {":rights": string(rights_text(rights))}
        if expires_at is None:
            expression = "SET rights = :rights REMOVE expires_at"
        else:
            expression = "SET rights = :rights, expires_at = :expires"
            values[":expires"] = number(expires_at)
        keys = [
            {"pk": string(f"CONN#{connection_id}"), "sk": string("CONN")},
            member_key(connection.room, connection_id),
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
            Key={"pk": string(f"CONN#{connection_id}"), "sk": string("CONN")},
            ReturnValues="ALL_OLD",
        )
        item = response.get("Attributes")
        if item is None:
            return None
        connection = _connection_from(item)
        self._client.delete_item(
            TableName=self._table,
            Key=member_key(connection.room, connection_id),
        )
        return None if self._expired(item) else connection

    def in_room(self, room: str) -> Sequence[Connection]:
        # Strongly consistent: a client whose $connect just returned gets the next message.
        query = self._members_query(room)
        if self._page_size:
            query["Limit"] = self._page_size
        return [_connection_from(item) for item in query_items(self._client, **query)]

    def count(self, room: str) -> int:
        """Counted by DynamoDB (`Select=COUNT`): a big room's members are read there but
        not sent here, page after page, for every welcome."""
        query = {**self._members_query(room), "Select": "COUNT"}
        if self._page_size:
            query["Limit"] = self._page_size
        return sum(int(page["Count"]) for page in query_pages(self._client, **query))

    def users(self, room: str, limit: int) -> Sequence[User]:
        query = {**self._members_query(room), "ProjectionExpression": "user_id, user_name"}
        query["Limit"] = self._page_size or 1000  # pages read only until `limit` are found
        items = query_items(self._client, **query)
        return distinct_users((User(i["user_id"]["S"], i["user_name"]["S"]) for i in items), limit)

    def _members_query(self, room: str) -> dict[str, Any]:
        return live_items_query(
            self._table, room, "begins_with(sk, :conn)", {":conn": string("CONN#")}, self._clock()
        )

    # --- a big room, in slices (infra/aws/fanout.py) ----------------------------------------------

    def room_slice(
        self, room: str, after: str | None, through: str | None, limit: int
    ) -> tuple[list[Connection], str | None]:
        """The room's members with ids above `after` and up to `through` (None: unbounded),
        in id order, from one Query that reads at most `limit` records. Returns them and,
        when the slice holds more than that, the id to continue after."""
        upper = "BETWEEN :conn AND :through" if through is not None else None
        query = live_items_query(
            self._table,
            room,
            f"sk {upper}" if upper else "begins_with(sk, :conn)",
            {":conn": string("CONN#")} | ({":through": string(f"CONN#{through}")} if upper else {}),
            self._clock(),
        )
        query["Limit"] = limit
        if after is not None:
            query["ExclusiveStartKey"] = member_key(room, after)
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
            "ExpressionAttributeValues": {":pk": string(room_key(room)), ":conn": string("CONN#")},
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
            "ExpressionAttributeValues": {":through": number(through_id)},
        }
        check: list[dict[str, Any]] = []
        if not force:
            check.append(
                {
                    "ConditionCheck": {
                        "TableName": self._table,
                        "Key": {"pk": string(room_key(room)), "sk": string("SEQ")},
                        "ConditionExpression": unchanged,
                        "ExpressionAttributeValues": {":through": number(through_id)},
                    }
                }
            )
        keys = [
            {"pk": string(f"CONN#{connection_id}"), "sk": string("CONN")},
            member_key(room, connection_id),
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
        key = member_key(member.room, member.id)
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
                    ":f": {"L": [string(frame)]},
                    ":cap": number(DEFERRED_PRESENCE),
                },
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            item = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True)
            return "welcomed_through" not in item.get("Item", {})  # else: open, send it now
        return True

    def take_deferred(self, connection: Connection) -> Sequence[str]:
        key = member_key(connection.room, connection.id)
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

    def next_presence_seq(self, room: str) -> int | None:
        """One atomic ADD on the room's `PRESENCE` item (one write per join and leave). The
        caller has registered or removed the connection before, and reads the room's count
        after: so the count read under the highest number includes every change numbered below
        it (docs/welcome-seam.md). An item of its own, not the message counter's: no
        transaction holds it, so a number never waits on, or cancels, a message's append or a
        welcome's check."""
        response = self._client.update_item(
            TableName=self._table,
            Key=self._presence_key(room),
            UpdateExpression="ADD presence_seq :one SET #ttl = :ttl",
            ExpressionAttributeNames={"#ttl": "ttl"},
            ExpressionAttributeValues={
                ":one": number(1),
                ":ttl": number(int(self._clock()) + PRESENCE_KEPT_SECONDS),
            },
            ReturnValues="UPDATED_NEW",
        )
        return int(response["Attributes"]["presence_seq"]["N"])

    def presence_seq(self, room: str) -> int:
        item = self._client.get_item(
            TableName=self._table,
            Key=self._presence_key(room),
            ProjectionExpression="presence_seq",
            # Consistent: a stale number would be below changes the count after it includes,
            # and let through older frames' counts than this one.
            ConsistentRead=True,
        ).get("Item", {})
        return int(item["presence_seq"]["N"]) if "presence_seq" in item else 0

    def _presence_key(self, room: str) -> Item:
        return {"pk": string(room_key(room)), "sk": string("PRESENCE")}

    def _expired(self, item: Item) -> bool:
        return past_ttl(item, self._clock())
