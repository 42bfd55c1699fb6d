"""This worker's members in Redis, and the reaping of workers that died.

Every key is under one hash tag, a room's or a worker's, and every script and multi-key
command touches one tag only, so that each runs in one slot of a Redis Cluster
(docs/scaling.md, "Keys, slots and reaping"):

    wschat:{room}:members      hash: connection id -> the member's record (JSON: user_id,
                               user_name, dialect, worker, life)
    wschat:worker:{W}          a worker's heartbeat, with a TTL
    wschat:worker:{W}:conns    hash: connection id -> `<life>:<room>`, what W registered
    wschat:worker:{W}:life     W's life: bumped each time W finds itself reaped
    wschat:workers             set of worker ids, for discovery (a key of its own)

On a cluster a join is two steps, the worker's slot first (its conns entry), then the
room's (JOIN: the record, announced); a leave the other way round (REMOVE, announced; then
the conns entry goes). A worker killed between the steps leaves a conns entry without a
member, which a reaper clears, never a member no reaper can find. Each step is safe to
repeat. On one Redis a batch's PRESENCE call writes the conns entries itself, atomically.

A worker whose heartbeat lapses (killed with SIGKILL, say) is reaped by another, slot by
slot: the reaper claims its life in the worker's slot (CLAIM), removes, room by room, only
the members stamped with that worker and that life (REMOVE), then clears the conns entries
of that life (FORGET). A worker reaped while only cut off bumps its life before registering
its members again, so no reaper that claimed the old life can remove them.

A worker's own joins and leaves of a room are batched (group commit): those made while the
room's call is in flight go together in the next (PRESENCE), and its conns entries likewise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from handler.chat.ports import Connection, Dialect, User, distinct_users
from infra.redis.group_commit import GroupCommit
from infra.redis.history import (
    channel,
    log_key,
    members_key,
    new_epoch,
    retries_key,
    seq_key,
    text,
)
from infra.redis.pipelined_calls import PipelinedCalls, evalsha
from infra.redis.scripts import run_pipelined

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TTL = 15  # a worker silent this long is reaped: no ghost outlives 20 s
REAP_PAGE = 500  # a dead worker's members removed per few round trips
USERS_PAGE = 500  # a room's members read per round trip when listing its users
# A reaped worker's life number is kept this long after a claim: longer than any reaper
# that read it could still be at work, so a worker coming back never takes a life number
# again that a stale reaper holds. A live worker's is kept for good (`bump_life`).
LIFE_KEPT = 86_400

_Call = tuple[list[str], list[Any]]


# Each membership script announces the change it made, with the room's count, in the same
# step: so a join or leave is announced once, by whichever call made it (a retried call, a
# leave that races a reap, a stray's removal), and with the count it left. A presence head
# is the event's JSON without its count and closing brace (`_presence_head`).

# What a join and a leave do to a room, for JOIN, PRESENCE and REMOVE, which each announce
# what these did. ADD_MEMBER returns 1 if the member was not in the room already.
# TAKE_OUT takes a member out only if its record carries `worker` (and `life`; '' for any),
# so a reaper that claimed an old life never removes a member registered again since; it
# returns the leave's event with the count it left (the presence head built from the
# record: a reaper need not read records first), or nil. A room it leaves empty keeps its
# counter as long as its history, and keeps nothing if it has none: each join of a new name
# makes a counter (the epoch its welcome gives), and a handshake, which nothing rate-limits,
# would otherwise leave a key for the history's TTL.
ROOM_CHANGES = """
local function ADD_MEMBER(members, seq, log, retries, id, record, fresh)
  local added = redis.call('HSET', members, id, record)
  if redis.call('HSETNX', seq, 'epoch', fresh) == 1 then
    -- A room that starts over starts empty (as PUBLISH says): an old retry key would answer
    -- a retry with the new message that took its id.
    redis.call('DEL', log, retries)
  end
  redis.call('PERSIST', seq)  -- kept while the room has members
  return added
end
local function TAKE_OUT(members, seq, log, retries, ttl, room, id, worker, life)
  local raw = redis.call('HGET', members, id)
  if not raw then
    return nil
  end
  local record = cjson.decode(raw)
  if record.worker ~= worker or (life ~= '' and tostring(record.life) ~= life) then
    return nil
  end
  redis.call('HDEL', members, id)
  local count = redis.call('HLEN', members)
  if count == 0 then
    if redis.call('EXISTS', log) == 1 then
      redis.call('EXPIRE', seq, ttl)  -- the counter goes with the history
    else
      redis.call('DEL', seq, retries)  -- no history: the room starts over
    end
  end
  local head = cjson.encode({p = 'leave', c = {id = id, room = room,
    user_id = record.user_id, user_name = record.user_name, dialect = record.dialect}})
  return string.sub(head, 1, -2) .. ',"n":' .. count .. '}'
