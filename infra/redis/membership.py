"""This worker's members in Redis, and the reaping of workers that died.

Each member is registered in Redis under its worker's id, by one atomic script (JOIN) that
also announces its join; another (REMOVE) takes members out and announces their leave. A
worker refreshes its heartbeat every HEARTBEAT_SECONDS; one whose heartbeat lapses (killed
with SIGKILL, say) is reaped by another: its members are removed and their rooms told they
left. A worker reaped while only cut off registers its members again.

Redis keys besides a room's history: `wschat:{room}:members` (set of connection ids),
`wschat:conn:<id>` (hash: room, user, dialect, worker), `wschat:workers` (set of worker ids),
`wschat:worker:<id>` (heartbeat, with a TTL) and `wschat:worker:<id>:conns` (set).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from handler.chat.ports import Connection, Dialect, User, distinct_users
from infra.redis.history import (
    channel,
    log_key,
    members_key,
    new_epoch,
    retries_key,
    seq_key,
    text,
)

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TTL = 15  # a worker silent this long is reaped: no ghost outlives 20 s
REAP_PAGE = 500  # a dead worker's members removed per few round trips
USERS_PAGE = 500  # a room's member ids read per round trip when listing its users


# Each membership script announces the change it made, with the room's count, in the same
# step: so a join or leave is announced once, by whichever call made it (a retried call, a
# leave that races a reap, a stray's removal), and with the count it left. A presence head
# is the event's JSON without its count and closing brace (`_presence_head`).

# KEYS: connection hash, room members, worker's connections, the room's counter, its stream,
# its channel, its retry keys. ARGV: id, room, user id, name, dialect, worker, an epoch should
# the room have none (as PUBLISH's), the join's presence head. Returns the room's epoch, and
# 1 if the member was not in the room already (then announced).
JOIN = """
redis.call('HSET', KEYS[1], 'room', ARGV[2], 'user_id', ARGV[3], 'user_name', ARGV[4],
  'dialect', ARGV[5], 'worker', ARGV[6])
local added = redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
if redis.call('HSETNX', KEYS[4], 'epoch', ARGV[7]) == 1 then
  -- A room that starts over starts empty (as PUBLISH says): an old retry key would answer
  -- a retry with the new message that took its id.
  redis.call('DEL', KEYS[5], KEYS[7])
end
redis.call('PERSIST', KEYS[4])  -- kept while the room has members
if added == 1 then
  redis.call('SPUBLISH', KEYS[6], ARGV[8] .. redis.call('SCARD', KEYS[2]) .. '}')
end
return {redis.call('HGET', KEYS[4], 'epoch'), added}
"""
# A worker's members that are gone: ones leaving, a dead worker's, strays. KEYS: the
# worker's heartbeat, its connections, then for each member its hash, its room's members,
# counter, channel, stream and retry keys (the hash again for all five, for a member whose
# hash is gone). ARGV: 1 to stop if the worker beats again, the history's ttl, then for each
# member its id and its leave's presence head. Returns how many it took out of their rooms
# (each announced), or nil if the worker beats: then it came back, and registers its members
# again itself.
# A room it leaves empty keeps its counter as long as its history, and keeps nothing if it
# has none: each join of a new name makes a counter (the epoch its welcome gives), and a
# handshake, which nothing rate-limits, would otherwise leave a key for the history's TTL.
REMOVE = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local left = 0
for i = 3, #ARGV, 2 do
  local at = 3 * i - 6
  local id, members, seq, channel = ARGV[i], KEYS[at + 1], KEYS[at + 2], KEYS[at + 3]
  redis.call('DEL', KEYS[at])
  redis.call('SREM', KEYS[2], id)
  if redis.call('SREM', members, id) == 1 then
    left = left + 1
    local count = redis.call('SCARD', members)
    if count == 0 then
      if redis.call('EXISTS', KEYS[at + 4]) == 1 then
        redis.call('EXPIRE', seq, ARGV[2])  -- the counter goes with the history
      else
        redis.call('DEL', seq, KEYS[at + 5])  -- no history: the room starts over
      end
    end
    redis.call('SPUBLISH', channel, ARGV[i + 1] .. count .. '}')
  end
end
return left
"""


