"""A room's history in Redis: one Stream per room, written by one atomic script.

Keys, all of a room under one hash tag (`{room}`), so a Redis Cluster keeps them together:

    wschat:{room}:seq       hash: `id` (the room's counter), `epoch` (its history's identity)
    wschat:{room}:members   hash: connection id -> member record, on every worker (membership.py)
    wschat:{room}:log       stream: entry `<id>-0` per message, fields `m` (the message's
                            JSON) and `s` (the sending connection's id, or "")
    wschat:{room}:retries   sorted set: `<user>:<client_msg_id>` of each message in the
                            stream that has one, scored with its id (a retry gets that one)
    wschat:{room}:call:<token>   the ids one script call gave the messages it stored, kept
                            120 s should redis-py send the call again
    channel wschat:{room}   where the script publishes new messages (sharded pub/sub)

In a key, `room` has `%`, `{`, `}` and `:` percent-encoded: a room name may hold any of them,
and unescaped, room `a}:x` would have its keys under room `a`'s hash tag, where one room's key
could spell another's. A retry key escapes `user` and `client_msg_id` the same way: user `a:b`
sending `c` is not user `a` sending `b:c`. (Workers before the retry sets, 2026-12-04, kept a
key per retry, `wschat:{room}:dedup:<user>:<client_msg_id>`, for 7 days whatever the cap;
nothing reads them now, and they expire.)

A publication runs one server-side script for one or more drafts of a room: for each it
honours `client_msg_id` (while the message that has it is in the stream, as in memory),
takes the room's next id and appends to the stream (capped at `size` entries, kept `ttl`
seconds); then it publishes the new messages, with their ids and the room's
epoch, as one payload. Nothing can come between those steps, on any worker, so ids
are consecutive and visible only with their message (handler/chat/ports.py, MessageLog).

The `epoch` is made when a room's counter is: if Redis loses the room (restarted without
persistence, flushed), the counter starts over under a new epoch, and a client resuming with
the old one is told its `since` could not be honoured (docs/welcome-seam.md). A room without
members keeps its counter as long as its history (`ttl` after the later of its last message
and its last leave), then starts over the same way: every room name anyone ever joined would
otherwise stay in Redis for good. Reading a room stores nothing: a room without a counter has
no history, and no epoch until its first message or member.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

from handler.chat.ports import ChatMessage, Draft
from infra.redis.group_commit import GroupCommit
from infra.redis.high_water import NO_MARK, HighWater, Mark
from infra.redis.pipelined_calls import Command, PipelinedCalls, evalsha
from infra.redis.scripts import run_pipelined

# Shared by the scripts that read a room's counter for a caller with a mark: if the counter
# is behind the mark under the same epoch, the room goes on under a new epoch,
# `fresh .. '+' .. counter`. Its stream and counter are kept: what the stream holds is what
# the failover kept, the same messages under the same ids, and is the new epoch's history;
# its next ids, which the lost writes had, are new ones under the new epoch, which every
# client that holds the old ones is told of (infra/redis/high_water.py, epoch_bounds).
# With the mark's `ts` (LATEST's callers), the id is also checked to be the same message:
# one that gets to a promoted replica first with no mark (a REST publication, say) takes
# the lost ids again, and may take the counter past the mark before a worker that holds it
# gets there; the message at the mark's id then has another time. (Not in PUBLISH, which
# is the hot path: every worker that holds a mark resubscribes after a failover, and its
# catch-up reads the counter with it.)
BEHIND = """
local function BEHIND(seq, log, known_epoch, known_id, known_ts, fresh)
  if known_epoch == '' then
    return
  end
  local now = redis.call('HMGET', seq, 'id', 'epoch')
  if now[2] ~= known_epoch then
    return
  end
  local counter = tonumber(now[1]) or 0
  local went_on = nil  -- '+': the stream is the old one up to the counter; '~': not known
  if counter < tonumber(known_id) then
    went_on = '+'
  elseif known_ts ~= '' then
    local entry = redis.call('XRANGE', log, known_id .. '-0', known_id .. '-0')[1]
    if entry ~= nil and cjson.decode(entry[2][2]).ts ~= tonumber(known_ts) then
      went_on = '~'
    end
  end
  if went_on then
    redis.call('HSET', seq, 'epoch', fresh .. went_on .. string.format('%d', counter))
  end