end
"""
# The room's slot. KEYS: the room's members, counter, stream, channel, retry keys. ARGV: the
# connection id, its record, an epoch should the room have none (as PUBLISH's), the join's
# presence head. Returns the room's epoch, and 1 if the member was not in the room already
# (then announced). A member already there gets its record again (a newer life): silently.
JOIN = (
    ROOM_CHANGES
    + """
local added = ADD_MEMBER(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], ARGV[2], ARGV[3])
if added == 1 then
  redis.call('SPUBLISH', KEYS[4], ARGV[4] .. redis.call('HLEN', KEYS[1]) .. '}')
end
return {redis.call('HGET', KEYS[2], 'epoch'), added}
"""
)
# The room's slot: this worker's joins and leaves of one room, batched (group commit: those
# made while the room's previous call was in flight), in order, each as JOIN or REMOVE would
# do it alone. KEYS: as JOIN's, and on one Redis (not a cluster, where it is another slot)
# the worker's conns: then each join's entry is written first and each leave's deleted
# last, in the same atomic step (no separate call). ARGV: the history's ttl, the room, an
# epoch should the room have none, the joins' conns entry, then per change four: `j`, the
# id, its record, its presence head; or `l`, the id, the worker, ''. One publication carries
# every change it made, each with the count it left (`{"ps": [...]}`). Returns per change the
# room's epoch (a join's), 1 if it changed anything (then announced), and a join's count.
PRESENCE = (
    ROOM_CHANGES
    + """