def conn_key(connection_id: str) -> str:
    return f"wschat:conn:{connection_id}"


def beat_key(worker: str) -> str:
    """A worker's heartbeat: gone once the worker stops beating for HEARTBEAT_TTL."""
    return f"wschat:worker:{worker}"


def conns_key(worker: str) -> str:
    """The connection ids a worker registered."""
    return f"wschat:worker:{worker}:conns"


class Membership:
    """This worker's members as Redis holds them: registered, taken out, registered again
    after a reaper took them; its heartbeat; and the reaping of dead workers. `ttl` is the
    history's: how long a room left empty keeps its counter."""

    def __init__(self, redis: Any, worker: str, ttl: int) -> None:
        self.worker = worker
        self._redis = redis
        self._ttl = ttl
        # Gone from here but maybe not from Redis (their removal failed): the heartbeat
        # removes them, or they would count in their rooms for as long as this worker lives.
        self._strays: dict[str, Connection] = {}
        # Each is one atomic round trip.
        self._join = redis.register_script(JOIN)
        self._remove = redis.register_script(REMOVE)

    async def register(self, connection: Connection) -> str:
        """The member in Redis: its hash, its room's set and this worker's set. Returns the
        room's epoch."""
        keys, args = self._join_call(connection)
        epoch, _ = await self._join(keys=keys, args=args)
        return text(epoch)

    def _join_call(self, connection: Connection) -> tuple[list[str], list[str]]:
        """JOIN's keys and arguments for `connection`."""
        keys = [
            conn_key(connection.id),
            members_key(connection.room),
            conns_key(self.worker),
            seq_key(connection.room),
            log_key(connection.room),
            channel(connection.room),
            retries_key(connection.room),
        ]
        args = [
            connection.id,
            connection.room,
            connection.user_id,
            connection.user_name,
            connection.dialect.value,
            self.worker,
            new_epoch(),
            _presence_head("join", connection),
        ]
        return keys, args

    async def leave(self, connection: Connection) -> None:
        """Take a member out of Redis, and announce its leave, unless a reaper did both
        already. If Redis cannot be told, the heartbeat tries again (`remove_strays`)."""
        try:
            await self._take_out(self.worker, [connection.id], [connection], beating_stops=False)
        except BaseException:
            self._strays[connection.id] = connection
            raise

    async def count(self, room: str) -> int:
        return int(await self._redis.scard(members_key(room)))

    async def users(self, room: str, limit: int) -> list[User]:
        """The room's distinct users, every worker's members: the room's set read USERS_PAGE
        ids at a time, each page's hashes in one round trip, until `limit` are found."""
        found: list[User] = []
        cursor = 0
        while True:
            cursor, ids = await self._redis.sscan(members_key(room), cursor, count=USERS_PAGE)
            pipe = self._redis.pipeline(transaction=False)
            for connection_id in ids:
                pipe.hmget(conn_key(text(connection_id)), "user_id", "user_name")
            page = [User(text(i), text(n)) for i, n in await pipe.execute() if i is not None]
            found = distinct_users([*found, *page], limit)
            if cursor == 0 or len(found) >= limit:
                return found

    # --- heartbeat and reaping ----------------------------------------------------------

    async def beat(self) -> None:
        await self._redis.set(beat_key(self.worker), "1", ex=HEARTBEAT_TTL)

    async def enlist(self) -> bool:
        """Put this worker on the list of workers; True if it was not on it."""
        return bool(await self._redis.sadd("wschat:workers", self.worker))

    async def withdraw(self) -> None:
        """This worker stops: its heartbeat goes, and its members with it."""
        await self._redis.delete(beat_key(self.worker))
        await self.reap(self.worker)  # our members are gone with us

    async def reap_the_dead(self) -> None:
        """Reap every listed worker whose heartbeat is gone."""
        workers = [raw.decode() for raw in await self._redis.smembers("wschat:workers")]
        pipe = self._redis.pipeline(transaction=False)
        for worker in workers:
            pipe.exists(beat_key(worker))
        for worker, beating in zip(workers, await pipe.execute(), strict=True):
            if not beating:
                await self.reap(worker)

    async def reap(self, worker: str) -> None:
        """Remove a dead worker's members and tell their rooms they left; only the worker
        that takes it off the list does it, so each leave is announced once. Four round
        trips per REAP_PAGE members: one per member would outlast the reaper's own heartbeat
        TTL for a big worker, and get the reaper reaped in turn. A worker that beats again
        meanwhile (it was only cut off) keeps the members not yet removed, and registers the
        others again itself."""
        if not await self._redis.srem("wschat:workers", worker):
            return
        ids = [raw.decode() for raw in await self._redis.smembers(conns_key(worker))]
        for start in range(0, len(ids), REAP_PAGE):
            page = ids[start : start + REAP_PAGE]
            pipe = self._redis.pipeline(transaction=False)
            for connection_id in page:
                pipe.hgetall(conn_key(connection_id))
            records = await pipe.execute()
            found = [_member_of(i, fields) for i, fields in zip(page, records, strict=True)]
            if await self._take_out(worker, page, found, beating_stops=True) is None:
                log.info("worker %s beats again; it keeps its members", worker)
                return
        if worker != self.worker:
            log.info("reaped worker %s (%d members), which stopped beating", worker, len(ids))

    async def _take_out(
        self,
        worker: str,
        ids: Sequence[str],
        members: Sequence[Connection | None],
        beating_stops: bool,
    ) -> int | None:
        """Take `worker`'s `ids` out of Redis in one step, announcing the leave of each still
        in its room (`members` are what their hashes held, if anything). Returns how many
        were; None if `worker` beats again and `beating_stops`."""
        keys = [beat_key(worker), conns_key(worker)]
        args: list[Any] = ["1" if beating_stops else "0", self._ttl]
        for connection_id, member in zip(ids, members, strict=True):
            hash_key = conn_key(connection_id)
            if member is None:  # no hash, no room: REMOVE deletes the hash first, and finds
                keys += [hash_key] * 6  # nothing there to remove or announce
                args += [connection_id, ""]
            else:
                room = member.room
                keys += [hash_key, members_key(room), seq_key(room), channel(room)]
                keys += [log_key(room), retries_key(room)]
                args += [connection_id, _presence_head("leave", member)]
        left = await self._remove(keys=keys, args=args)
        return None if left is None else int(left)

    async def remove_strays(self) -> None:
        """Take out of Redis the members whose `leave` failed (announcing the leave of those
        still in their rooms)."""
        strays = list(self._strays.values())
        if not strays:
            return
        ids = [member.id for member in strays]
        await self._take_out(self.worker, ids, strays, beating_stops=False)
        for connection_id in ids:
            del self._strays[connection_id]

    async def register_again(self, members: list[Connection], here: Callable[[str], bool]) -> None:
        """Register `members` in Redis again (JOIN announces those that were not there: all
        but the ones a reaper had yet to reach), in two round trips per REAP_PAGE members or
        so. One by one, a big worker back from a long cut-off could take longer than its
        heartbeat's TTL, and be reaped again. `here` tells whether a member is still here."""
        for start in range(0, len(members), REAP_PAGE):
            # Only those still here when the pipeline is made: one that left since the
            # list was taken would be registered again, for good.
            page = [m for m in members[start : start + REAP_PAGE] if here(m.id)]
            pipe = self._redis.pipeline(transaction=False)
            for member in page:
                keys, args = self._join_call(member)
                await self._join(keys=keys, args=args, client=pipe)
            answers = await pipe.execute()
            # One that left while the pipeline was on its way, its removal run before its JOIN,
            # is back in Redis: out again.
            gone = [
                member
                for member, (_, added) in zip(page, answers, strict=True)
                if added and not here(member.id)
            ]
            if gone:
                ids = [member.id for member in gone]
                await self._take_out(self.worker, ids, gone, beating_stops=False)


def _member_of(connection_id: str, fields: dict[bytes, bytes]) -> Connection | None:
    """A member as its `wschat:conn:` hash holds it (None for no hash)."""
    if not fields:
        return None
    return Connection(
        id=connection_id,
        room=fields[b"room"].decode(),
        user_id=fields[b"user_id"].decode(),
        user_name=fields[b"user_name"].decode(),
        dialect=Dialect(fields[b"dialect"].decode()),
        echo="",
    )


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
