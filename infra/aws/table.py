"""The chat table (one DynamoDB table, keys `pk`/`sk`, TTL attribute `ttl`), as every DynamoDB
adapter reads and writes it:

    CONN#{connection_id}  CONN              the connection record (a text-dialect echo, sealed)
    ROOM#{room}           CONN#{id}         room membership (a copy of the record, for fan-out)
    ROOM#{room}           SEQ               the room's message counter (`last_id`)
    ROOM#{room}           PRESENCE          the number of its latest join or leave
                                            (`presence_seq`, with a TTL)
    ROOM#{room}           MSG#{id:012d}     a message in the room's history
    ROOM#{room}           DEDUP#{user}#{k}  a client_msg_id already used, and the id it got
                                            (`#` and `%` percent-encoded in user and k)

Room members and history are read with Query on the room's partition, never Scan.
infra/deploy/resources.yml defines the table; serverless.yml deploys it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Item = dict[str, dict[str, Any]]

MESSAGE_ID_WIDTH = 12
LARGEST_KEYED_ID = 10**MESSAGE_ID_WIDTH - 1  # a trillion ids per room: ages at any real rate


def string(value: str) -> dict[str, str]:
    return {"S": value}


def number(value: float) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def room_key(room: str) -> str:
    return f"ROOM#{room}"


def member_key(room: str, connection_id: str) -> dict[str, dict[str, str]]:
    """The key of a connection's record in its room's partition (what `in_room` reads)."""
    return {"pk": string(room_key(room)), "sk": string(f"CONN#{connection_id}")}


def past_ttl(item: Item, now: float) -> bool:
    """An item DynamoDB will delete (it does so only eventually): reads skip it."""
    return "ttl" in item and int(item["ttl"]["N"]) <= now


def retry_key(user_id: str, client_msg_id: str) -> str:
    """A retry marker's sort key. `#` and `%` are percent-encoded in both parts, so that
    user `a#b` with key `c` and user `a` with key `b#c` are two markers, not one."""
    return f"DEDUP#{_escaped(user_id)}#{_escaped(client_msg_id)}"


def _escaped(part: str) -> str:
    return part.replace("%", "%25").replace("#", "%23")


def message_key(message_id: int) -> str:
    return f"MSG#{message_id:0{MESSAGE_ID_WIDTH}d}"


def live_items_query(
    table: str, room: str, sort_condition: str, values: Item, now: float
) -> dict[str, Any]:
    """A consistent Query of a room's partition that skips items past their TTL (DynamoDB
    deletes expired items only eventually)."""
    return {
        "TableName": table,
        "KeyConditionExpression": f"pk = :pk AND {sort_condition}",
        "FilterExpression": "#ttl > :now",
        "ExpressionAttributeNames": {"#ttl": "ttl"},
        "ExpressionAttributeValues": {
            ":pk": string(room_key(room)),
            ":now": number(int(now)),
            **values,
        },
        "ConsistentRead": True,
    }


def query_items(client: Any, **kwargs: Any) -> Iterator[Item]:
    """Every item of a Query, page by page."""
    for page in query_pages(client, **kwargs):
        yield from page.get("Items", [])


def query_pages(client: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every page of a Query."""
    while True:
        page: dict[str, Any] = client.query(**kwargs)
        yield page
        last = page.get("LastEvaluatedKey")
        if not last:
            return
        kwargs["ExclusiveStartKey"] = last