end
"""

# One room's drafts, in order. KEYS: seq hash, stream, channel, this call's key, members,
# retry keys. ARGV: epoch if new, stream cap, ttl seconds, the call's ttl seconds, the
# caller's mark (the epoch and highest id it has seen of the room: infra/redis/high_water.py),
# then for each draft: its retry key (its user and client_msg_id, or "" for none), the
# sending connection's id (or ""), and its message JSON without the id.
# Returns {epoch, {created, id, message} for each draft}.
# A counter behind the caller's mark under the mark's epoch is a Redis that lost writes (a
# failover to a replica that lacked them): the room goes on under a new epoch, above the
# mark (BEHIND), before any id is taken, so no id anyone saw is given again.
# A retry key is a member of the room's retry keys, scored with its message's id, for as long
# as that message is in the stream: ids are consecutive, so the `cap` newest are what the
# stream holds. So a room's retry keys are bounded by its history's cap, as its stream is.
# redis-py sends a pipeline again when its answer is late or its connection breaks, and by
# then the script may have run; run again, it would store every message twice. So a call
# that stored messages keeps the ids it gave them (0 for a draft it stored nothing for) under
# its own key for CALL_KEPT seconds, and a repeat answers those from there: a few bytes a
# draft, whatever the messages hold (the caller has their text). A retry's answer is not
# kept: the run that found it stored nothing for it, and its answer reached nobody, so a
# repeat looks again, as a first run would. It finds the message in the stream, or, if the
# message has left it meanwhile, stores the draft as a new one, as any retry of a message no
# longer in history is; the call keeps that id too. A call that stored nothing keeps no key.
# Ids are written with '%d': Lua's own number format turns 10^14 into `1e+14`.
PUBLISH = (
    BEHIND
    + """
