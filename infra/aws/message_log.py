"""The message log on DynamoDB: consecutive ids from a per-room counter, each message written
with its id in one transaction (infra/aws/table.py)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from handler.chat.ports import (
    ChatMessage,
    Draft,
    StoreBusy,
    Stored,
    append_each,
    read_opening,
)
from infra.aws.table import (
    LARGEST_KEYED_ID,
    Item,
    live_items_query,
    message_key,
    number,
    past_ttl,
    query_items,
    retry_key,
    room_key,
    string,
)
from infra.settings import Settings

log = logging.getLogger(__name__)


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
        partition = string(room_key(message.room))
        unchanged = "attribute_not_exists(last_id)" if last == 0 else "last_id = :last"
        ttl = int(message.ts) + self._retention
        item: Item = {
            "pk": partition,
            "sk": string(message_key(message.id)),
            "id": number(message.id),
            "room": string(message.room),
            "user_id": string(message.user_id),
            "user_name": string(message.user_name),
            "text": string(message.text),
            "ts": number(message.ts),
            "ttl": number(ttl),
        }
        writes: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": {"pk": partition, "sk": string("SEQ")},
                    "UpdateExpression": "SET last_id = :next",
                    "ConditionExpression": unchanged,
                    "ExpressionAttributeValues": {
                        ":next": number(message.id),
                        **({":last": number(last)} if last else {}),
                    },
                }
            },
            {"Put": {"TableName": self._table, "Item": item}},
        ]
        if message.client_msg_id is not None:
            item["client_msg_id"] = string(message.client_msg_id)
            writes.append(
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            "pk": partition,
                            "sk": string(retry_key(message.user_id, message.client_msg_id)),
                            "message_id": number(message.id),
                            "ttl": number(ttl),
                        },
                        # A marker past its TTL (deleted only eventually) is no longer one.
                        "ConditionExpression": "attribute_not_exists(pk) OR #ttl <= :now",
                        "ExpressionAttributeNames": {"#ttl": "ttl"},
                        "ExpressionAttributeValues": {":now": number(int(message.ts))},
                    }
                }
            )
        return writes

    def _deduplicated(self, room: str, user_id: str, client_msg_id: str) -> ChatMessage | None:
        """The message a retry was stored as, while it is in history: a marker or a message
        past its TTL (which DynamoDB deletes only eventually) is none."""
        marker = self._client.get_item(
            TableName=self._table,
            Key={"pk": string(room_key(room)), "sk": string(retry_key(user_id, client_msg_id))},
            ConsistentRead=True,
        ).get("Item")
        if marker is None or self._expired(marker):
            return None
        stored = self._client.get_item(
            TableName=self._table,
            Key={
                "pk": string(room_key(room)),
                "sk": string(message_key(int(marker["message_id"]["N"]))),
            },
            ConsistentRead=True,
        ).get("Item")
        return _message_from(stored) if stored is not None and not self._expired(stored) else None

    def _expired(self, item: Item) -> bool:
        return past_ttl(item, self._clock())

    def append_many(self, drafts: Sequence[Draft]) -> Sequence[Stored]:
        return append_each(self, drafts)

    def after(self, room: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        if after_id >= LARGEST_KEYED_ID:
            # No id past it has a key: a wider bound would sort among the keys by its first
            # digits, or past the upper one, which DynamoDB refuses (moto does not).
            return []
        high = message_key(LARGEST_KEYED_ID)
        return self._messages(room, message_key(after_id + 1), high, limit, forward=True)

    def recent(self, room: str, limit: int) -> Sequence[ChatMessage]:
        if limit <= 0:
            return []
        return self.before(room, LARGEST_KEYED_ID + 1, limit)

    def before(self, room: str, before_id: int, limit: int) -> Sequence[ChatMessage]:
        if limit <= 0 or before_id <= 1:
            return []  # ids start at 1
        high = message_key(min(before_id - 1, LARGEST_KEYED_ID))
        newest_first = self._messages(room, message_key(0), high, limit, forward=False)
        return list(reversed(newest_first))

    def latest_id(self, room: str) -> int:
        item = self._client.get_item(
            TableName=self._table,
            Key={"pk": string(room_key(room)), "sk": string("SEQ")},
            ConsistentRead=True,
        ).get("Item")
        return int(item["last_id"]["N"]) if item else 0

    def opening(
        self, room: str, since: int | None, epoch: str, limit: int
    ) -> tuple[int, str, Sequence[ChatMessage]]:
        return read_opening(self, room, since, epoch, limit)

    def head(self, room: str, since: int = 0, epoch: str = "") -> tuple[int, str]:
        """DynamoDB never loses a room's counter (its writes are acknowledged once durable
        in several zones): one epoch, always, whatever the client has seen."""
        return self.latest_id(room), "1"

    def _messages(
        self, room: str, low: str, high: str, limit: int, forward: bool
    ) -> list[ChatMessage]:
        """The messages with keys from `low` to `high`, at most `limit`, from the low end if
        `forward`, else from the high end."""
        bounds = {":low": string(low), ":high": string(high)}
        query = live_items_query(
            self._table, room, "sk BETWEEN :low AND :high", bounds, self._clock()
        )
        query.update(ScanIndexForward=forward, Limit=limit)
        messages: list[ChatMessage] = []
        for item in query_items(self._client, **query):
            messages.append(_message_from(item))
            if len(messages) >= limit:
                break
        return messages
