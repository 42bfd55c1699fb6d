"""This worker's subscription to the rooms it has members in, delivering in id order.

One sharded pub/sub subscription holds a channel per room with members here (and the
canary's, infra/redis/liveness.py), where the publish script (infra/redis/history.py) puts
every message, and the membership scripts (infra/redis/membership.py) every presence event.
On a Redis Cluster a channel is served by the node owning its slot, so the subscription is
one link per node (infra/redis/shards.py), each with its own canary and its own reader; a
room whose slot moved (a migration, a failover: the node says `sunsubscribe`, or refuses
with MOVED, or is gone) is subscribed on its new node and caught up, as after a lost link.
Each is delivered to this worker's members of the room through the core's fan-out, in id
order: the last id delivered is remembered per room, and a gap (a message lost while the link
was down) is filled from the room's stream before anything newer is delivered. After a lost
or deaf subscription, a fresh one is made and every room caught up from its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio.client import PubSub

from handler.chat.core import ChatCore
from handler.chat.ports import ChatMessage, Connection, Dialect
from handler.chat.wire import CloseCode
from infra.redis.high_water import epoch_bounds
from infra.redis.history import RedisHistory, channel, messages_of, text
from infra.redis.liveness import Canary, RedisLink
from infra.redis.membership import member_from
from infra.redis.shards import OneRedis, Shards

log = logging.getLogger(__name__)

CATCH_UP_PAGE = 500


class _Subscription(PubSub):
    """redis-py reconnects a lost subscription by itself and subscribes again, but what was
    published in between never arrives, and the canary soon flies again: nothing would catch
    up until the room's next message showed the gap. This one tells the feed instead."""

    def __init__(self, pool: Any, reconnected: Callable[[], None]) -> None:
        super().__init__(pool)
        self._reconnected = reconnected

    async def on_connect(self, connection: Any) -> None:
        await super().on_connect(connection)  # redis-py calls this on reconnects only
        self._reconnected()

    async def _resubscribe_shard_channels(self) -> None:
        # One SSUBSCRIBE per channel: redis-py sends them all in one, which a cluster node
        # refuses for channels of several slots (CROSSSLOT), as any multi-key command.
        for name in list(self.shard_channels):
            await self.ssubscribe(name)


class FeedMetrics(Protocol):
    """What the subscription tells /metrics (handler/local/metrics.py)."""

    def lag(self, seconds: float) -> None:
        """A message arrived live, `seconds` after its publication."""

    def resubscribed(self) -> None:
        """A fresh subscription replaced a lost or deaf one, every room caught up."""

    def restarted(self) -> None:
        """A room was heard to start over under a new epoch (its history lost, or its
        counter found behind what was seen: a failover that lost writes)."""


class _Quiet:
    def lag(self, seconds: float) -> None:
        pass

    def resubscribed(self) -> None:
        pass

    def restarted(self) -> None:
        pass


QUIET: FeedMetrics = _Quiet()


@dataclass
class _Room:
    name: str
    members: dict[str, Connection]
    delivered: int = 0  # the last id delivered here (or known to be old when subscribing)
    epoch: str = ""  # "" while the room has had no history since this worker subscribed
    # Set once subscribed and `delivered` read. The room is registered before that, so that
    # a renewal or an idle sweep meanwhile sees it; until then nothing is delivered to it.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False  # the subscription could not be made: its joiners fail too