local members, seq, log, retries, conns = KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6]
local events, replies = {}, {}
for i = 5, #ARGV, 4 do
  local id = ARGV[i + 1]
  if ARGV[i] == 'j' then
    if conns then
      redis.call('HSET', conns, id, ARGV[4])
    end
    local added = ADD_MEMBER(members, seq, log, retries, id, ARGV[i + 2], ARGV[3])
    local count = redis.call('HLEN', members)
    if added == 1 then
      events[#events + 1] = ARGV[i + 3] .. count .. '}'
    end
    replies[#replies + 1] = {redis.call('HGET', seq, 'epoch'), added, count}
  else
    local event = TAKE_OUT(members, seq, log, retries, ARGV[1], ARGV[2], id, ARGV[i + 2], '')
    if event then
      events[#events + 1] = event
    end
    replies[#replies + 1] = {'', event and 1 or 0}
    if conns then
      redis.call('HDEL', conns, id)
    end
  end
end
if #events > 0 then
  redis.call('SPUBLISH', KEYS[4], '{"ps":[' .. table.concat(events, ',') .. ']}')
end
return replies
"""
)
# The room's slot: a worker's members of one room that are gone (ones leaving, a dead
# worker's, strays). KEYS: the room's members, counter, channel, stream, retry keys. ARGV:
# the history's ttl, the room, the worker, the life to remove ('' for any: the worker's own
# leaves), then connection ids. Returns how many it took out (each announced).
REMOVE = (
    ROOM_CHANGES
    + """
local left = 0
for i = 5, #ARGV do
  local event = TAKE_OUT(KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[i], ARGV[3],
    ARGV[4])
  if event then
    left = left + 1
    redis.call('SPUBLISH', KEYS[3], event)
  end
end
return left
"""
)
# The worker's slot: a reaper's claim on a dead worker. KEYS: its heartbeat, its life.
# ARGV: LIFE_KEPT. Returns nil if it beats (it is not dead), else the life to reap.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local life = redis.call('GET', KEYS[2])
if life then
  redis.call('EXPIRE', KEYS[2], ARGV[1])
  return life
end
return '0'
"""
# The worker's slot: the conns entries of one life, once their members are out of their
# rooms. KEYS: the worker's conns. ARGV: the life, then connection ids. An entry registered
# again meanwhile (another life) stays, so its member stays reapable.
FORGET = """
local prefix = ARGV[1] .. ':'
for i = 2, #ARGV do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value and string.sub(value, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 0
"""


def beat_key(worker: str) -> str:
    """A worker's heartbeat: gone once the worker stops beating for HEARTBEAT_TTL."""
    return f"wschat:worker:{{{worker}}}"


def conns_key(worker: str) -> str:
    """The connections a worker registered: id -> `<life>:<room>`."""
    return f"wschat:worker:{{{worker}}}:conns"


def life_key(worker: str) -> str:
    """A worker's life number, stamped on each member it registers."""
    return f"wschat:worker:{{{worker}}}:life"


WORKERS_KEY = "wschat:workers"


class Membership:
    """This worker's members as Redis holds them: registered, taken out, registered again
    after a reaper took them; its heartbeat; and the reaping of dead workers. `ttl` is the
    history's: how long a room left empty keeps its counter."""

    def __init__(
        self, redis: Any, worker: str, ttl: int, calls: PipelinedCalls, one_node: bool
    ) -> None:
        self.worker = worker
        # One Redis holds every key (not a cluster): a batch's conns entries are written by
        # its PRESENCE call, not in a call of their own.
        self.one_node = one_node
        self._redis = redis
        # The history's: a room's batch of joins and leaves, a count and the welcomes' reads
        # share round trips.
        self._calls = calls
        self._ttl = ttl
        self._life = 0  # set by `enlist` before any member is registered
        # Gone from here but maybe not from Redis (their removal failed): the heartbeat
        # removes them, or they would count in their rooms for as long as this worker lives.
        self._strays: dict[str, Connection] = {}
        # Each is one atomic round trip, in one slot.
        self._join = redis.register_script(JOIN)
        self._remove_script = redis.register_script(REMOVE)
        self._claim = redis.register_script(CLAIM)
        self._forget = redis.register_script(FORGET)
        self._presence_script = redis.register_script(PRESENCE)
        # REMOVE calls for several rooms, in one pipeline, and a room's batched joins and
        # leaves (seams the tests cut).
        self._remove: Callable[[list[_Call]], Awaitable[list[Any]]] = self._remove_rooms
        self._presence: Callable[[_Call], Awaitable[list[Any]]] = self._run_presence
        # Group commit, per room and for this worker's conns (infra/redis/group_commit.py);
        # a room's batch then goes with the worker's other calls (`calls`).
        self._rooms: dict[str, GroupCommit[tuple[str, Connection], list[Any]]] = {}
        self._conns: GroupCommit[tuple[str, str | None], None] = GroupCommit(self._write_conns)

    async def register(self, connection: Connection) -> tuple[str, int]:
        """The member in Redis: this worker's conns entry, then its room's record (which
        announces it), each step batched with the others made meanwhile. Returns the room's
        epoch and count, from the call that registered the member."""
        if not self.one_node:
            await self._conns.submit((connection.id, self._entry(connection.room)))
        epoch, _, count = await self._room_batch(connection.room).submit(("j", connection))
        return text(epoch), int(count)

    def _room_batch(self, room: str) -> GroupCommit[tuple[str, Connection], list[Any]]:
        batch = self._rooms.get(room)
        if batch is None:
            batch = GroupCommit(
                lambda changes: self._presence(self._presence_call(room, changes)),
                lambda: self._rooms.pop(room, None),
            )
            self._rooms[room] = batch
        return batch

    def _presence_call(self, room: str, changes: list[tuple[str, Connection]]) -> _Call:
        """PRESENCE's keys and arguments: `changes` (`j` or `l`, a member) to `room`."""
        keys = [members_key(room), seq_key(room), log_key(room), channel(room), retries_key(room)]
        if self.one_node:
            keys.append(conns_key(self.worker))
        args: list[Any] = [self._ttl, room, new_epoch(), self._entry(room)]
        for kind, member in changes:
            if kind == "j":
                args += ["j", member.id, self._record(member), _presence_head("join", member)]
            else:
                args += ["l", member.id, self.worker, ""]
        return keys, args

    async def _run_presence(self, call: _Call) -> list[Any]:
        keys, args = call
        script = self._presence_script
        replies: list[Any]
        (replies,) = await self._calls.with_script(script, [evalsha(script, keys, args)])
        return replies

    async def _write_conns(self, changes: list[tuple[str, str | None]]) -> list[None]:
        """This worker's conns entries: each id's last change (an entry, or None to delete
        it) in one HSET and one HDEL, in one round trip."""
        last = dict(changes)
        kept = {i: entry for i, entry in last.items() if entry is not None}
        gone = [i for i, entry in last.items() if entry is None]
        key = conns_key(self.worker)
        if kept and gone:
            pipe = self._redis.pipeline(transaction=False)  # one key: one slot
            pipe.hset(key, mapping=kept)
            pipe.hdel(key, *gone)
            await pipe.execute()
        elif kept:  # a plain command costs less CPU than a pipeline of one
            await self._redis.hset(key, mapping=kept)
        else:
            await self._redis.hdel(key, *gone)
        return [None] * len(changes)

    def _entry(self, room: str) -> str:
        """A member's conns entry: this worker's life, and its room."""
        return f"{self._life}:{room}"

    def _join_call(self, connection: Connection) -> _Call:
        """JOIN's keys and arguments for `connection`, under this worker's current life."""
        room = connection.room
        keys = [members_key(room), seq_key(room), log_key(room), channel(room), retries_key(room)]
        args = [
            connection.id,
            self._record(connection),
            new_epoch(),
            _presence_head("join", connection),
        ]
        return keys, args

    def _record(self, connection: Connection) -> str:
        """The member's record in its room's hash, under this worker's current life."""
        record = {
            "user_id": connection.user_id,
            "user_name": connection.user_name,
            "dialect": connection.dialect.value,
            "worker": self.worker,
            "life": self._life,
        }
        return json.dumps(record)

    async def leave(self, connection: Connection) -> None:
        """Take a member out of Redis, and announce its leave, unless a reaper did both
        already. If Redis cannot be told, the heartbeat tries again (`remove_strays`)."""
        try:
            await self._room_batch(connection.room).submit(("l", connection))
            if not self.one_node:
                await self._conns.submit((connection.id, None))
        except BaseException:
            self._strays[connection.id] = connection
            raise

    async def count(self, room: str) -> int:
        return int(await self._calls.run(lambda redis: redis.hlen(members_key(room))))

    async def users(self, room: str, limit: int) -> list[User]:
        """The room's distinct users, every worker's members: the room's hash read
        USERS_PAGE members at a time, until `limit` are found."""
        found: list[User] = []
        cursor = 0
        while True:
            cursor, records = await self._redis.hscan(members_key(room), cursor, count=USERS_PAGE)
            page = []
            for raw in records.values():
                record = json.loads(raw)
                page.append(User(record["user_id"], record["user_name"]))
            found = distinct_users([*found, *page], limit)
            if cursor == 0 or len(found) >= limit:
                return found

    # --- heartbeat and reaping ----------------------------------------------------------

    async def beat(self) -> None:
        await self._redis.set(beat_key(self.worker), "1", ex=HEARTBEAT_TTL)

    async def enlist(self) -> bool:
        """Put this worker on the list of workers; True if it was not on it (it is new, or
        was reaped): then it takes a new life, before it registers any member (again)."""
        if not await self._redis.sadd(WORKERS_KEY, self.worker):
            return False
        await self.bump_life()
        return True

    async def bump_life(self) -> None:
        """A new life for this worker: the members it registers from now on are out of
        reach of any reaper that claimed an older one. Kept for good while it lives (a
        claim gave the key a TTL)."""
        pipe = self._redis.pipeline(transaction=True)  # one key: one slot
        pipe.incr(life_key(self.worker))
        pipe.persist(life_key(self.worker))
        life, _ = await pipe.execute()
        self._life = int(life)

    async def withdraw(self) -> None:
        """This worker stops: its heartbeat goes, and its members with it."""
        await self._redis.delete(beat_key(self.worker))
        await self.reap(self.worker)  # our members are gone with us

    async def reap_the_dead(self) -> None:
        """Reap every listed worker whose heartbeat is gone."""
        workers = [raw.decode() for raw in await self._redis.smembers(WORKERS_KEY)]
        pipe = self._redis.pipeline(transaction=False)  # one key per command
        for worker in workers:
            pipe.exists(beat_key(worker))
        for worker, beating in zip(workers, await pipe.execute(), strict=True):
            if not beating:
                await self.reap(worker)

    async def reap(self, worker: str) -> None:
        """Remove a dead worker's members and tell their rooms they left; only the worker
        that takes it off the list does it, so each leave is announced once. Slot by slot:
        the claim of its life (CLAIM), then per REAP_PAGE members one REMOVE per room,
        pipelined, and the conns entries of that life (FORGET). One by one would outlast
        the reaper's own heartbeat TTL for a big worker, and get the reaper reaped in turn.
        A worker that beats again meanwhile keeps the members not yet removed, and registers
        the others again itself, under a new life."""
        if not await self._redis.srem(WORKERS_KEY, worker):
            return
        claimed = await self._claim(keys=[beat_key(worker), life_key(worker)], args=[LIFE_KEPT])
        if claimed is None:
            log.info("worker %s beats again; it keeps its members", worker)
            return
        life = text(claimed)
        entries = await self._redis.hgetall(conns_key(worker))
        ours = [
            (text(i), room)
            for i, value in entries.items()
            for entry_life, _, room in [text(value).partition(":")]
            if entry_life == life
        ]
        for start in range(0, len(ours), REAP_PAGE):
            page = ours[start : start + REAP_PAGE]
            if start and await self._redis.exists(beat_key(worker)):
                log.info("worker %s beats again; it keeps its members", worker)
                return
            rooms: dict[str, list[str]] = {}
            for connection_id, room in page:
                rooms.setdefault(room, []).append(connection_id)
            await self._remove(
                [self._remove_call(r, ids, worker, life) for r, ids in rooms.items()]
            )
            ids = [connection_id for connection_id, _ in page]
            await self._forget(keys=[conns_key(worker)], args=[life, *ids])
        if worker != self.worker:
            log.info("reaped worker %s (%d members), which stopped beating", worker, len(ours))

    def _remove_call(self, room: str, ids: Sequence[str], worker: str, life: str) -> _Call:
        """REMOVE's keys and arguments: `worker`'s `ids` in `room`, of `life` ('' any)."""
        keys = [members_key(room), seq_key(room), channel(room), log_key(room), retries_key(room)]
        return keys, [self._ttl, room, worker, life, *ids]

    async def _remove_rooms(self, calls: list[_Call]) -> list[Any]:
        """Run REMOVE `calls` (one per room) in one pipeline; how many each took out."""
        replies = await run_pipelined(self._redis, self._remove_script, calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _take_out(self, members: Sequence[Connection]) -> int:
        """Take this worker's `members` out of Redis: out of their rooms first (announcing
        the leave of each still there), then off this worker's conns. Returns how many were
        in their rooms."""
        rooms: dict[str, list[str]] = {}
        for member in members:
            rooms.setdefault(member.room, []).append(member.id)
        calls = [self._remove_call(room, ids, self.worker, "") for room, ids in rooms.items()]
        left = await self._remove(calls)
        await self._redis.hdel(conns_key(self.worker), *[member.id for member in members])
        return sum(int(n) for n in left)

    async def remove_strays(self) -> None:
        """Take out of Redis the members whose `leave` failed (announcing the leave of those
        still in their rooms)."""
        strays = list(self._strays.values())
        if not strays:
            return
        await self._take_out(strays)
        for member in strays:
            del self._strays[member.id]

    async def register_again(self, members: list[Connection], here: Callable[[str], bool]) -> None:
        """Register `members` in Redis again, under this worker's life (`enlist` took a new
        one): per REAP_PAGE members or so, their conns entries in one command, then their
        JOINs in one pipeline (which announce those that were not there: all but the ones a
        reaper had yet to reach, which take the new life silently). One by one, a big worker
        back from a long cut-off could take longer than its heartbeat's TTL, and be reaped
        again. `here` tells whether a member is still here."""
        for start in range(0, len(members), REAP_PAGE):
            # Only those still here when the pipeline is made: one that left since the
            # list was taken would be registered again, for good.
            page = [m for m in members[start : start + REAP_PAGE] if here(m.id)]
            if not page:
                continue
            entries = {member.id: self._entry(member.room) for member in page}
            await self._redis.hset(conns_key(self.worker), mapping=entries)
            answers = await run_pipelined(
                self._redis, self._join, [self._join_call(member) for member in page]
            )
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
            # One that left while the pipeline was on its way, its removal run before its JOIN,
            # is back in Redis: out again.
            gone = [
                member
                for member, (_, added) in zip(page, answers, strict=True)
                if added and not here(member.id)
            ]
            if gone:
                await self._take_out(gone)


def member_fields(connection: Connection) -> dict[str, str]:
    """A member as a room's channel carries it in presence and typing events (`member_from`
    reads it back)."""
    return {
        "id": connection.id,
        "room": connection.room,
        "user_id": connection.user_id,
        "user_name": connection.user_name,
        "dialect": connection.dialect.value,
    }


def member_from(fields: dict[str, str]) -> Connection:
    return Connection(
        id=fields["id"],
        room=fields["room"],
        user_id=fields["user_id"],
        user_name=fields["user_name"],
        dialect=Dialect(fields["dialect"]),
        echo="",
    )


def _presence_head(event: str, connection: Connection) -> str:
    """A presence event on a room's channel (`RoomSubscription._on_presence` reads it)
    without its count and closing brace, which the membership scripts add."""
    return json.dumps({"p": event, "c": member_fields(connection)})[:-1] + ', "n": '
