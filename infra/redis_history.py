"""A room's history in Redis: one Stream per room, written by one atomic script.

Keys, all of a room under one hash tag (`{room}`), so a Redis Cluster keeps them together:

    wschat:{room}:seq       hash: `id` (the room's counter), `epoch` (its history's identity)
    wschat:{room}:log       stream: entry `<id>-0` per message, field `m` (the message's JSON)
    wschat:{room}:dedup:<user>:<client_msg_id>   the id a retried send already got
    channel wschat:{room}   where the script publishes each message (sharded pub/sub)

`publish` runs one server-side script: it honours `client_msg_id`, takes the room's next id,
appends to the stream (capped at `size` entries, kept `ttl` seconds), and publishes the message
with its id and the room's epoch. Nothing can come between those steps, on any worker, so ids
are consecutive and visible only with their message (handler/chat/ports.py, MessageLog).

The `epoch` is made when a room's counter is: if Redis loses the room (restarted without
persistence, flushed), the counter starts over under a new epoch, and a client resuming with
the old one is told its `since` could not be honoured (docs/welcome-seam.md).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from handler.chat.ports import ChatMessage

# KEYS: seq hash, stream, dedup key (or ""), channel. ARGV: epoch if new, message JSON without
# its id, stream cap, ttl seconds, dedup ttl seconds, the sending connection's id (or "").
# Returns {created, id, epoch, message}.
PUBLISH = """
local seq, log, dedup, channel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if dedup ~= '' then
  local before = redis.call('GET', dedup)
  if before then
    local entry = redis.call('XRANGE', log, before .. '-0', before .. '-0')
    local body = entry[1] and entry[1][2][2] or ''
    return {0, tonumber(before), redis.call('HGET', seq, 'epoch') or '', body}
  end
end
if redis.call('HSETNX', seq, 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', log)  -- a room that starts over starts empty
end
local epoch = redis.call('HGET', seq, 'epoch')
local id = redis.call('HINCRBY', seq, 'id', 1)
local body = string.sub(ARGV[2], 1, -2) .. ',"id":' .. id .. '}'
redis.call('XADD', log, 'MAXLEN', ARGV[3], id .. '-0', 'm', body)
redis.call('EXPIRE', log, ARGV[4])
if dedup ~= '' then
  redis.call('SET', dedup, id, 'EX', ARGV[5])
end
redis.call('SPUBLISH', channel,
  '{"e":' .. cjson.encode(epoch) .. ',"s":' .. cjson.encode(ARGV[6]) .. ',"m":' .. body .. '}')
return {1, id, epoch, body}
"""


# KEYS: seq hash. ARGV: an epoch, should the room have none. Returns {latest id, epoch}.
LATEST = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local seq = redis.call('HMGET', KEYS[1], 'id', 'epoch')
return {tonumber(seq[1]) or 0, seq[2]}
"""


def channel(room: str) -> str:
    return f"wschat:{{{room}}}"


def _key(room: str, part: str) -> str:
    return f"wschat:{{{room}}}:{part}"


def _message(body: str | bytes) -> ChatMessage:
    return _from_fields(json.loads(body))


def _from_fields(fields: dict[str, Any]) -> ChatMessage:
    return ChatMessage(
        id=int(fields["id"]),
        room=fields["room"],
        user_id=fields["user_id"],
        user_name=fields["user_name"],
        text=fields["text"],
        ts=float(fields["ts"]),
        client_msg_id=fields.get("client_msg_id"),
    )


def message_of(fields: dict[str, Any]) -> tuple[str, ChatMessage, str | None]:
    """The epoch, the message and the sending connection of a payload the script published
    (decoded)."""
    return fields["e"], _from_fields(fields["m"]), fields["s"] or None


class RedisHistory:
    """The message log on Redis, async (redis.asyncio). `size` caps each room's stream,
    `ttl` is how long a room's messages are kept after its latest."""

    def __init__(self, redis: Any, size: int, ttl: int) -> None:
        self._redis = redis
        self._size = size
        self._ttl = ttl
        self._publish = redis.register_script(PUBLISH)
        self._latest = redis.register_script(LATEST)

    async def append(
        self,
        *,
        room: str,
        user_id: str,
        user_name: str,
        text: str,
        client_msg_id: str | None,
        ts: float,
        sender_id: str | None = None,
    ) -> tuple[ChatMessage, bool]:
        fields: dict[str, Any] = {
            "room": room,
            "user_id": user_id,
            "user_name": user_name,
            "text": text,
            "ts": ts,
        }
        if client_msg_id is not None:
            fields["client_msg_id"] = client_msg_id
        dedup = _key(room, f"dedup:{user_id}:{client_msg_id}") if client_msg_id else ""
        created, message_id, _, body = await self._publish(
            keys=[_key(room, "seq"), _key(room, "log"), dedup, channel(room)],
            args=[
                secrets.token_hex(8),
                json.dumps(fields),
                self._size,
                self._ttl,
                self._ttl,
                sender_id or "",
            ],
        )
        if created or not body:  # new; or a retry of one that has left the stream: its id
            message = ChatMessage(
                int(message_id), room, user_id, user_name, text, ts, client_msg_id
            )
            return message, bool(created)
        return _message(body), False  # a retry: the message as first stored

    async def after(self, room: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        entries = await self._redis.xrange(
            _key(room, "log"), min=f"{after_id + 1}-0", max="+", count=limit
        )
        return [_message(entry[b"m"]) for _, entry in entries]

    async def recent(self, room: str, limit: int) -> Sequence[ChatMessage]:
        if limit <= 0:
            return []
        entries = await self._redis.xrevrange(_key(room, "log"), count=limit)
        return [_message(entry[b"m"]) for _, entry in reversed(entries)]

    async def latest(self, room: str) -> tuple[int, str]:
        """The room's latest id and its epoch, which a room gets the first time it is read."""
        latest, epoch = await self._latest(keys=[_key(room, "seq")], args=[secrets.token_hex(8)])
        return int(latest), epoch.decode() if isinstance(epoch, bytes) else str(epoch)