@dataclass
class _Link:
    """The subscription on one node (the one Redis's, or a cluster node's), with its canary:
    the rooms whose channels it holds, and the tasks that read it and fly its canary."""

    node: str
    canary: Canary
    pubsub: Any = None
    rooms: set[str] = field(default_factory=set)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class RoomSubscription:
    """The subscription and the rooms it holds (`rooms`: each with this worker's members,
    what was delivered to them, and the room's epoch), on the event loop's thread with the
    feed: a plain method runs without interruption, so members and `delivered` change
    atomically."""

    def __init__(
        self,
        redis: Any,
        history: RedisHistory,
        link: RedisLink,
        worker: str,
        metrics: FeedMetrics,
        shards: Shards | None = None,
    ) -> None:
        """`metrics` is told what happens here (FeedMetrics); `shards` says which node
        serves which channel (one Redis if not given). The core it delivers through is given
        by the feed (`serve`)."""
        self._redis = redis
        self._history = history
        self._link = link
        self._worker = worker
        self._shards: Shards = shards or OneRedis(redis)
        self._links: dict[str, _Link] = {}
        self._metrics = metrics
        self._served: ChatCore | None = None
        self.rooms: dict[str, _Room] = {}
        # What /metrics and /healthz tell (docs/operations.md): fresh subscriptions made
        # after a lost or deaf one, and rooms heard to start over under a new epoch.
        self.resubscribes = 0
        self.restarts = 0
        # Held by whatever changes a link's subscription. A fresh PubSub fetches its
        # connection on its first call: two first calls at once (a renewal's and a join's)
        # would fetch two and keep one, losing the other from the pool for good.
        self._subscribing = asyncio.Lock()

    async def start(self) -> None:
        await self._shards.refresh()
        async with self._subscribing:
            for node in self._shards.first_nodes():
                await self._open(node)

    async def close(self) -> None:
        for link in self._links.values():
            for task in link.tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await link.pubsub.aclose()
        await self._shards.aclose()

    @property
    def deaf(self) -> bool:
        """A link's canary unseen for DEAF_AFTER seconds, until it is subscribed afresh."""
        return any(link.canary.deaf for link in self._links.values())

    @property
    def nodes(self) -> list[str]:
        """The cluster nodes this worker subscribes on (none named on one Redis)."""
        return sorted(node for node in self._links if node)

    async def _open(self, node: str) -> _Link:
        """The link to `node`, subscribed to its canary, read and flown from now on. Called
        holding `_subscribing`."""
        link = self._links.get(node)
        if link is not None:
            return link
        canary = Canary(self._redis, self._link, self._shards.canary(node, self._worker))
        link = _Link(node, canary)
        link.pubsub = self._pubsub_for(link)
        await link.pubsub.ssubscribe(canary.channel)
        self._links[node] = link
        link.tasks = [
            asyncio.create_task(self._read(link), name=f"redis-listen {node}"),
            asyncio.create_task(canary.watch(), name=f"redis-canary {node}"),
        ]
        return link

    async def _subscribe_where_served(self, room: str) -> None:
        """`room`'s channel subscribed on the link to the node serving it (made if need be).
        Called holding `_subscribing`."""
        link = await self._open(self._shards.node_of(channel(room)))
        await link.pubsub.ssubscribe(channel(room))
        link.rooms.add(room)

    def _pubsub_for(self, link: _Link) -> _Subscription:
        def reconnected() -> None:
            log.warning("redis subscription reconnected; catching up on what it missed")
            link.canary.renew.set()  # its reader resubscribes (afresh) and catches up

        return _Subscription(self._shards.pool(link.node), reconnected)

    def _holding(self, room: str) -> _Link | None:
        for link in self._links.values():
            if room in link.rooms:
                return link
        return None

    def serve(self, core: ChatCore) -> None:
        self._served = core

    @property
    def _core(self) -> ChatCore:
        if self._served is None:
            raise RuntimeError("RoomFeed.serve(core) was never called")
        return self._served

    def members(self, room: str) -> list[Connection]:
        """This worker's members of `room`."""
        state = self.rooms.get(room)
        return list(state.members.values()) if state is not None else []

    async def add(self, connection: Connection) -> _Room:
        """Add a member to its room here, the room subscribed by its first member: returns
        once the room is subscribed, or raises if that failed."""
        room = connection.room
        state = self.rooms.get(room)
        if state is None:
            state = self.rooms[room] = _Room(room, {connection.id: connection})
            self._history.high_water.hold(room)
            await self._subscribe(room, state)
        else:
            state.members[connection.id] = connection
            await state.ready.wait()  # another member's join is subscribing the room
            if state.failed:
                raise ConnectionError(f"could not subscribe to room {room!r}")
        return state

    async def _subscribe(self, room: str, state: _Room) -> None:
        try:
            async with self._subscribing:
                await self._subscribe_where_served(room)
            # Subscribed first, then the latest id: whatever is published from here on
            # arrives, and whatever is older than `latest` is not this room's news here.
            state.delivered, state.epoch = await self._history.latest(room)
        except BaseException:
            state.failed = True
            if self.rooms.get(room) is state:
                del self.rooms[room]
                self._history.high_water.drop(room)
            raise
        finally:
            state.ready.set()
        # A message published after `latest` may have reached the subscription before the
        # room was ready to take it (and been dropped): its stream has it.
        await self._catch_up(room)

    async def _read(self, link: _Link) -> None:
        """Read a link for as long as the worker lives (or the node serves no channel of
        this worker's any more), subscribing it afresh after a lost link, a deaf one, or a
        slot that moved. The one task that touches the link's subscription: resubscribing
        under a reader would break both."""
        while True:
            if link.canary.renew.is_set():
                if not await self._resubscribe(link):
                    return
                link.canary.renew.clear()
            try:
                message = await link.pubsub.get_message(timeout=1)
                self._link.up = True
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._link.up = False
                log.warning("redis subscription lost (%s); resubscribing", type(error).__name__)
                await asyncio.sleep(0.5)
                link.canary.renew.set()
                continue
            if message is None:
                continue
            kind = message.get("type")
            name = text(message["channel"])
            if kind == "sunsubscribe" and message["channel"] in link.pubsub.shard_channels:
                # Not ours (redis-py forgets a channel when the node confirms our own
                # unsubscribe): the node no longer serves the channel's slot (migrated, or
                # the node became a replica). Its new node is to be found, and what was
                # published there meanwhile caught up.
                log.warning("redis node %s let go of %s; resubscribing", link.node, name)
                link.canary.renew.set()
                continue
            if kind != "smessage":
                continue
            if name == link.canary.channel:
                link.canary.heard()
                continue
            try:
                await self._on_room_event(message["data"])
            except Exception:  # one event that cannot be delivered must not end the feed
                log.exception("redis event on %s not delivered", name)

    async def _on_room_event(self, data: bytes) -> None:
        fields = json.loads(data)
        if "ps" in fields:  # a batch of joins and leaves (membership.py's PRESENCE), in order
            for event in fields["ps"]:
                self._on_presence(event)
            return
        if "p" in fields:  # one leave (a reaper's or a stray's REMOVE), or one join
            self._on_presence(fields)
            return
        if "t" in fields:  # typing: members open to live messages get it, or never
            typist = member_from(fields["t"])
            self._core.fan_out_typing(typist, self.members(typist.room))
            return
        epoch, messages = messages_of(fields)
        for message, sender_id in messages:  # in id order
            await self._deliver_in_order(message, epoch, sender_id)

    def _on_presence(self, fields: dict[str, Any]) -> None:
        connection = member_from(fields["c"])
        core = self._core
        # Batched, the event waits for the room's next frame, which reads the members then:
        # listing them here for each of a storm's N joins would cost N x members.
        members = () if core.batches_presence else self.members(connection.room)
        core.fan_out_presence(fields["p"], connection, int(fields["n"]), members)

    async def _deliver_in_order(
        self, message: ChatMessage, epoch: str, sender_id: str | None
    ) -> None:
        room = message.room
        state = self.rooms.get(room)
        if state is None or not state.ready.is_set():
            return  # not this worker's room, or not yet: its subscriber catches up
        self.hear_epoch(state, epoch)
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
                link = self._holding(room)
                if link is not None:
                    link.canary.renew.set()
                return
        self._metrics.lag(max(0.0, time.time() - message.ts))
        self._fan_out(message, sender_id)

    def _fan_out(self, message: ChatMessage, sender_id: str | None = None) -> None:
        state = self.rooms.get(message.room)
        if state is None or not state.ready.is_set() or message.id <= state.delivered:
            return
        state.delivered = message.id
        self._history.high_water.saw(message.room, state.epoch, message.id, message.ts)
        members = list(state.members.values())
        # With no switch in between: a welcome cannot open a gate between this delivery and
        # its id.
        self._core.fan_out(message, sender_id, members)

    async def _catch_up(self, room: str, through: int | None = None) -> None:
        """Deliver, in order, what the room's stream holds past what this worker delivered."""
        while True:
            state = self.rooms.get(room)
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
        state = self.rooms.get(room)
        if state is not None and state.ready.is_set():
            self.hear_epoch(state, epoch)

    def hear_epoch(self, state: _Room, epoch: str, sparing: str | None = None) -> None:
        """`epoch` is the room's now (or "": it has no history). A room that had none when
        this worker subscribed (reading it made none) takes the first it hears: its history
        began since. Another one means the room started over in Redis: so do we."""
        if not state.epoch:
            state.epoch = epoch
        elif epoch != state.epoch:
            self._start_over(state, epoch, sparing)

    def _start_over(self, state: _Room, epoch: str, sparing: str | None = None) -> None:
        """The room's history was lost, and its ids start over under `epoch`: above 0 for a
        room made afresh, above its counter for one found behind a caller's mark, whose
        stream up to the counter is then the same messages under the same ids (`kept`:
        infra/redis/high_water.py, epoch_bounds). A JSON member here that may hold an id
        above `kept` has ids of the old history, which the new ones repeat: its client would
        drop them as seen, and its gate would hold back those up to where its welcome went.
        So it is closed with 1012, and reconnects: its welcome says `recovered: false`. (Not
        `sparing`, which is joining now, under the new epoch.) One that holds nothing above
        `kept` stays: a client's `since` alone can start a room over, and one that claims
        more than the room has (a client may lie) must not close every member of it."""
        kept, following = epoch_bounds(epoch)
        held = state.delivered
        # Ids up to where new ones begin that this worker had yet to deliver are still to
        # come, from the stream.
        state.epoch, state.delivered = epoch, min(held, following)
        self._history.high_water.restarted(state.name, epoch)
        self.restarts += 1
        self._metrics.restarted()
        for member in list(state.members.values()):
            if member.dialect is not Dialect.JSON or member.id == sparing:
                continue
            through = member.welcomed_through
            if kept and held <= kept and through is not None and through <= kept:
                continue  # it holds only what the new epoch holds too
            self._core.delivery.close(
                member.id, CloseCode.SERVICE_RESTART, "the room's history was lost"
            )

    async def _resubscribe(self, link: _Link) -> bool:
        """A fresh subscription on the link's node to its rooms still served there, and the
        others on the nodes that serve them now (the map refreshed first), then a catch-up
        of each. False if the node serves nothing any more: the link is closed."""
        rooms = set(link.rooms)  # kept across tries: a try may fail half-way through
        while True:
            try:
                await self._shards.refresh()
                async with self._subscribing:
                    rooms = {room for room in rooms | link.rooms if room in self.rooms}
                    moved = sorted(rooms)
                    link.rooms = set()
                    with contextlib.suppress(Exception):
                        await link.pubsub.aclose()
                    serves = self._shards.serves(link.node)
                    if serves:
                        link.canary.channel = self._shards.canary(link.node, self._worker)
                        link.pubsub = self._pubsub_for(link)
                        await link.pubsub.ssubscribe(link.canary.channel)
                    for room in moved:
                        await self._subscribe_where_served(room)
                    if not serves:
                        del self._links[link.node]
                        for task in link.tasks:
                            if task is not asyncio.current_task():
                                task.cancel()
                for room in moved:
                    await self._start_over_if_lost(room)
                    await self._catch_up(room)
                link.canary.heard()
                self._link.up = True
                self.resubscribes += 1
                self._metrics.resubscribed()
                where = link.node or "Redis"
                log.info("redis subscription to %s restored for %d room(s)", where, len(moved))
                return serves
            except Exception as error:
                self._link.up = False
                log.warning("redis subscription not restored (%r); retrying", error)
                await asyncio.sleep(1)

    async def drop_idle_rooms(self) -> None:
        """Unsubscribe from the rooms without members here, and from any channel held for no
        room: a join whose subscription was made but whose room could not be set up (its
        `latest` failed) leaves one behind, which would bring its room's traffic for ever."""
        idle = [room for room, state in self.rooms.items() if not state.members]
        for room in idle:
            del self.rooms[room]
            self._history.high_water.drop(room)
        async with self._subscribing:
            for link in list(self._links.values()):
                link.rooms &= set(self.rooms)
                wanted = {channel(room) for room in link.rooms} | {link.canary.channel}
                pubsub = link.pubsub
                held = set(pubsub.shard_channels) - pubsub.pending_unsubscribe_shard_channels
                unwanted = [name for name in held if text(name) not in wanted]
                for name in unwanted:  # one each: a cluster node refuses several slots
                    await pubsub.sunsubscribe(name)
        for room in idle:
            joined = self.rooms.get(room)
            if joined is not None:  # someone joined meanwhile: its subscription must stand
                async with self._subscribing:
                    await self._subscribe_where_served(room)
                await joined.ready.wait()  # then what the gap let pass is in the stream
                await self._catch_up(room)