local seq, log, channel, call, members, retries = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local ran = redis.call('GET', call)
local stored = ran and cjson.decode(ran) or {}  -- each draft's id, if this call stored it
local epoch = nil
local replies, bodies, senders, last = {false}, {}, {}, nil
local n = 0
for i = 7, #ARGV, 3 do
  n = n + 1
  local id = stored[n] or 0
  if id ~= 0 then  -- stored by this call when it ran before
    replies[#replies + 1] = {1, id, ''}
  else
    if not epoch then
      if redis.call('HSETNX', seq, 'epoch', ARGV[1]) == 1 then
        redis.call('DEL', log, retries)  -- a room that starts over starts empty
      else
        BEHIND(seq, log, ARGV[5], ARGV[6], '', ARGV[1])
      end
      epoch = redis.call('HGET', seq, 'epoch')
    end
    local key = ARGV[i]
    local before = key ~= '' and redis.call('ZSCORE', retries, key)
    local entry = nil
    if before then
      before = string.format('%d', before)
      entry = redis.call('XRANGE', log, before .. '-0', before .. '-0')[1]
    end
    if entry then  -- a retry of a message still in the stream: that message
      replies[#replies + 1] = {0, before, entry[2][2]}
    else
      last = redis.call('HINCRBY', seq, 'id', 1)
      id = string.format('%d', last)
      local body = string.sub(ARGV[i + 2], 1, -2) .. ',"id":' .. id .. '}'
      redis.call('XADD', log, 'MAXLEN', ARGV[2], id .. '-0', 'm', body, 's', ARGV[i + 1])
      if key ~= '' then
        redis.call('ZADD', retries, id, key)
      end
      replies[#replies + 1] = {1, id, body}
      bodies[#bodies + 1] = body
      senders[#senders + 1] = ARGV[i + 1]
    end
  end
  stored[n] = id
end
replies[1] = epoch or redis.call('HGET', seq, 'epoch')
if last then
  -- The messages the cap took out of the stream take their retry keys with them.
  redis.call('ZREMRANGEBYSCORE', retries, '-inf', string.format('%d', last - ARGV[2]))
  redis.call('EXPIRE', log, ARGV[3])
  redis.call('EXPIRE', retries, ARGV[3])
  if redis.call('HLEN', members) == 0 then
    redis.call('EXPIRE', seq, ARGV[3])  -- the counter goes with the history
  end
  -- One publication for the lot: each subscriber reads it once.
  redis.call('SPUBLISH', channel, '{"e":' .. cjson.encode(epoch) .. ',"s":' ..
    cjson.encode(senders) .. ',"m":[' .. table.concat(bodies, ',') .. ']}')
  redis.call('SET', call, cjson.encode(stored), 'EX', ARGV[4])
end
return replies
"""
)
CALL_KEPT = 120  # seconds: longer than redis-py's retries of one pipeline can take


# KEYS: seq hash, stream, retry keys. ARGV: an epoch should the room start over; the page
# to read after the head ("" for none, "-" for the last ARGV[3] messages, newest first, or
# the stream id to read ARGV[3] messages from); then the callers' marks (epoch, id, that
# message's ts or ""; "" for none): a worker's and a client's. Returns {latest id, epoch,
# the page's message bodies...}, or {0, nil} for a room without a counter: a read stores
# nothing (each name read would be a key kept for days), and the room's first publication
# or join makes its epoch. Only a counter behind a caller's mark is written to (BEHIND).
LATEST = (
    BEHIND
    + """
for i = 4, #ARGV, 3 do
  BEHIND(KEYS[1], KEYS[2], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[1])
end
local seq = redis.call('HMGET', KEYS[1], 'id', 'epoch')
if not seq[2] then
  redis.call('DEL', KEYS[2], KEYS[3])  -- a stream without its counter is an old history's
  return {0, false}
end
local reply = {tonumber(seq[1]) or 0, seq[2]}
local entries = {}
if ARGV[2] == '-' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
elseif ARGV[2] ~= '' then
  entries = redis.call('XRANGE', KEYS[2], ARGV[2], '+', 'COUNT', ARGV[3])
end
for _, entry in ipairs(entries) do
  reply[#reply + 1] = entry[2][2]  -- the message: its entry's first field, 'm'
end
return reply
"""
)


_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D", ":": "%3A"})


def _escaped(name: str) -> str:
    return name.translate(_ESCAPES)


def channel(room: str) -> str:
    return f"wschat:{{{_escaped(room)}}}"


def room_key(room: str, part: str) -> str:
    """One of the room's keys, under its hash tag."""
    return f"{channel(room)}:{part}"


def text(value: str | bytes) -> str:
    """A reply or channel name as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


# What `RedisHistory.latest` answers for a room without a counter: no id, and no epoch yet.
NO_HISTORY = (0, "")


def new_epoch() -> str:
    """An epoch for a room that has none: the scripts set it only if the room lacks one."""
    return secrets.token_hex(8)


def seq_key(room: str) -> str:
    """The room's counter and epoch."""
    return room_key(room, "seq")


def members_key(room: str) -> str:
    """The room's members, on every worker."""
    return room_key(room, "members")


def log_key(room: str) -> str:
    """The room's stream."""
    return room_key(room, "log")


def retries_key(room: str) -> str:
    """The retry keys (`client_msg_id`s) of the messages in the room's stream."""
    return room_key(room, "retries")


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
    if created:
        message = ChatMessage(
            int(message_id),
            draft.room,
            draft.user_id,
            draft.user_name,
            draft.text,
            ts,
            draft.client_msg_id,
        )
        return message, True
    return _message(body), False  # a retry: the message as first stored


def messages_of(fields: dict[str, Any]) -> tuple[str, list[tuple[ChatMessage, str | None]]]:
    """The epoch, and each message with its sending connection, of a payload the script
    published (decoded)."""
    if isinstance(fields["m"], dict):  # one message, as a worker before batching published
        return fields["e"], [(_from_fields(fields["m"]), fields["s"] or None)]
    messages = zip(fields["m"], fields["s"], strict=True)
    return fields["e"], [(_from_fields(message), sender or None) for message, sender in messages]


_Call = tuple[list[str], list[Any]]  # one run of the publish script: its keys and arguments
PUBLICATION_TEXT = 256 * 1024  # characters of message text per script call, about (_chunks)


class _Queued(NamedTuple):
    """One caller's drafts and their time, waiting for the next publication pipeline."""

    drafts: Sequence[Draft]
    ts: float


_Answer = list[tuple[ChatMessage, bool]]


class RedisHistory:
    """The message log on Redis, async (redis.asyncio). `size` caps each room's stream,
    `ttl` is how long a room's messages are kept after its latest."""

    def __init__(self, redis: Any, size: int, ttl: int) -> None:
        self._redis = redis
        self._size = size
        self.ttl = ttl
        # This worker's marks: each publication and catch-up holds Redis to them.
        self.high_water = HighWater()
        self._publish = redis.register_script(PUBLISH)
        self._latest = redis.register_script(LATEST)
        # The reads many welcomes make at once share round trips, with the joins and leaves
        # made meanwhile (infra/redis/pipelined_calls.py).
        self.calls = PipelinedCalls(redis)
        # Publications by group commit: those made while a pipeline of them is in flight go
        # together in the next (infra/redis/group_commit.py).
        self._publications: GroupCommit[_Queued, _Answer | Exception] = GroupCommit(self._send)

    async def append(self, draft: Draft, ts: float) -> tuple[ChatMessage, bool]:
        (stored,) = await self.append_many([draft], ts)
        return stored

    async def append_many(
        self, drafts: Sequence[Draft], ts: float
    ) -> list[tuple[ChatMessage, bool]]:
        """Publish `drafts` in order. What every socket hands over while a pipeline of
        publications is in flight goes to Redis together, in the next: one script run per
        room, in the order handed over (each socket waits for its answer before it sends
        more, so its order holds). Each run publishes its new messages as one payload, which
        each subscriber reads once."""
        answer = await self._publications.submit(_Queued(drafts, ts))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _send(self, queued: list[_Queued]) -> list[_Answer | Exception]:
        # The batch's drafts by room, in the order handed over; each as (caller, place).
        runs: dict[str, list[tuple[int, int]]] = {}
        for n, (drafts, _) in enumerate(queued):
            for place, draft in enumerate(drafts):
                runs.setdefault(draft.room, []).append((n, place))
        carried = [chunk for run in runs.values() for chunk in self._chunks(queued, run)]
        calls = [
            self._publication([(queued[n].drafts[place], queued[n].ts) for n, place in chunk])
            for chunk in carried
        ]
        # A node without the script runs none of its calls: they are sent again once it is
        # loaded (infra/redis/scripts.py). An error of the whole pipeline fails every caller.
        replies = await run_pipelined(self._redis, self._publish, calls)
        answers: list[list[Any]] = [[None] * len(drafts) for drafts, _ in queued]
        failed: dict[int, Exception] = {}
        for chunk, reply in zip(carried, replies, strict=True):
            if isinstance(reply, Exception):  # part may have run: the caller closes the socket
                failed.update(dict.fromkeys((n for n, _ in chunk), reply))
                continue
            epoch, *each = reply  # the epoch, then each draft's answer
            for (n, place), answer in zip(chunk, each, strict=True):
                drafts, ts = queued[n]
                stored = _stored(drafts[place], ts, answer)
                answers[n][place] = stored
                message, _ = stored
                self.high_water.saw(message.room, text(epoch), message.id, message.ts)
        return [failed.get(n, answer) for n, answer in enumerate(answers)]

    @staticmethod
    def _chunks(queued: list[_Queued], run: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """A room's run in script calls of at most PUBLICATION_TEXT characters of text (or one
        draft): each call is one publication, which Redis queues whole to every subscriber,
        and a subscriber whose queue passes its output-buffer limit (32 MB by default) is
        dropped, with every room it hears."""
        chunks: list[list[tuple[int, int]]] = [[]]
        size = 0
        for n, place in run:
            text = len(queued[n].drafts[place].text)
            if chunks[-1] and size + text > PUBLICATION_TEXT:
                chunks.append([])
                size = 0
            chunks[-1].append((n, place))
            size += text
        return chunks

    def _publication(self, run: Sequence[tuple[Draft, float]]) -> _Call:
        """The publish script's keys and arguments for `run`: drafts of one room, with their
        times."""
        room = run[0][0].room
        call = room_key(room, f"call:{secrets.token_hex(8)}")
        keys = [
            seq_key(room),
            log_key(room),
            channel(room),
            call,
            members_key(room),
            retries_key(room),
        ]
        args: list[Any] = [new_epoch(), self._size, self.ttl, CALL_KEPT]
        args += self.high_water.mark(room)[:2]  # no message check here (BEHIND)
        for draft, ts in run:
            fields: dict[str, Any] = {
                "room": room,
                "user_id": draft.user_id,
                "user_name": draft.user_name,
                "text": draft.text,
                "ts": ts,
            }
            retry = ""  # none
            if draft.client_msg_id is not None:
                fields["client_msg_id"] = draft.client_msg_id
                if draft.client_msg_id:  # `:` escaped: user `a:b` and key `c` are not `a`, `b:c`
                    retry = f"{_escaped(draft.user_id)}:{_escaped(draft.client_msg_id)}"
            args += [retry, draft.sender_id or "", json.dumps(fields)]
        return keys, args

    async def after(self, room: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        return [message for message, _ in await self.sent_after(room, after_id, limit)]

    async def sent_after(
        self, room: str, after_id: int, limit: int
    ) -> list[tuple[ChatMessage, str | None]]:
        """As `after`, with each message's sending connection: None for none (REST), or if
        a worker from before 2026-11-26 stored it. A catch-up must not send a text-dialect
        client's line back to it."""
        entries = await self.calls.run(
            lambda redis: redis.xrange(log_key(room), min=f"{after_id + 1}-0", max="+", count=limit)
        )
        return [(_message(entry[b"m"]), text(entry.get(b"s", b"")) or None) for _, entry in entries]

    async def recent(self, room: str, limit: int) -> Sequence[ChatMessage]:
        if limit <= 0:
            return []
        entries = await self.calls.run(lambda redis: redis.xrevrange(log_key(room), count=limit))
        return [_message(entry[b"m"]) for _, entry in reversed(entries)]

    async def before(self, room: str, before_id: int, limit: int) -> Sequence[ChatMessage]:
        if limit <= 0 or before_id <= 1:
            return []  # ids start at 1
        entries = await self.calls.run(
            lambda redis: redis.xrevrange(
                log_key(room), max=f"{before_id - 1}-0", min="-", count=limit
            )
        )
        return [_message(entry[b"m"]) for _, entry in reversed(entries)]

    async def latest(self, room: str, seen: Mark = NO_MARK) -> tuple[int, str]:
        """The room's latest id and its epoch; NO_HISTORY for a room that has no counter
        (none yet, or it expired or was lost), for which nothing is stored. Held to this
        worker's mark of the room and to `seen` (a client's): a counter behind either under
        its epoch starts the room over above it."""
        (head,) = await self.calls.with_script(self._latest, [self._latest_call(room, seen)])
        return self._head(room, head)

    async def opening(
        self, room: str, since: int | None, seen: Mark, limit: int
    ) -> tuple[int, str, list[ChatMessage]]:
        """`latest(room, seen)`, then the `limit` most recent messages, or with `since` the
        first `limit` after it: read by the same script call, in that order (the page as a
        command of its own, in the same pipeline, cost the worker 60 % more CPU a welcome:
        docs/performance.md, section 11)."""
        page = "" if limit <= 0 else "-" if since is None else f"{since + 1}-0"
        (reply,) = await self.calls.with_script(
            self._latest, [self._latest_call(room, seen, page, limit)]
        )
        latest, epoch = self._head(room, reply[:2])
        bodies = reply[2:] if since is not None else reply[:1:-1]  # oldest first
        return latest, epoch, [_message(body) for body in bodies]

    def _latest_call(self, room: str, seen: Mark, page: str = "", limit: int = 0) -> Command:
        keys = [seq_key(room), log_key(room), retries_key(room)]
        marks = [*self.high_water.mark(room), *seen]
        return evalsha(self._latest, keys, [new_epoch(), page, limit, *marks])

    def _head(self, room: str, reply: list[Any]) -> tuple[int, str]:
        latest, epoch = reply
        if epoch is None:
            return NO_HISTORY
        self.high_water.saw(room, text(epoch), int(latest))
        return int(latest), text(epoch)
