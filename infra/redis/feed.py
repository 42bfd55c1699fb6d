"""One worker's share of the rooms, when `wschat serve` runs on Redis (`WSCHAT_REDIS_URL`).

Every worker (a process of `wschat serve --workers N`, on any host) holds its own sockets and
keeps, on its event loop:

- **its members**, by id and by room, with each JSON connection's welcome gate;
- **a subscription per room it has members in**, on the room's sharded pub/sub channel, where
  the publish script (infra/redis/history.py) puts every message and presence event. It
  delivers each to its own members through the core's fan-out, in id order: it remembers the
  last id it delivered per room, and fills a gap (a message lost while the link was down) from
  the room's stream before it delivers anything newer;
- **a canary**: every second it publishes to a channel of its own; a canary unseen for 5 s
  means the subscription went deaf, and it resubscribes and catches up from the streams;
- **a heartbeat**: its members are registered in Redis under its id, which it refreshes every
  few seconds. A worker whose heartbeat lapses (killed with SIGKILL, say) is reaped by
  another: its members are removed and their rooms told they left.

Redis keys besides a room's history: `wschat:{room}:members` (set of connection ids),
`wschat:conn:<id>` (hash: room, user, dialect, worker), `wschat:workers` (set of worker ids),
`wschat:worker:<id>` (heartbeat, with a TTL) and `wschat:worker:<id>:conns` (set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff

from handler.chat.core import ChatCore
from handler.chat.ports import ChatMessage, Connection, Dialect, keep_presence
from handler.chat.wire import CloseCode
from infra.redis.history import (
    RedisHistory,
    channel,
    log_key,
    members_key,
    messages_of,
    new_epoch,
    retries_key,
    seq_key,
    text,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TTL = 15  # a worker silent this long is reaped: no ghost outlives 20 s
CANARY_SECONDS = 1.0
DEAF_AFTER = 5.0  # a canary unseen this long: resubscribe and catch up
CATCH_UP_PAGE = 500
REAP_PAGE = 500  # a dead worker's members removed per few round trips


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


class RedisLink:
    """Whether this worker reaches Redis: lost at the first failure of any call to it, found
    again when a call succeeds. Each connection's retry policy (`retry`) reports a failure
    before retrying the call: redis-py retries a call on a dead link for seconds, and the
    subscription's reconnects for longer, so health said `linked` for 5 s after Redis died
    (until the canary's silence told). The canary stays, for a link that fails silently."""

    def __init__(self) -> None:
        self.up = False

    def __deepcopy__(self, memo: dict[int, Any]) -> RedisLink:
        return self  # each connection copies its pool's retry policy: all report here

    def retry(self, backoff: AbstractBackoff, retries: int) -> Retry:
        """redis-py's retry policy, reporting each failure here first."""
        return _ReportingRetry(self, backoff, retries)


class _ReportingRetry(Retry):
    def __init__(self, link: RedisLink, backoff: AbstractBackoff, retries: int) -> None:
        super().__init__(backoff, retries)
        self._link = link

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        async def reported(error: Exception, *count: int) -> Any:
            self._link.up = False
            return await fail(error, *count)

        return await super().call_with_retry(do, reported, is_retryable, with_failure_count)


class _Subscription(PubSub):
    """redis-py reconnects a lost subscription by itself and subscribes again, but what was
    published in between never arrives, and the canary soon flies again: nothing would catch
    up until the room's next message showed the gap. This one tells the feed instead."""

    def __init__(self, redis: Any, reconnected: Callable[[], None]) -> None:
        super().__init__(redis.connection_pool)
        self._reconnected = reconnected

    async def on_connect(self, connection: Any) -> None:
        await super().on_connect(connection)  # redis-py calls this on reconnects only
        self._reconnected()


def conn_key(connection_id: str) -> str:
    return f"wschat:conn:{connection_id}"


def beat_key(worker: str) -> str:
    """A worker's heartbeat: gone once the worker stops beating for HEARTBEAT_TTL."""
    return f"wschat:worker:{worker}"


def conns_key(worker: str) -> str:
    """The connection ids a worker registered."""
    return f"wschat:worker:{worker}:conns"


@dataclass
class _Room:
    members: dict[str, Connection]
    delivered: int = 0  # the last id delivered here (or known to be old when subscribing)
    epoch: str = ""  # "" while the room has had no history since this worker subscribed
    # Set once subscribed and `delivered` read. The room is registered before that, so that
    # a renewal or an idle sweep meanwhile sees it; until then nothing is delivered to it.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False  # the subscription could not be made: its joiners fail too


class RoomFeed:
    """This worker's members and subscriptions, all on the event loop's thread (the core
    reaches them from a greenlet there: handler/local/greenbridge.py). A plain method runs without
    interruption, so members, gates and `delivered` change atomically."""

    def __init__(
        self,
        redis: Any,
        history: RedisHistory,
        link: RedisLink,
        lag: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        """`link` is what `redis`'s connections report their failures to (RedisLink.retry);
        `lag` is told, for each message that arrives live, how long after its publication it
        reached this worker. The core it delivers through registers itself (`serve`)."""
        self.worker = secrets.token_hex(6)
        self._redis = redis
        self._link = link
        self._history = history
        self._served: ChatCore | None = None
        self._lag = lag
        self._connections: dict[str, Connection] = {}
        self._deferred: dict[str, list[str]] = {}  # presence for members not yet welcomed
        # Gone from here but maybe not from Redis (their removal failed): the heartbeat
        # removes them, or they would count in their rooms for as long as this worker lives.
        self._strays: dict[str, Connection] = {}
        self._rooms: dict[str, _Room] = {}
        self._pubsub: Any = None
        # Held by whatever changes the subscription. A fresh PubSub fetches its connection on
        # its first call: two first calls at once (a renewal's and a join's) would fetch two
        # and keep one, losing the other from the pool for good.
        self._subscribing = asyncio.Lock()
        self._renew = asyncio.Event()  # set by the canary's watcher, for the listener
        self._canary_seen = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        # Each is one atomic round trip.
        self._join = redis.register_script(JOIN)
        self._remove = redis.register_script(REMOVE)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self._beat()  # first: a worker listed without a beat is reaped
        await self._redis.sadd("wschat:workers", self.worker)
        self._pubsub = _Subscription(self._redis, self._reconnected)
        await self._pubsub.ssubscribe(self._canary_channel)
        self._tasks = [
            asyncio.create_task(self._listen(), name="redis-listen"),
            asyncio.create_task(self._heartbeat(), name="redis-heartbeat"),
            asyncio.create_task(self._watch_canary(), name="redis-canary"),
        ]
        self._link.up = True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self._redis.delete(beat_key(self.worker))
            await self._reap(self.worker)  # our members are gone with us
            await self._pubsub.aclose()

    @property
    def linked(self) -> bool:
        """Whether the latest call to Redis succeeded (or is being retried after one that
        failed: then False)."""
        return self._link.up

    @property
    def deaf(self) -> bool:
        """No canary for DEAF_AFTER seconds, until a new subscription is in place."""
        return self._renew.is_set() or time.monotonic() - self._canary_seen > DEAF_AFTER

    @property
    def _canary_channel(self) -> str:
        return f"wschat:canary:{{{self.worker}}}"  # not `wschat:{...}`: no room's channel

    def serve(self, core: ChatCore) -> None:
        """Deliver what the rooms' channels carry through `core` (its fan-out to this
        worker's members): the core registers itself as it is built, before any call."""
        self._served = core

    @property
    def _core(self) -> ChatCore:
        if self._served is None:
            raise RuntimeError("RoomFeed.serve(core) was never called")
        return self._served

    # --- members (from the core, through infra/redis/connections.py) ---------------------

    async def join(self, connection: Connection) -> None:
        """Register a member here and in Redis, subscribed to its room before it returns: the
        welcome reads history only once live messages are sure to reach it."""
        room = connection.room
        self._connections[connection.id] = connection
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room({connection.id: connection})
            await self._subscribe(room, state)
        else:
            state.members[connection.id] = connection
            await state.ready.wait()  # another member's join is subscribing the room
            if state.failed:
                raise ConnectionError(f"could not subscribe to room {room!r}")
        epoch = await self._register(connection)
        if state.ready.is_set():
            # If Redis lost the room since this worker last heard from it, and no message has
            # said so yet, the members before this one have the old history's ids.
            self._hear_epoch(state, epoch, sparing=connection.id)

    async def _register(self, connection: Connection) -> str:
        """The member in Redis: its hash, its room's set and this worker's set. Returns the
        room's epoch."""
        keys, args = self._membership(connection)
        epoch, _ = await self._join(keys=keys, args=args)
        return text(epoch)

    def _membership(self, connection: Connection) -> tuple[list[str], list[str]]:
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

    def get(self, connection_id: str) -> Connection | None:
        return self._connections.get(connection_id)

    def update(self, connection: Connection) -> None:
        if connection.id in self._connections:
            self._connections[connection.id] = connection
            state = self._rooms.get(connection.room)
            if state is not None:
                state.members[connection.id] = connection

    def forget(self, connection_id: str) -> Connection | None:
        """Drop a member here at once; `leave` then tells Redis."""
        connection = self._connections.pop(connection_id, None)
        self._deferred.pop(connection_id, None)
        if connection is not None:
            state = self._rooms.get(connection.room)
            if state is not None:
                state.members.pop(connection_id, None)
                if not state.members and not state.delivered:
                    # No member here holds its epoch, and it had no history here: once empty
                    # everywhere it starts over (REMOVE), and the members joining here next
                    # take its new epoch as a first, not as its history lost (which would
                    # close those joining together).
                    state.epoch = ""
        return connection

    async def leave(self, connection: Connection) -> None:
        """Take a member out of Redis, and announce its leave, unless a reaper did both
        already. If Redis cannot be told, the heartbeat tries again."""
        try:
            await self._take_out(self.worker, [connection.id], [connection], beating_stops=False)
        except BaseException:
            self._strays[connection.id] = connection
            raise
        # The room's subscription stays a while (the heartbeat drops idle ones): a member
        # coming back finds it in place.

    def local_members(self, room: str) -> list[Connection]:
        state = self._rooms.get(room)
        return list(state.members.values()) if state is not None else []

    async def count(self, room: str) -> int:
        return int(await self._redis.scard(members_key(room)))

    def mark_welcomed(self, connection_id: str, through_id: int, force: bool = False) -> bool:
        """Open a JSON member's gate at `through_id`, unless this worker already delivered
        something newer in its room (which the member, gated, did not get): then False, and
        the welcome sends what is new and tries again (docs/welcome-seam.md)."""
        connection = self._connections.get(connection_id)
        if connection is None:
            return True
        state = self._rooms.get(connection.room)
        if state is not None and state.delivered > through_id and not force:
            return False
        gated = replace(connection, welcomed_through=through_id)
        self._connections[connection_id] = gated
        if state is not None:
            state.members[connection_id] = gated
        return True

    def defer_presence(self, member: Connection, frame: str) -> bool:
        """See ConnectionStore.defer_presence: here, in this worker's memory."""
        return keep_presence(self._deferred, self._connections.get(member.id), frame)

    def take_deferred(self, connection_id: str) -> list[str]:
        return self._deferred.pop(connection_id, [])

    # --- the subscription ---------------------------------------------------------------

    async def _subscribe(self, room: str, state: _Room) -> None:
        try:
            async with self._subscribing:
                await self._pubsub.ssubscribe(channel(room))
            # Subscribed first, then the latest id: whatever is published from here on
            # arrives, and whatever is older than `latest` is not this room's news here.
            state.delivered, state.epoch = await self._history.latest(room)
        except BaseException:
            state.failed = True
            if self._rooms.get(room) is state:
                del self._rooms[room]
            raise
        finally:
            state.ready.set()
        # A message published after `latest` may have reached the subscription before the
        # room was ready to take it (and been dropped): its stream has it.
        await self._catch_up(room)

    async def _listen(self) -> None:
        """Read the subscription for as long as the worker lives, resubscribing after a
        lost link or a deaf one. The one task that touches the subscription: resubscribing
        under a reader would break both."""
        while True:
            if self._renew.is_set():
                await self._resubscribe()
                self._renew.clear()
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                self._link.up = True
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._link.up = False
                log.warning("redis subscription lost (%s); resubscribing", type(error).__name__)
                await asyncio.sleep(0.5)
                await self._resubscribe()
                continue
            if message is None or message.get("type") != "smessage":
                continue
            name = message["channel"].decode()
            if name == self._canary_channel:
                self._canary_seen = time.monotonic()
                continue
            try:
                await self._on_room_event(message["data"])
            except Exception:  # one event that cannot be delivered must not end the feed
                log.exception("redis event on %s not delivered", name)

    async def _on_room_event(self, data: bytes) -> None:
        fields = json.loads(data)
        if "p" in fields:
            self._on_presence(fields)
            return
        epoch, messages = messages_of(fields)
        for message, sender_id in messages:  # in id order
            await self._deliver_in_order(message, epoch, sender_id)

    def _on_presence(self, fields: dict[str, Any]) -> None:
        conn = fields["c"]
        connection = Connection(
            id=conn["id"],
            room=conn["room"],
            user_id=conn["user_id"],
            user_name=conn["user_name"],
            dialect=Dialect(conn["dialect"]),
            echo="",
        )
        members = self.local_members(connection.room)
        self._core.fan_out_presence(fields["p"], connection, int(fields["n"]), members)

    async def _deliver_in_order(
        self, message: ChatMessage, epoch: str, sender_id: str | None
    ) -> None:
        room = message.room
        state = self._rooms.get(room)
        if state is None or not state.ready.is_set():
            return  # not this worker's room, or not yet: its subscriber catches up
        self._hear_epoch(state, epoch)
        behind = state.delivered
        if message.id <= behind:
            return  # delivered already (a catch-up got here first)
        if message.id > behind + 1:  # a gap: a message lost on the way, fill it first
            try:
                await self._catch_up(room, message.id - 1)
            except Exception as error:
                # Not this one before the gap: a renewal catches up on both from the stream
                # (else it would wait for the room's next message, maybe for ever).
                log.warning("could not fill a gap in %r (%r); renewing", room, error)
                self._renew.set()
                return
        self._lag(max(0.0, time.time() - message.ts))
        self._fan_out(message, sender_id)

    def _fan_out(self, message: ChatMessage, sender_id: str | None = None) -> None:
        state = self._rooms.get(message.room)
        if state is None or not state.ready.is_set() or message.id <= state.delivered:
            return
        state.delivered = message.id
        members = list(state.members.values())
        # With no switch in between: a welcome cannot open a gate between this delivery and
        # its id.
        self._core.fan_out(message, sender_id, members)

    async def _catch_up(self, room: str, through: int | None = None) -> None:
        """Deliver, in order, what the room's stream holds past what this worker delivered."""
        while True:
            state = self._rooms.get(room)
            if state is None or not state.ready.is_set():
                return  # gone, or still subscribing: its subscriber catches up
            after = state.delivered
            if through is not None and after >= through:
                return
            missed = await self._history.sent_after(room, after, CATCH_UP_PAGE)
            if not missed:
                # Expired, or the stream started over: nothing to wait for.
                if through is not None and state.delivered < through:
                    state.delivered = through
                return
            for message, sender_id in missed:
                self._fan_out(message, sender_id)

    async def _start_over_if_lost(self, room: str) -> None:
        """While the subscription was down, Redis may have lost the room (restarted without
        persistence, flushed): its ids then start over under a new epoch, below what this
        worker delivered, and a catch-up from there would find nothing."""
        _, epoch = await self._history.latest(room)
        state = self._rooms.get(room)
        if state is not None and state.ready.is_set():
            self._hear_epoch(state, epoch)

    def _hear_epoch(self, state: _Room, epoch: str, sparing: str | None = None) -> None:
        """`epoch` is the room's now (or "": it has no history). A room that had none when
        this worker subscribed (reading it made none) takes the first it hears: its history
        began since. Another one means the room started over in Redis: so do we."""
        if not state.epoch:
            state.epoch = epoch
        elif epoch != state.epoch:
            self._start_over(state, epoch, sparing)

    def _start_over(self, state: _Room, epoch: str, sparing: str | None = None) -> None:
        """The room's history was lost, and its ids start over under `epoch`. A JSON member
        here has ids of the old history, which the new ones repeat: its client would drop
        them as seen, and its gate would hold back those up to where its welcome went. So it
        is closed with 1012, and reconnects: its welcome says `recovered: false`. (Not
        `sparing`, which is joining now, under the new epoch.)"""
        state.epoch, state.delivered = epoch, 0
        for member in list(state.members.values()):
            if member.dialect is Dialect.JSON and member.id != sparing:
                self._core.delivery.close(
                    member.id, CloseCode.SERVICE_RESTART, "the room's history was lost"
                )

    async def _resubscribe(self) -> None:
        """A fresh subscription to every room with members here, then a catch-up of each."""
        while True:
            try:
                async with self._subscribing:
                    with contextlib.suppress(Exception):
                        await self._pubsub.aclose()
                    self._pubsub = _Subscription(self._redis, self._reconnected)
                    rooms = list(self._rooms)
                    await self._pubsub.ssubscribe(self._canary_channel, *map(channel, rooms))
                for room in rooms:
                    await self._start_over_if_lost(room)
                    await self._catch_up(room)
                self._canary_seen = time.monotonic()
                self._link.up = True
                log.info("redis subscription restored for %d room(s)", len(rooms))
                return
            except Exception as error:
                self._link.up = False
                log.warning("redis subscription not restored (%r); retrying", error)
                await asyncio.sleep(1)

    def _reconnected(self) -> None:
        log.warning("redis subscription reconnected; catching up on what it missed")
        self._renew.set()  # the listener resubscribes (afresh) and catches up

    async def _watch_canary(self) -> None:
        while True:
            await asyncio.sleep(CANARY_SECONDS)
            try:
                await self._redis.spublish(self._canary_channel, "canary")
                self._link.up = True
            except Exception:
                self._link.up = False
                continue
            if self.deaf and not self._renew.is_set():
                log.warning("no canary for %.0f s: the subscription is deaf", DEAF_AFTER)
                self._renew.set()  # the listener resubscribes within CANARY_SECONDS

    # --- heartbeat and reaping ----------------------------------------------------------

    async def _beat(self) -> None:
        await self._redis.set(beat_key(self.worker), "1", ex=HEARTBEAT_TTL)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._heartbeat_once()
            except Exception as error:
                log.warning("redis heartbeat failed (%s)", type(error).__name__)

    async def _heartbeat_once(self) -> None:
        await self._beat()
        await self._drop_idle_rooms()
        await self._remove_strays()
        if await self._redis.sadd("wschat:workers", self.worker) and self._connections:
            # We were off the list: reaped by another worker while our heartbeat could not
            # reach Redis, our members removed and their leave announced. They are still
            # here, so they join again.
            log.warning("this worker was reaped; registering its members again")
            await self._register_again(list(self._connections.values()))
        workers = [raw.decode() for raw in await self._redis.smembers("wschat:workers")]
        pipe = self._redis.pipeline(transaction=False)
        for worker in workers:
            pipe.exists(beat_key(worker))
        for worker, beating in zip(workers, await pipe.execute(), strict=True):
            if not beating:
                await self._reap(worker)

    async def _drop_idle_rooms(self) -> None:
        """Unsubscribe from the rooms without members here, and from any channel held for no
        room: a join whose subscription was made but whose room could not be set up (its
        `latest` failed) leaves one behind, which would bring its room's traffic for ever."""
        idle = [room for room, state in self._rooms.items() if not state.members]
        for room in idle:
            del self._rooms[room]
        async with self._subscribing:
            wanted = {channel(room) for room in self._rooms} | {self._canary_channel}
            pubsub = self._pubsub
            held = set(pubsub.shard_channels) - pubsub.pending_unsubscribe_shard_channels
            unwanted = [name for name in held if text(name) not in wanted]
            if unwanted:
                await pubsub.sunsubscribe(*unwanted)
        for room in idle:
            joined = self._rooms.get(room)
            if joined is not None:  # someone joined meanwhile: its subscription must stand
                async with self._subscribing:
                    await self._pubsub.ssubscribe(channel(room))
                await joined.ready.wait()  # then what the gap let pass is in the stream
                await self._catch_up(room)

    async def _reap(self, worker: str) -> None:
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
        args: list[Any] = ["1" if beating_stops else "0", self._history.ttl]
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

    async def _remove_strays(self) -> None:
        """Take out of Redis the members whose `leave` failed (announcing the leave of those
        still in their rooms)."""
        strays = list(self._strays.values())
        if not strays:
            return
        ids = [member.id for member in strays]
        await self._take_out(self.worker, ids, strays, beating_stops=False)
        for connection_id in ids:
            del self._strays[connection_id]

    async def _register_again(self, members: list[Connection]) -> None:
        """Register `members` in Redis again (JOIN announces those that were not there: all
        but the ones a reaper had yet to reach), in two round trips per REAP_PAGE members or
        so. One by one, a big worker back from a long cut-off could take longer than its
        heartbeat's TTL, and be reaped again."""
        for start in range(0, len(members), REAP_PAGE):
            # Only those still here when the pipeline is made: one that left since the
            # list was taken would be registered again, for good.
            page = [m for m in members[start : start + REAP_PAGE] if m.id in self._connections]
            pipe = self._redis.pipeline(transaction=False)
            for member in page:
                keys, args = self._membership(member)
                await self._join(keys=keys, args=args, client=pipe)
            answers = await pipe.execute()
            # One that left while the pipeline was on its way, its removal run before its JOIN,
            # is back in Redis: out again.
            gone = [
                member
                for member, (_, added) in zip(page, answers, strict=True)
                if added and member.id not in self._connections
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


def _presence_head(event: str, connection: Connection) -> str:
    """A presence event on a room's channel (`RoomFeed._on_presence` reads it) without its
    count and closing brace, which the membership scripts add."""
    member = {
        "id": connection.id,
        "room": connection.room,
        "user_id": connection.user_id,
        "user_name": connection.user_name,
        "dialect": connection.dialect.value,
    }
    return json.dumps({"p": event, "c": member})[:-1] + ', "n": '
