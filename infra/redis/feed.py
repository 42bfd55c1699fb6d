"""One worker's share of the rooms, when `wschat serve` runs on Redis (`WSCHAT_REDIS_URL`).

Every worker (a process of `wschat serve --workers N`, on any host) holds its own sockets and
keeps, on its event loop:

- **its members**, by id and by room, with each JSON connection's welcome gate (here);
- **a subscription per room it has members in** (infra/redis/subscription.py), on the room's
  sharded pub/sub channel, where the publish script (infra/redis/history.py) puts every
  message and presence event. It delivers each to its own members through the core's
  fan-out, in id order: it remembers the last id it delivered per room, and fills a gap (a
  message lost while the link was down) from the room's stream before it delivers anything
  newer;
- **a canary** (infra/redis/liveness.py): every second it publishes to a channel of its own;
  a canary unseen for 5 s means the subscription went deaf, and it resubscribes and catches
  up from the streams (on a Redis Cluster, a canary per node it subscribes on);
- **a heartbeat**: its members are registered in Redis under its id
  (infra/redis/membership.py, which lists the keys), which it refreshes every few seconds. A
  worker whose heartbeat lapses (killed with SIGKILL, say) is reaped by another: its members
  are removed and their rooms told they left.

`RoomFeed` ties them together: a join subscribes the member's room, then registers the member
in Redis; the heartbeat beats, drops the rooms left idle, retries the removals that failed,
registers the members again if a reaper took them, and reaps the dead workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import replace
from typing import Any

from handler.chat.core import ChatCore
from handler.chat.ports import Connection, User, keep_presence
from infra.redis.history import RedisHistory, channel
from infra.redis.liveness import RedisLink
from infra.redis.membership import HEARTBEAT_SECONDS, Membership, member_fields
from infra.redis.shards import OneRedis, Shards
from infra.redis.subscription import QUIET, FeedMetrics, RoomSubscription

log = logging.getLogger(__name__)


class RoomFeed:
    """This worker's members and subscriptions, all on the event loop's thread (the core
    reaches them from a greenlet there: handler/local/greenbridge.py). A plain method runs without
    interruption, so members, gates and `delivered` change atomically."""

    def __init__(
        self,
        redis: Any,
        history: RedisHistory,
        link: RedisLink,
        metrics: FeedMetrics = QUIET,
        shards: Shards | None = None,
    ) -> None:
        """`link` is what `redis`'s connections report their failures to (RedisLink.retry);
        `metrics` is told what the subscription sees (FeedMetrics); `shards`, which node
        serves which channel (one Redis if not given). The core it delivers through
        registers itself (`serve`)."""
        self.worker = secrets.token_hex(6)
        self._redis = redis
        self._link = link
        self.membership = Membership(
            redis, self.worker, history.ttl, history.calls, one_node=shards is None
        )
        self.subscription = RoomSubscription(
            redis, history, link, self.worker, metrics, shards or OneRedis(redis)
        )
        self._connections: dict[str, Connection] = {}
        self._deferred: dict[str, list[str]] = {}  # presence for members not yet welcomed
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.membership.beat()  # first: a worker listed without a beat is reaped
        await self.membership.enlist()
        await self.subscription.start()  # its links' readers and canaries are its own
        self._tasks = [asyncio.create_task(self._heartbeat(), name="redis-heartbeat")]
        self._link.up = True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.membership.withdraw()
        with contextlib.suppress(Exception):
            await self.subscription.close()

    @property
    def linked(self) -> bool:
        """Whether the latest call to Redis succeeded (or is being retried after one that
        failed: then False)."""
        return self._link.up

    @property
    def deaf(self) -> bool:
        """No canary for DEAF_AFTER seconds, until a new subscription is in place (on a
        cluster, on any of the nodes subscribed on)."""
        return self.subscription.deaf

    def serve(self, core: ChatCore) -> None:
        """Deliver what the rooms' channels carry through `core` (its fan-out to this
        worker's members): the core registers itself as it is built, before any call."""
        self.subscription.serve(core)

    # --- members (from the core, through infra/redis/connections.py) ---------------------

    async def join(self, connection: Connection) -> int:
        """Register a member here and in Redis, subscribed to its room before it returns: the
        welcome reads history only once live messages are sure to reach it. Returns the
        room's count with it."""
        self._connections[connection.id] = connection
        state = await self.subscription.add(connection)
        epoch, count = await self.membership.register(connection)
        if state.ready.is_set():
            # If Redis lost the room since this worker last heard from it, and no message has
            # said so yet, the members before this one have the old history's ids.
            self.subscription.hear_epoch(state, epoch, sparing=connection.id)
        return count

    def get(self, connection_id: str) -> Connection | None:
        return self._connections.get(connection_id)

    def update(self, connection: Connection) -> None:
        if connection.id in self._connections:
            self._connections[connection.id] = connection
            state = self.subscription.rooms.get(connection.room)
            if state is not None:
                state.members[connection.id] = connection

    def forget(self, connection_id: str) -> Connection | None:
        """Drop a member here at once; `leave` then tells Redis."""
        connection = self._connections.pop(connection_id, None)
        self._deferred.pop(connection_id, None)
        if connection is not None:
            state = self.subscription.rooms.get(connection.room)
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
        await self.membership.leave(connection)
        # The room's subscription stays a while (the heartbeat drops idle ones): a member
        # coming back finds it in place.

    def local_members(self, room: str) -> list[Connection]:
        return self.subscription.members(room)

    async def typing(self, connection: Connection) -> None:
        """To every worker's members of the room, through its channel (nothing is stored)."""
        event = json.dumps({"t": member_fields(connection)})
        await self._redis.spublish(channel(connection.room), event)

    async def count(self, room: str) -> int:
        return await self.membership.count(room)

    async def users(self, room: str, limit: int) -> list[User]:
        return await self.membership.users(room, limit)

    def mark_welcomed(self, connection_id: str, through_id: int, force: bool = False) -> bool:
        """Open a JSON member's gate at `through_id`, unless this worker already delivered
        something newer in its room (which the member, gated, did not get): then False, and
        the welcome sends what is new and tries again (docs/welcome-seam.md)."""
        connection = self._connections.get(connection_id)
        if connection is None:
            return True
        state = self.subscription.rooms.get(connection.room)
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

    # --- heartbeat ----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._heartbeat_once()
            except Exception as error:
                log.warning("redis heartbeat failed (%s)", type(error).__name__)

    async def _heartbeat_once(self) -> None:
        await self.membership.beat()
        await self.subscription.drop_idle_rooms()
        await self.membership.remove_strays()
        if await self.membership.enlist() and self._connections:
            # We were off the list: reaped by another worker while our heartbeat could not
            # reach Redis, our members removed and their leave announced. They are still
            # here, so they join again.
            log.warning("this worker was reaped; registering its members again")
            members = list(self._connections.values())
            await self.membership.register_again(members, lambda id_: id_ in self._connections)
        await self.membership.reap_the_dead()
