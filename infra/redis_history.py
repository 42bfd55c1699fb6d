"""A room's history in Redis: one Stream per room, written by one atomic script.

Keys, all of a room under one hash tag (`{room}`), so a Redis Cluster keeps them together:

    wschat:{room}:seq       hash: `id` (the room's counter), `epoch` (its history's identity)
    wschat:{room}:log       stream: entry `<id>-0` per message, field `m` (the message's JSON)
    wschat:{room}:dedup:<user>:<client_msg_id>   the id a retried send already got
    channel wschat:{room}   where the script publishes new messages (sharded pub/sub)

A publication runs one server-side script for one or more drafts of a room: for each it
honours `client_msg_id`, takes the room's next id and appends to the stream (capped at `size`
entries, kept `ttl` seconds); then it publishes the new messages, with their ids and the room's
epoch, as one payload. Nothing can come between those steps, on any worker, so ids
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
from itertools import groupby
from typing import Any

from redis.exceptions import NoScriptError

from handler.chat.ports import ChatMessage, Draft

# One room's drafts, in order. KEYS: seq hash, stream, channel, then the drafts' dedup keys.
# ARGV: epoch if new, stream cap, ttl seconds, dedup ttl seconds, the sending connection's id
# (or ""), then for each draft: the index of its dedup key among KEYS (0 for none) and its
# message JSON without the id. Returns {epoch, {created, id, message} for each draft}.
PUBLISH = """
local seq, log, channel = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HSETNX', seq, 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', log)  -- a room that starts over starts empty
end
local epoch = redis.call('HGET', seq, 'epoch')
local replies, bodies = {epoch}, {}
for i = 6, #ARGV, 2 do
  local dedup = ARGV[i] ~= '0' and KEYS[3 + tonumber(ARGV[i])]
  local before = dedup and redis.call('GET', dedup)
  if before then
    local entry = redis.call('XRANGE', log, before .. '-0', before .. '-0')
    replies[#replies + 1] = {0, tonumber(before), entry[1] and entry[1][2][2] or ''}
  else
    local id = redis.call('HINCRBY', seq, 'id', 1)
    local body = string.sub(ARGV[i + 1], 1, -2) .. ',"id":' .. id .. '}'
    redis.call('XADD', log, 'MAXLEN', ARGV[2], id .. '-0', 'm', body)
    if dedup then
      redis.call('SET', dedup, id, 'EX', ARGV[4])
    end
    replies[#replies + 1] = {1, id, body}
    bodies[#bodies + 1] = body
  end
end
if #bodies > 0 then
  redis.call('EXPIRE', log, ARGV[3])
  -- One publication for the lot: each subscriber reads it once.
  redis.call('SPUBLISH', channel, '{"e":' .. cjson.encode(epoch) .. ',"s":' ..
    cjson.encode(ARGV[5]) .. ',"m":[' .. table.concat(bodies, ',') .. ']}')
end
return replies
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
    created, message_id, body = reply
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


def messages_of(fields: dict[str, Any]) -> tuple[str, list[ChatMessage], str | None]:
    """The epoch, the messages and the sending connection of a payload the script published
    (decoded)."""
    return fields["e"], [_from_fields(message) for message in fields["m"]], fields["s"] or None


_Call = tuple[list[str], list[Any]]  # one run of the publish script: its keys and arguments
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
        # One script run per room and sender (a socket's drafts are all one run), so a batch
        # is one publication, which each subscriber reads once.
        runs = [list(run) for _, run in groupby(drafts, key=lambda d: (d.room, d.sender_id))]
        calls = [self._publication(run, ts) for run in runs]
        waiting = asyncio.get_running_loop().create_future()
        self._queued.append((calls, waiting))
        if len(self._queued) == 1:  # the first this turn: send once the others have queued
            asyncio.get_running_loop().call_soon(self._send_queued)
        replies: list[Any] = await waiting
        stored: list[tuple[ChatMessage, bool]] = []
        for run, reply in zip(runs, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply  # part ran: the caller closes the socket and its client resends
            _, *answers = reply  # the epoch, then each draft's answer
            stored += [_stored(d, ts, answer) for d, answer in zip(run, answers, strict=True)]
        return stored

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

    def _publication(self, run: Sequence[Draft], ts: float) -> _Call:
        """The publish script's keys and arguments for `run`, drafts of one room and sender."""
        room, sender_id = run[0].room, run[0].sender_id
        keys = [seq_key(room), _key(room, "log"), channel(room)]
        args: list[Any] = [new_epoch(), self._size, self._ttl, self._ttl, sender_id or ""]
        for draft in run:
            fields: dict[str, Any] = {
                "room": room,
                "user_id": draft.user_id,
                "user_name": draft.user_name,
                "text": draft.text,
                "ts": ts,
            }
            dedup = 0  # none
            if draft.client_msg_id is not None:
                fields["client_msg_id"] = draft.client_msg_id
                if draft.client_msg_id:
                    keys.append(_key(room, f"dedup:{draft.user_id}:{draft.client_msg_id}"))
                    dedup = len(keys) - 3  # its index among the dedup keys, from 1
            args += [dedup, json.dumps(fields)]
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
