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

import asyncio
import json
import secrets
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from handler.chat.ports import ChatMessage, Draft

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


def new_epoch() -> str:
    """An epoch for a room that has none: the scripts set it only if the room lacks one."""
    return secrets.token_hex(8)


def seq_key(room: str) -> str:
    """The room's counter and epoch."""
    return _key(room, "seq")


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


def _stored(draft: Draft, ts: float, reply: list[Any]) -> tuple[ChatMessage, bool]:
    """What the publish script's `reply` says became of `draft`."""
    created, message_id, _, body = reply
    if created or not body:  # new; or a retry of one that has left the stream: its id
        message = ChatMessage(
            int(message_id),
            draft.room,
            draft.user_id,
            draft.user_name,
            draft.text,
            ts,
            draft.client_msg_id,
        )
        return message, bool(created)
    return _message(body), False  # a retry: the message as first stored


def message_of(fields: dict[str, Any]) -> tuple[str, ChatMessage, str | None]:
    """The epoch, the message and the sending connection of a payload the script published
    (decoded)."""
    return fields["e"], _from_fields(fields["m"]), fields["s"] or None


_Call = tuple[list[str], list[Any]]  # the publish script's keys and arguments
_Queued = tuple[list[_Call], "asyncio.Future[list[Any]]"]  # one caller's, and its answer


class RedisHistory:
    """The message log on Redis, async (redis.asyncio). `size` caps each room's stream,
    `ttl` is how long a room's messages are kept after its latest."""

    def __init__(self, redis: Any, size: int, ttl: int) -> None:
        self._redis = redis
        self._size = size
        self._ttl = ttl
        self._publish = redis.register_script(PUBLISH)
        self._latest = redis.register_script(LATEST)
        self._queued: list[_Queued] = []  # publications waiting for this turn's pipeline
        self._sending: set[asyncio.Task[None]] = set()

    async def append(self, draft: Draft, ts: float) -> tuple[ChatMessage, bool]:
        (stored,) = await self.append_many([draft], ts)
        return stored

    async def append_many(
        self, drafts: Sequence[Draft], ts: float
    ) -> list[tuple[ChatMessage, bool]]:
        """Publish `drafts` in order: a pipeline of script calls on one connection, which
        Redis runs one after another, so their ids follow their order. Drafts that other
        sockets hand over in the same turn of the event loop join the same pipeline (each
        socket waits for its own before sending more, so its order holds)."""
        calls = [self._publication(draft, ts) for draft in drafts]
        waiting = asyncio.get_running_loop().create_future()
        self._queued.append((calls, waiting))
        if len(self._queued) == 1:  # the first this turn: send once the others have queued
            asyncio.get_running_loop().call_soon(self._send_queued)
        replies: list[Any] = await waiting
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply  # part ran: the caller closes the socket and its client resends
        return [_stored(draft, ts, reply) for draft, reply in zip(drafts, replies, strict=True)]

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._send(queued))
        self._sending.add(task)  # a reference, so the task is not collected half-way
        task.add_done_callback(self._sending.discard)

    async def _send(self, queued: list[_Queued]) -> None:
        calls = [call for batch, _ in queued for call in batch]
        try:
            replies = await self._pipeline(calls)
            if all(isinstance(reply, NoScriptError) for reply in replies):
                # Redis lost its scripts (restarted, or SCRIPT FLUSH): nothing ran, so load
                # the script and send them again.
                await self._redis.script_load(PUBLISH)
                replies = await self._pipeline(calls)
        except Exception as error:
            for _, waiting in queued:
                if not waiting.done():  # its caller may have given up (CALL_TIMEOUT)
                    waiting.set_exception(error)
            return
        start = 0
        for batch, waiting in queued:
            if not waiting.done():
                waiting.set_result(replies[start : start + len(batch)])
            start += len(batch)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        # Not `Script` objects in the pipeline: redis-py then asks SCRIPT EXISTS first, one
        # more round trip for every batch.
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._publish.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    def _publication(self, draft: Draft, ts: float) -> _Call:
        """The publish script's keys and arguments for `draft`."""
        fields: dict[str, Any] = {
            "room": draft.room,
            "user_id": draft.user_id,
            "user_name": draft.user_name,
            "text": draft.text,
            "ts": ts,
        }
        room, client_msg_id = draft.room, draft.client_msg_id
        if client_msg_id is not None:
            fields["client_msg_id"] = client_msg_id
        dedup = _key(room, f"dedup:{draft.user_id}:{client_msg_id}") if client_msg_id else ""
        keys = [seq_key(room), _key(room, "log"), dedup, channel(room)]
        args = [
            new_epoch(),
            json.dumps(fields),
            self._size,
            self._ttl,
            self._ttl,
            draft.sender_id or "",
        ]
        return keys, args

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
        latest, epoch = await self._latest(keys=[seq_key(room)], args=[new_epoch()])
        return int(latest), epoch.decode() if isinstance(epoch, bytes) else str(epoch)
