"""RoomFeed's subscription set-up, in process against a real redis-server, where a race can
be staged exactly (the fault tests with whole servers are in tests/handler/local/)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from auth.principal import Principal
from handler.chat.core import ConnectParams
from handler.chat.ports import Connection, Dialect, Draft, StoreUnavailable
from handler.chat.wire import MAX_MESSAGE_ID
from handler.local.delivery import Outbox
from handler.local.service import LocalChat, build_local_chat
from infra.redis.feed import RoomFeed
from infra.redis.high_water import NO_MARK, Mark
from infra.redis.history import (
    PUBLISH,
    RedisHistory,
    channel,
    log_key,
    members_key,
    retries_key,
    seq_key,
)
from infra.redis.history import text as as_text
from infra.redis.liveness import CANARY_SECONDS, DEAF_AFTER
from infra.redis.membership import WORKERS_KEY, beat_key, conns_key, life_key
from infra.settings import Settings
from tests.support import presence
from tests.support.redis_server import RedisServer


class Member:
    """A connection through the core, its frames and closes collected."""

    def __init__(self, chat: LocalChat, connection_id: str, capacity: int = 16) -> None:
        self.frames: list[str] = []
        self.closes: list[int] = []
        self.outbox = Outbox(self._send, self._close, capacity=capacity)
        chat.delivery.register(connection_id, self.outbox)
        self.writer = self.outbox.start()

    async def _send(self, text: str) -> None:
        self.frames.append(text)

    async def _close(self, code: int, reason: str) -> None:
        self.closes.append(code)

    async def wait_for(self, text: str, seconds: float) -> float:
        """How long until a frame holds `text` (at most `seconds`)."""
        started = time.monotonic()
        while not any(text in frame for frame in self.frames):
            assert time.monotonic() - started < seconds, self.frames
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def closed(self, seconds: float) -> list[int]:
        """The close codes sent to it, once there is one (at most `seconds`)."""
        deadline = time.monotonic() + seconds
        while not self.closes:
            assert time.monotonic() < deadline, self.frames
            await asyncio.sleep(0.05)
        return self.closes


@pytest.fixture
async def chat(redis: RedisServer) -> AsyncIterator[LocalChat]:
    # Each join and leave at once, as the scripts announce them: batches would fold a join
    # and leave that these tests tell apart (batching on Redis: tests/handler/local).
    chat = build_local_chat(Settings(redis_url=redis.url(), presence_interval=0))
    assert chat.engine is not None
    await chat.engine.start()
    yield chat
    await chat.engine.stop()


async def join(chat: LocalChat, room: str, connection_id: str = "c1") -> Member:
    """A text-dialect member."""
    member = Member(chat, connection_id)
    principal = Principal(id=f"u-{connection_id}", name="u1", echo="u1")
    await chat.call(chat.core.connect, connection_id, room, principal, ConnectParams())
    return member


async def watch(chat: LocalChat, room: str) -> Member:
    """A JSON member, `j1`, past its welcome: it hears presence."""
    member = Member(chat, "j1")
    principal = Principal(id="u-j1", name="u-j1", echo="u-j1")
    await chat.call(chat.core.connect, "j1", room, principal, ConnectParams(Dialect.JSON))
    await chat.call(chat.core.welcome, "j1")
    return member


async def heard(member: Member, events: int) -> list[tuple[str, str, int]]:
    """The presence events `member` heard (event, user id, count), once there are `events`
    of them (at most 5 s), and 0.3 s more for any that should not come."""
    for _ in range(100):
        if len(presence.events(json.loads(frame) for frame in member.frames)) >= events:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    return presence.events(json.loads(frame) for frame in member.frames)


async def register_dead_worker(
    feed: RoomFeed, members: dict[str, str], life: int = 1, worker: str = "dead"
) -> None:
    """Register `members` (id: room) in Redis as a worker `dead` did under `life`, listed
    but no longer beating: its conns entries, then the rooms' records (as a join does)."""
    membership = feed.membership
    pipe = membership._redis.pipeline(transaction=False)
    pipe.set(life_key(worker), life)
    for connection_id, room in members.items():
        member = Connection(
            connection_id, room, f"user-{connection_id}", "someone", Dialect.JSON, ""
        )
        pipe.hset(conns_key(worker), connection_id, f"{life}:{room}")
        keys, args = membership._join_call(member)
        record = json.loads(args[1])
        args[1] = json.dumps({**record, "worker": worker, "life": life})  # another worker's
        await membership._join(keys=keys, args=args, client=pipe)
    pipe.sadd(WORKERS_KEY, worker)
    await pipe.execute()


async def post(history: RedisHistory, room: str, text: str) -> None:
    await history.append(Draft(room, "u2", "u2", text), ts=0.0)


@contextlib.contextmanager
def round_trips(carrying: bytes = b"") -> Iterator[list[int]]:
    """Counts what this process sends to Redis meanwhile (only the sends with `carrying` in
    them, if given: the worker's heartbeat and canary go on meanwhile): a command, or a whole
    pipeline, is one send (and one round trip)."""
    sends = [0]
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, *args: Any, **kwargs: Any) -> None:
        packed = command.encode() if isinstance(command, str) else command
        if carrying in (packed if isinstance(packed, bytes) else b"".join(packed)):
            sends[0] += 1
        await send(self, command, *args, **kwargs)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield sends
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]


async def cut_off(feed: RoomFeed) -> None:
    """As for a worker that cannot reach Redis: its heartbeat stops, and its beat expires."""
    for task in feed._tasks:
        if task.get_name() == "redis-heartbeat":
            task.cancel()
    await feed.membership._redis.delete(beat_key(feed.worker))


@contextlib.contextmanager
def leave_fails(feed: RoomFeed, after_running: bool = False) -> Iterator[None]:
    """Removing members from Redis fails meanwhile, as if the link broke: before the call
    reached Redis, or `after_running` it there (its answer lost)."""
    remove, presence = feed.membership._remove, feed.membership._presence

    def broken(run: Any) -> Any:
        async def failing(*args: Any, **kwargs: Any) -> Any:
            if after_running:
                await run(*args, **kwargs)
            raise RedisConnectionError("Redis went away")

        return failing

    feed.membership._remove, feed.membership._presence = broken(remove), broken(presence)
    try:
        yield
    finally:
        feed.membership._remove, feed.membership._presence = remove, presence


async def then_post(
    chat: LocalChat, room: str, text: str, *commands: tuple[str, ...], sender: str | None = None
) -> Any:
    """Run `commands`, then publish `text` to `room` (from the connection `sender`), in one
    pipeline: Redis runs them back to back, before the worker can react to the first.
    Returns their answers."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    draft = Draft(room, "u2", "u2", text, sender_id=sender)
    keys, args = history._publication([(draft, 0.0)])
    sha = await chat.engine.client.script_load(PUBLISH)
    pipe = chat.engine.client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    pipe.evalsha(sha, len(keys), *keys, *args)
    return await pipe.execute()


@pytest.mark.timeout(30)
async def test_a_message_that_reaches_the_subscription_before_its_room_is_set_up_is_delivered(
    chat: LocalChat,
) -> None:
    """A room's first member here subscribes, then reads the room's latest id. A message
    published just after that read can reach the subscription before the room is set up, and
    be dropped there: it must still reach the member, without waiting for a later message."""
    assert chat.engine is not None
    history: RedisHistory = chat.engine.feed.subscription._history
    read_latest = history.latest

    async def latest_then_a_message(room: str, seen: Mark = NO_MARK) -> tuple[int, str]:
        answer = await read_latest(room, seen)
        await post(history, room, "early")
        await asyncio.sleep(0.5)  # the subscription takes it while the room is not yet here
        return answer

    history.latest = latest_then_a_message  # type: ignore[method-assign]
    member = await join(chat, "race")
    await member.wait_for("early", 5)
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_silently_deaf_subscription_is_found_by_its_canary_and_caught_up(
    chat: LocalChat, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscription still connected but no longer receiving (nothing tells the worker):
    the canary goes missing, and within 5 s of its silence (plus the watcher's tick) the
    worker resubscribes and delivers what it missed."""
    engine = chat.engine
    assert engine is not None
    member = await join(chat, "quiet")
    (link,) = engine.feed.subscription._links.values()
    await link.pubsub.sunsubscribe()  # every channel, the canary's too
    silent = time.monotonic()
    await post(engine.feed.subscription._history, "quiet", "missed")
    await member.wait_for("missed", DEAF_AFTER + 2 * CANARY_SECONDS)
    assert time.monotonic() - silent > DEAF_AFTER - CANARY_SECONDS  # the canary found it
    assert "the subscription is deaf" in caplog.text
    # The missed message may reach the member while the resubscription still catches up
    # (a read's await): the link says `deaf` until that is done, moments later.
    for _ in range(40):
        if engine.link() == "linked":
            break
        await asyncio.sleep(0.05)
    assert engine.link() == "linked"
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_what_is_published_while_redis_py_reconnects_the_subscription_is_caught_up(
    chat: LocalChat, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py reconnects a killed subscription by itself and subscribes again; what was
    published in between never comes on it, and the canary flies again at once. The worker
    must catch up all the same, without waiting for the room's next message to show the gap
    (a burst of messages sent right after `CLIENT KILL TYPE pubsub` stayed undelivered)."""
    engine = chat.engine
    assert engine is not None
    member = await join(chat, "killed")
    killed, _ = await then_post(chat, "killed", "in the gap", ("CLIENT", "KILL", "TYPE", "pubsub"))
    assert killed >= 1
    await member.wait_for("in the gap", DEAF_AFTER - CANARY_SECONDS)  # not by the canary
    assert "reconnected; catching up" in caplog.text
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_text_senders_line_that_is_caught_up_is_not_sent_back_to_it(
    chat: LocalChat,
) -> None:
    """A catch-up delivers from the stream, which did not keep who sent a message: a
    text-dialect sender, which has the seed's echo of its line, got it again as a room
    line."""
    sender = await join(chat, "caught", "c1")
    other = await join(chat, "caught", "c2")
    await then_post(chat, "caught", "mine", ("CLIENT", "KILL", "TYPE", "pubsub"), sender="c1")
    await other.wait_for("mine", DEAF_AFTER)
    await asyncio.sleep(0.3)
    assert not any("mine" in frame for frame in sender.frames)
    sender.writer.cancel()
    other.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_room_redis_lost_while_the_subscription_was_down_is_caught_up_from_its_start(
    chat: LocalChat,
) -> None:
    """Redis loses the room (FLUSHALL, or a restart without persistence) while the worker's
    subscription is down, and a message is published: it is id 1 of a new epoch, below what
    the worker had delivered. The catch-up after resubscribing must start the room over, not
    read on from the old epoch's last id and find nothing."""
    engine = chat.engine
    assert engine is not None
    member = await join(chat, "lost")
    history = engine.feed.subscription._history
    for text in ("one", "two", "three"):
        await post(history, "lost", text)
    await member.wait_for("three", 5)
    await then_post(
        chat, "lost", "after the loss", ("FLUSHALL",), ("CLIENT", "KILL", "TYPE", "pubsub")
    )
    await member.wait_for("after the loss", DEAF_AFTER - CANARY_SECONDS)
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_json_members_are_closed_to_resume_when_their_room_starts_over(
    chat: LocalChat,
) -> None:
    """Redis loses a room (FLUSHALL, or a restart without persistence), and its ids start
    over under a new epoch. A JSON member here would have the new ids held back by its gate
    (up to where its welcome went) or dropped by its client as repeats: it is closed with
    1012, to reconnect and be told `recovered: false` (it used to hear nothing)."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    await post(history, "epochs", "before it joined")
    member = await watch(chat, "epochs")
    await post(history, "epochs", "after it joined")
    await member.wait_for("after it joined", 5)
    await chat.engine.client.flushall()
    await post(history, "epochs", "after the loss")
    assert await member.closed(3) == [1012]
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_junk_on_a_rooms_channel_is_logged_and_the_room_goes_on(
    chat: LocalChat, caplog: pytest.LogCaptureFixture
) -> None:
    """Any client of the Redis can publish on a room's channel. What is not ours is logged,
    and the subscription keeps delivering: it used to end the listener, deaf for good."""
    engine = chat.engine
    assert engine is not None
    member = await join(chat, "junk")
    for junk in ("not json", '{"e": "x"}', '{"p": "join"}', "[]"):
        await engine.client.spublish(channel("junk"), junk)
    await post(engine.feed.subscription._history, "junk", "after the junk")
    await member.wait_for("after the junk", 3)
    assert "not delivered" in caplog.text
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_room_joined_while_the_worker_resubscribes_is_in_the_new_subscription(
    chat: LocalChat,
) -> None:
    """A room's first member here is subscribing (on the old subscription) when the listener
    renews the subscription: the renewal must include that room, or its members hear
    nothing, with a healthy canary to hide it."""
    engine = chat.engine
    assert engine is not None
    feed = engine.feed
    (link,) = feed.subscription._links.values()
    read_latest = feed.subscription._history.latest
    joining = True  # the renewal reads the room's latest too: renew only for the join

    async def latest_during_a_renewal(room: str, seen: Mark = NO_MARK) -> tuple[int, str]:
        nonlocal joining
        answer = await read_latest(room, seen)
        if room == "late" and joining:
            joining = False
            renewed = link.pubsub
            link.canary.renew.set()  # as the canary's watcher does
            while link.pubsub is renewed or link.canary.renew.is_set():
                await asyncio.sleep(0.05)
        return answer

    feed.subscription._history.latest = latest_during_a_renewal  # type: ignore[method-assign]
    member = await join(chat, "late")
    await post(feed.subscription._history, "late", "heard")
    await member.wait_for("heard", 3)
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_join_during_a_renewal_takes_no_connection_from_the_pool_for_good(
    chat: LocalChat,
) -> None:
    """A renewed subscription fetches its connection from the pool on its first call. A
    join's first call on it, made while the renewal's is still connecting, must not fetch a
    second one: only one can be kept, and the other was lost to the pool (64 in all) for
    good, one per renewal."""
    engine = chat.engine
    assert engine is not None
    feed = engine.feed
    pool = engine.client.connection_pool
    in_use = len(pool._in_use_connections)
    fetch = pool.get_connection

    async def slow_fetch(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)  # the renewal's connect, still under way when the join comes
        return await fetch(*args, **kwargs)

    pool.get_connection = slow_fetch
    (link,) = feed.subscription._links.values()
    renewed = link.pubsub
    link.canary.renew.set()  # as the canary's watcher does
    while link.pubsub is renewed:
        await asyncio.sleep(0.01)
    member = await join(chat, "joined-meanwhile")
    while link.canary.renew.is_set():
        await asyncio.sleep(0.05)
    del pool.get_connection  # the class's again
    assert len(pool._in_use_connections) == in_use  # the old subscription's was handed back
    await post(feed.subscription._history, "joined-meanwhile", "heard")
    await member.wait_for("heard", 3)
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_subscription_left_by_a_failed_join_is_dropped(chat: LocalChat) -> None:
    """A join subscribes to its room, then reads the room's latest id. When that read fails,
    the join fails, and the room is not set up here: the heartbeat's sweep must not leave the
    channel subscribed, bringing the room's traffic to a worker with no member in it."""
    engine = chat.engine
    assert engine is not None
    feed = engine.feed
    history: RedisHistory = feed.subscription._history

    async def unreachable(room: str, seen: Mark = NO_MARK) -> tuple[int, str]:
        raise ConnectionError("Redis went away")

    history.latest = unreachable  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await join(chat, "orphan")
    del history.latest  # the class's again
    room = channel("orphan")

    async def subscribers() -> int:
        answer = await engine.client.execute_command("PUBSUB", "SHARDNUMSUB", room)
        return int(answer[1])

    assert await subscribers() == 1
    await feed._heartbeat_once()
    for _ in range(50):  # the listener reads the confirmation
        if await subscribers() == 0:
            break
        await asyncio.sleep(0.05)
    assert await subscribers() == 0
    await chat.call(chat.core.disconnect, "c1")  # as the socket does after a failed connect
    member = await join(chat, "orphan")  # and the room works once Redis answers
    await post(history, "orphan", "hello")
    await member.wait_for("hello", 5)
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_worker_reaped_while_cut_off_registers_its_members_again(
    chat: LocalChat,
) -> None:
    """A worker whose heartbeat lapsed (Redis unreachable for longer than its TTL) is reaped by
    another: its members are taken out of Redis. When it reaches Redis again, its members
    are still connected to it, so it must register them again, or counts stay wrong."""
    engine = chat.engine
    assert engine is not None
    feed = engine.feed
    await join(chat, "counted")
    assert await feed.count("counted") == 1
    await cut_off(feed)
    await feed.membership.reap(feed.worker)  # what another worker does to one that stopped beating
    assert await feed.count("counted") == 0
    await feed._heartbeat_once()
    assert await feed.count("counted") == 1


@pytest.mark.timeout(60)
async def test_a_big_dead_worker_is_reaped_in_a_few_round_trips_with_every_leave_told(
    chat: LocalChat,
) -> None:
    """A worker killed with 1,200 members is reaped by another. One by one, that took five
    round trips a member, 6,000 here: reaping a big worker could outlast the reaper's own
    heartbeat TTL (15 s) and get it reaped too. Every member must go, and every leave be told
    with the count it leaves behind, as one by one."""
    engine = chat.engine
    assert engine is not None
    feed = engine.feed
    watcher = await watch(chat, "watched")
    dead = {f"d{i}": "watched" if i < 5 else f"crowd-{i % 3}" for i in range(1200)}
    await register_dead_worker(feed, dead)
    assert await feed.count("watched") == 6
    await heard(watcher, 5)  # their joins
    watcher.frames.clear()

    with round_trips() as sends:
        await feed._heartbeat_once()  # it finds "dead" without a heartbeat
    assert sends[0] < 30  # 14 here, a canary's among them; 6,014 one by one
    assert await engine.client.exists(conns_key("dead")) == 0
    assert [await feed.count(room) for room in ("watched", "crowd-0", "crowd-1")] == [1, 0, 0]
    leaves = await heard(watcher, 5)
    assert [(event, count) for event, _, count in leaves] == [
        ("leave", count) for count in (5, 4, 3, 2, 1)
    ]
    assert {user for _, user, _ in leaves} == {f"user-d{i}" for i in range(5)}
    watcher.writer.cancel()


@pytest.mark.timeout(60)
async def test_a_big_worker_reaped_while_cut_off_registers_again_in_a_few_round_trips(
    chat: LocalChat,
) -> None:
    """A worker with 600 members, reaped while cut off, registers them again when Redis
    answers. One by one, that took three round trips a member (1,800 here), inside the
    heartbeat: a slow link could make it outlast the TTL, and the worker be reaped again.
    Every join must be told, with the count one by one would have shown."""
    engine = chat.engine
    assert engine is not None
    feed = engine.feed
    watcher = await watch(chat, "watched")
    for i in range(599):
        room = "watched" if i < 5 else f"crowd-{i % 3}"
        member = Principal(id=f"u-{i}", name="someone", echo="someone")
        await chat.call(chat.core.connect, f"c{i}", room, member, ConnectParams())
    await cut_off(feed)
    await feed.membership.reap(feed.worker)  # what another worker does to one that stopped beating
    assert await feed.count("watched") == 0
    await heard(watcher, 5 + 5)  # the joins, then the reap's leaves (late ones under load)
    watcher.frames.clear()

    with round_trips() as sends:
        await feed._heartbeat_once()
    assert sends[0] < 30  # 8 here; 1,810 one by one
    counts = [await feed.count(room) for room in ("watched", "crowd-0", "crowd-1", "crowd-2")]
    assert counts == [6, 198, 198, 198]
    joins = await heard(watcher, 5)
    assert [(event, count) for event, _, count in joins] == [
        ("join", count) for count in (2, 3, 4, 5, 6)
    ]
    watcher.writer.cancel()


@pytest.mark.timeout(60)
async def test_a_publication_redis_py_sends_again_is_stored_once(
    chat: LocalChat, redis: RedisServer
) -> None:
    """redis-py sends a pipeline again when its answer is later than the socket timeout (5 s)
    or its connection breaks, and by then the publish script may have run. A Redis that
    stalled for 6 s (a slow command, a fork for a snapshot) made one frame two messages,
    under two ids, for every member."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    await join(chat, "stalled")  # c1, a text client
    reader = await watch(chat, "stalled")
    await chat.call(chat.core.receive, "c1", ["before"])  # the script is loaded
    _, stall = await asyncio.open_connection("127.0.0.1", redis.port)
    stall.write(b"DEBUG SLEEP 6\r\n")
    await stall.drain()
    await asyncio.sleep(0.2)  # Redis is asleep
    await chat.call(chat.core.receive, "c1", ["sent once"])
    stall.close()
    stored = [(m.id, m.text) for m in await history.after("stalled", 0, 10)]
    assert stored == [(1, "before"), (2, "sent once")]
    await reader.wait_for("sent once", 3)
    await asyncio.sleep(0.5)  # a second copy would follow at once
    messages = [json.loads(f) for f in reader.frames if '"type":"message"' in f]
    assert [m["id"] for m in messages] == [1, 2]
    reader.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_member_whose_leave_redis_missed_is_taken_out_by_the_heartbeat(
    chat: LocalChat,
) -> None:
    """A socket closes while Redis cannot be told (paused for a failover, the pool busy for
    10 s): its removal fails, after the member is gone here. It stayed in its room's count for
    as long as the worker lived, and nobody heard it leave."""
    assert chat.engine is not None
    feed = chat.engine.feed
    watcher = await watch(chat, "strays")
    await join(chat, "strays")  # c1
    with leave_fails(feed), pytest.raises(StoreUnavailable):
        await chat.call(chat.core.disconnect, "c1")
    assert await feed.count("strays") == 2
    await feed._heartbeat_once()
    assert await feed.count("strays") == 1
    assert await heard(watcher, 2) == [("join", "u-c1", 2), ("leave", "u-c1", 1)]
    watcher.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_member_a_fan_out_finds_gone_is_announced_once_though_its_leave_failed(
    chat: LocalChat,
) -> None:
    """A fan-out finds a socket gone and forgets it: its removal runs as a task, and fails.
    The core announced the leave at once (before the removal, with a count that still held it),
    and the heartbeat that removed the stray announced it again."""
    assert chat.engine is not None
    feed = chat.engine.feed
    watcher = await watch(chat, "gone")
    await join(chat, "gone")  # c1
    await heard(watcher, 1)
    member = feed.get("c1")
    assert member is not None
    feed.update(replace(member, connected_at=0.0))  # long past its handshake
    chat.delivery.unregister("c1")  # its socket went away without a word
    with leave_fails(feed):
        await post(feed.subscription._history, "gone", "anyone there?")
        await watcher.wait_for("anyone there?", 3)
    await feed._heartbeat_once()
    assert await heard(watcher, 2) == [("join", "u-c1", 2), ("leave", "u-c1", 1)]
    watcher.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_leave_whose_answer_is_lost_is_announced_once(chat: LocalChat) -> None:
    """The removal ran in Redis, but its answer never came (the link broke, or it came after
    the 10 s a call may take). The core, seeing the error, announced nothing, and the
    heartbeat found the member already out of its room: nobody heard it leave."""
    assert chat.engine is not None
    feed = chat.engine.feed
    watcher = await watch(chat, "lost")
    await join(chat, "lost")  # c1
    with leave_fails(feed, after_running=True), pytest.raises(StoreUnavailable):
        await chat.call(chat.core.disconnect, "c1")
    await feed._heartbeat_once()
    assert await heard(watcher, 2) == [("join", "u-c1", 2), ("leave", "u-c1", 1)]
    watcher.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_member_that_leaves_after_a_reaper_removed_it_is_announced_once(
    chat: LocalChat,
) -> None:
    """A worker cut off for longer than its TTL is reaped, and the room told its members
    left. One of them disconnects before the worker registers them again: its removal found
    nothing to remove, but the core announced its leave a second time."""
    assert chat.engine is not None
    feed = chat.engine.feed
    watcher = await watch(chat, "twice")
    await join(chat, "twice")  # c1
    await cut_off(feed)
    await feed.membership.reap(feed.worker)
    await chat.call(chat.core.disconnect, "c1")
    leaves = [(event, user) for event, user, _ in await heard(watcher, 2) if event == "leave"]
    assert leaves == [("leave", "u-c1")]
    watcher.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_worker_that_beats_again_while_it_is_reaped_keeps_its_members(
    chat: LocalChat,
) -> None:
    """A worker cut off for longer than its TTL comes back just as another reaps it: after
    the reaper claimed it, before it removed its members. Its members, still connected to
    it, must end registered, counted and reapable (under its new life); a leave and a join
    again per member at most is the price of reaping slot by slot (docs/scaling.md)."""
    assert chat.engine is not None
    feed = chat.engine.feed
    watcher = await watch(chat, "comeback")
    await register_dead_worker(feed, {"d1": "comeback", "d2": "comeback"}, worker=feed.worker)
    await heard(watcher, 2)  # their joins
    watcher.frames.clear()
    remove = feed.membership._remove
    members = {
        i: Connection(i, "comeback", f"user-{i}", "someone", Dialect.JSON, "") for i in ("d1", "d2")
    }

    async def back_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # It beats, finds itself off the list (a new life), and registers its members again.
        await feed.membership.beat()
        assert await feed.membership.enlist()
        again = [*members.values(), *feed._connections.values()]  # the watcher's too
        await feed.membership.register_again(again, lambda _: True)
        return await remove(*args, **kwargs)

    feed.membership._remove = back_meanwhile
    await cut_off(feed)
    await feed.membership.reap(feed.worker)
    feed.membership._remove = remove
    assert await feed.count("comeback") == 3
    records = await feed.membership._redis.hgetall(members_key("comeback"))
    lives = {as_text(i): json.loads(r)["life"] for i, r in records.items() if as_text(i) in members}
    assert lives == {"d1": 2, "d2": 2}
    events = await heard(watcher, 0)
    for i in members:
        assert [event for event, user, _ in events if user == f"user-{i}"] in (
            [],
            ["leave", "join"],
        )
    # And reapable: once it dies for good, its members go.
    await feed.membership._redis.delete(beat_key(feed.worker))
    await feed.membership.reap(feed.worker)
    assert await feed.count("comeback") == 0
    watcher.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_stale_reaper_never_removes_a_member_registered_under_a_newer_life(
    chat: LocalChat,
) -> None:
    """A reaper claims a dead worker's life, and is slow. The worker was only cut off: it
    comes back, takes a new life and registers its member again. The stale reaper, going on
    with the life it claimed, must not take that member out of its room (it would stay
    connected, uncounted and unannounced until its worker died)."""
    assert chat.engine is not None
    feed = chat.engine.feed
    await register_dead_worker(feed, {"d1": "stale"}, life=1)
    remove = feed.membership._remove

    async def slow(*args: Any, **kwargs: Any) -> Any:
        # Between the claim and the removal, the worker is back under life 2.
        await register_dead_worker(feed, {"d1": "stale"}, life=2)
        return await remove(*args, **kwargs)

    feed.membership._remove = slow
    await feed.membership.reap("dead")
    assert await feed.count("stale") == 1
    assert await feed.membership._redis.hget(conns_key("dead"), "d1") == b"2:stale"


@pytest.mark.timeout(30)
async def test_a_member_registered_again_while_its_worker_is_reaped_stays_reapable(
    chat: LocalChat,
) -> None:
    """A worker comes back, and registers a member again, after the reaper removed its
    members but before it was done with the worker: the reaper then deleted the worker's
    whole list, and the member, in its room but on no worker's list, was never reaped when
    its worker died for good."""
    assert chat.engine is not None
    feed = chat.engine.feed
    await register_dead_worker(feed, {"d1": "comeback"})
    remove = feed.membership._remove

    async def back_after(*args: Any, **kwargs: Any) -> Any:
        places = await remove(*args, **kwargs)
        # Back, it took a new life (`enlist`), and registers d1 under it.
        await register_dead_worker(feed, {"d1": "comeback"}, life=2)
        return places

    feed.membership._remove = back_after
    await feed.membership.reap("dead")
    assert await feed.membership._redis.hkeys(conns_key("dead")) == [b"d1"]
    assert await feed.count("comeback") == 1


@pytest.mark.timeout(30)
async def test_a_member_that_leaves_while_its_worker_registers_again_is_not_left_behind(
    chat: LocalChat,
) -> None:
    """A worker reaped while cut off registers its members again from a list taken first.
    One that left meanwhile (its removal run before the JOIN) was registered again, for good,
    and announced as joining."""
    assert chat.engine is not None
    feed = chat.engine.feed
    watcher = await watch(chat, "back")
    await join(chat, "back")  # c1
    listed = [feed.get("j1"), feed.get("c1")]
    await cut_off(feed)
    await feed.membership.reap(feed.worker)
    await chat.call(chat.core.disconnect, "c1")
    await heard(watcher, 3)  # c1 joined, was reaped, and left
    watcher.frames.clear()
    members = [member for member in listed if member is not None]
    await feed.membership.register_again(members, lambda id_: feed.get(id_) is not None)
    assert await feed.count("back") == 1
    assert await heard(watcher, 0) == []
    watcher.writer.cancel()


@pytest.mark.timeout(30)
async def test_the_last_presence_a_room_hears_has_its_count(chat: LocalChat) -> None:
    """Two members join at once. Each join's count was read, then published, apart: the
    first to read could publish last, and the room showed 2 members while 3 were in it."""
    assert chat.engine is not None
    feed = chat.engine.feed
    watcher = await watch(chat, "busy")
    count = feed.count
    first = True

    async def slow_first(room: str) -> int:
        nonlocal first
        answer = await count(room)
        if first:
            first = False
            await asyncio.sleep(0.3)
        return answer

    feed.count = slow_first  # type: ignore[method-assign]
    await asyncio.gather(join(chat, "busy", "c1"), join(chat, "busy", "c2"))
    feed.count = count  # type: ignore[method-assign]
    events = await heard(watcher, 2)
    assert [counted for _, _, counted in events][-1] == await feed.count("busy") == 3
    watcher.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_gap_that_cannot_be_filled_at_once_is_filled_by_a_renewal(
    chat: LocalChat,
) -> None:
    """A message arrives after a gap (one lost on the way), and reading the gap from the
    stream fails (Redis busy). The message was dropped, and the gap's too, until the room's
    next message: in a quiet room, never."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    member = await join(chat, "gappy")
    await post(history, "gappy", "one")
    await member.wait_for("one", 3)
    keys, args = history._publication([(Draft("gappy", "u2", "u2", "two"), 0.0)])
    keys[2] = "wschat:{gappy}:nowhere"  # stored, but lost on the way here
    client = chat.engine.client
    await client.evalsha(await client.script_load(PUBLISH), len(keys), *keys, *args)
    read = history.sent_after
    busy = True

    async def busy_once(room: str, after_id: int, limit: int) -> Any:
        nonlocal busy
        if busy:
            busy = False
            raise RedisConnectionError("Redis went away")
        return await read(room, after_id, limit)

    history.sent_after = busy_once  # type: ignore[method-assign]
    await post(history, "gappy", "three")
    await member.wait_for("three", 5)
    lines = [frame for frame in member.frames if "two" in frame or "three" in frame]
    assert ["two" in line for line in lines] == [True, False]
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_room_whose_counter_is_lost_starts_over_empty(chat: LocalChat) -> None:
    """A room's counter evicted (an `allkeys-*` policy) or deleted by hand, its stream kept:
    the join made a new epoch, but the stream still held ids 1 and 2, and every send failed
    until the counter passed them."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    await post(history, "evicted", "old one")
    await post(history, "evicted", "old two")
    await chat.engine.client.delete(seq_key("evicted"))
    await join(chat, "evicted")
    await post(history, "evicted", "new")
    assert [(m.id, m.text) for m in await history.after("evicted", 0, 10)] == [(1, "new")]


@pytest.mark.timeout(30)
async def test_a_room_without_members_keeps_its_counter_only_as_long_as_its_history(
    chat: LocalChat,
) -> None:
    """Joining or reading a room made its counter, kept for good: a client cycling through
    room names (on a socket, or through REST history and publish) grew Redis without bound.
    Now a room's counter expires with its history once it has no members."""
    assert chat.engine is not None
    feed = chat.engine.feed
    client = chat.engine.client
    ttl = feed.subscription._history.ttl

    async def expiry(room: str) -> int:
        return int(await client.ttl(seq_key(room)))

    await join(chat, "joined")
    await post(feed.subscription._history, "joined", "said")
    assert await expiry("joined") == -1  # kept while it has members
    await chat.call(chat.core.disconnect, "c1")
    assert 0 < await expiry("joined") <= ttl
    await join(chat, "joined", "c2")
    assert await expiry("joined") == -1
    await post(feed.subscription._history, "posted", "through REST")
    assert 0 < await expiry("posted") <= ttl
    await register_dead_worker(feed, {"d1": "reaped"})
    await post(feed.subscription._history, "reaped", "said")
    await feed.membership.reap("dead")
    assert 0 < await expiry("reaped") <= ttl


@pytest.mark.timeout(30)
async def test_a_room_left_empty_without_history_keeps_no_key(chat: LocalChat) -> None:
    """Each join made its room's counter (for the epoch), and the leave that emptied the room
    kept it for the history's TTL, 7 days, though the room had no history: 300 handshakes of
    a read-only principal (no rate limit counts handshakes) left 300 keys. A room left empty
    without history keeps nothing, whoever empties it: a leave, a reaper, a heartbeat taking
    out a member whose leave failed."""
    assert chat.engine is not None
    feed = chat.engine.feed
    client = chat.engine.client

    async def kept(room: str) -> list[str]:
        return [key.decode() async for key in client.scan_iter(match=f"{channel(room)}:*")]

    await join(chat, "passing")  # c1
    assert await kept("passing") != []
    await chat.call(chat.core.disconnect, "c1")
    assert await kept("passing") == []
    await register_dead_worker(feed, {"d1": "reaped"})
    await feed.membership.reap("dead")
    assert await kept("reaped") == []
    await join(chat, "strayed", "c2")
    with leave_fails(feed), pytest.raises(StoreUnavailable):
        await chat.call(chat.core.disconnect, "c2")
    await feed._heartbeat_once()
    assert await kept("strayed") == []
    assert not await client.exists(conns_key(feed.worker))  # no member left on this worker


@pytest.mark.timeout(30)
async def test_json_members_joining_a_room_just_left_empty_stay(chat: LocalChat) -> None:
    """A room without history starts over once it is empty: its next join gives it a new
    epoch. This worker still held the room under the old one (a room's subscription stays a
    while after its last member here): members joining it together must not take the new
    epoch for the room's history lost and close one another (1012)."""
    assert chat.engine is not None
    members = [Member(chat, f"j{n}") for n in range(3)]

    async def enter(connection_id: str) -> None:
        principal = Principal(id=f"u-{connection_id}", name="u", echo="u")
        params = ConnectParams(Dialect.JSON)
        await chat.call(chat.core.connect, connection_id, "emptied", principal, params)
        await chat.call(chat.core.welcome, connection_id)

    await enter("j0")
    await chat.call(chat.core.disconnect, "j0")
    await asyncio.gather(enter("j1"), enter("j2"))
    await post(chat.engine.feed.subscription._history, "emptied", "hello")
    for member in members[1:]:
        await member.wait_for("hello", 5)
        assert member.closes == []
    for member in members:
        member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_retry_in_a_room_that_started_over_is_never_answered_with_another_message(
    chat: LocalChat,
) -> None:
    """A room whose counter was lost (evicted, deleted) starts over empty when a member joins:
    the join emptied its stream but kept its retry keys, so a retry of an old message was
    answered with the new message that took its id, another user's, and never stored."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    await history.append(Draft("restarted", "u1", "u1", "mine", "k"), ts=0.0)  # id 1
    await chat.engine.client.delete(seq_key("restarted"))
    await join(chat, "restarted")
    await post(history, "restarted", "someone else's")  # id 1 again, under the new epoch
    retried, created = await history.append(Draft("restarted", "u1", "u1", "mine", "k"), ts=0.0)
    assert (retried.id, retried.text, created) == (2, "mine", True)


@pytest.mark.timeout(30)
async def test_reading_a_room_stores_nothing(chat: LocalChat) -> None:
    """A REST read of a room nobody joined made its counter, kept 7 days: 1,000 reads of new
    names left 1,000 keys (about 6 GiB a day at one client's pace). A read stores nothing;
    a room without a counter has no history, and its first member or message makes one."""
    assert chat.engine is not None
    client = chat.engine.client
    history = chat.engine.feed.subscription._history
    await history.append(Draft("lost", "u", "u", "old one", "k"), ts=0.0)
    await client.delete(seq_key("lost"))  # evicted, its stream and retry keys left behind
    keys = await client.dbsize()
    for room in [f"unread-{n}" for n in range(20)] + ["lost"]:
        assert await chat.call(chat.core.read, room, 0, 100) == ([], 0)  # as REST reads
    assert await client.dbsize() == keys - 2  # the lost room's stream and retry keys went
    await join(chat, "unread-1")
    stored, _ = await chat.call(chat.core.publish, "unread-1", "u", "u", "first")
    assert stored.id == 1 and (await history.latest("unread-1"))[1]


@pytest.mark.timeout(30)
async def test_json_members_joining_a_room_without_history_together_stay(
    chat: LocalChat,
) -> None:
    """The first member here subscribes and reads the room, which has no epoch yet; the
    joins make it. Neither member may take that for the room starting over (closed, 1012)."""
    assert chat.engine is not None
    members = [Member(chat, f"j{n}") for n in range(2)]

    async def enter(connection_id: str) -> None:
        principal = Principal(id=f"u-{connection_id}", name="u", echo="u")
        params = ConnectParams(Dialect.JSON)
        await chat.call(chat.core.connect, connection_id, "fresh", principal, params)
        await chat.call(chat.core.welcome, connection_id)

    await asyncio.gather(enter("j0"), enter("j1"))
    await post(chat.engine.feed.subscription._history, "fresh", "hello")
    for member in members:
        await member.wait_for("hello", 5)
        assert member.closes == []
        member.writer.cancel()


@pytest.mark.timeout(30)
async def test_append_many_loads_the_script_again_when_redis_lost_it(chat: LocalChat) -> None:
    """When Redis has lost its scripts (restarted, or SCRIPT FLUSH), nothing in the pipeline
    ran: it loads the script and runs again, storing each draft once. (What append_many
    stores, in which order, is tests/ports/test_message_log.py's, on every engine.)"""
    assert chat.engine is not None
    history: RedisHistory = chat.engine.feed.subscription._history
    await chat.engine.client.script_flush()
    drafts = [Draft("batch", "u1", "u1", "one", "c1"), Draft("batch", "u2", "u2", "two")]
    stored = await history.append_many(drafts, ts=0.0)
    assert [(m.id, created) for m, created in stored] == [(1, True), (2, True)]
    assert [m.text for m in await history.after("batch", 0, 10)] == ["one", "two"]


@pytest.mark.timeout(60)
async def test_a_rooms_retry_keys_are_bounded_by_its_history_cap(redis: RedisServer) -> None:
    """A room capped at 50 messages held 300 retry keys (7 days each) after 300 posts with
    distinct `client_msg_id`s: Redis grew with the posts, not with the history docs/scaling.md
    says to size it for. A retry is answered while its message is in the stream, as in
    memory; keys an older worker left are not read, and expire as they were set to."""
    history = RedisHistory(aioredis.Redis.from_url(redis.url()), size=50, ttl=3600)
    client = history._redis
    old = f"{channel('capped')}:dedup:u:old"
    await client.set(old, "1", ex=600)  # a retry key of a worker before: message 1's
    stored = [
        await history.append(Draft("capped", "u", "u", f"m{n}", f"k{n}"), ts=0.0)
        for n in range(300)
    ]
    assert [(m.id, created) for m, created in stored] == [(n + 1, True) for n in range(300)]
    keys = {key.decode() async for key in client.scan_iter(match=f"{channel('capped')}:*")}
    retry_keys = [key for key in keys if ":dedup:" in key and key != old]
    retries = len(retry_keys) + await client.zcard(retries_key("capped"))
    assert retries == 50 == await client.xlen(log_key("capped"))  # was 300, and 50 messages
    parts = {key.removeprefix(f"{channel('capped')}:").partition(":")[0] for key in keys}
    assert parts == {"seq", "log", "retries", "call", "dedup"}  # calls go after 120 s
    newest, kept = await history.append(Draft("capped", "u", "u", "again", "k250"), ts=0.0)
    assert (newest.id, newest.text, kept) == (251, "m250", False)  # in the stream: answered
    again, created = await history.append(Draft("capped", "u", "u", "m249", "k249"), ts=0.0)
    assert (again.id, created) == (301, True)  # it left the stream: a new message
    assert await client.zcard(retries_key("capped")) == 50
    unread, created = await history.append(Draft("capped", "u", "u", "new", "old"), ts=0.0)
    assert (unread.id, created) == (302, True) and 0 < await client.ttl(old) <= 600
    await client.aclose()


@pytest.mark.timeout(60)
async def test_what_a_publish_call_keeps_is_small_whatever_its_messages_hold(
    redis: RedisServer,
) -> None:
    """Each publish call keeps its answer for 120 s, should redis-py send it again, and a
    retry's answer held the whole message it found: 40 retries of a 32 KB message left 40
    keys of 32 KB (1.4 MB for 120 s, outside the history cap; four sockets retrying for 8 s,
    19.8 MB). A call keeps only the ids it stored, and one that stored nothing keeps nothing."""
    history = RedisHistory(aioredis.Redis.from_url(redis.url()), size=50, ttl=3600)
    client = history._redis
    big = "x" * 32000
    first, _ = await history.append(Draft("kept", "u", "u", big, "same"), ts=0.0)
    for _ in range(40):
        again, created = await history.append(Draft("kept", "u", "u", big, "same"), ts=0.0)
        assert (again.id, again.text, created) == (first.id, big, False)
    mixed = [Draft("kept", "u", "u", "new", "other"), Draft("kept", "u", "u", big, "same")]
    stored = await history.append_many(mixed, ts=0.0)
    assert [(m.id, m.text, created) for m, created in stored] == [(2, "new", True), (1, big, False)]
    calls = [key async for key in client.scan_iter(match=f"{channel('kept')}:call:*")]
    assert len(calls) == 2  # the two calls that stored a message (42 before)
    sizes = [await client.memory_usage(key) for key in calls]
    assert max(sizes) < 200, sizes  # 32,856 bytes for a retry's before
    await client.aclose()


@pytest.mark.timeout(30)
async def test_a_call_sent_again_answers_its_retries_from_the_stream(redis: RedisServer) -> None:
    """A call that redis-py sends again answers what it stored from its own key, and its
    retries from the stream, as its first run did. A retry whose message left the stream in
    between is a new message, as any retry is once its message has left history (the first
    run's answer reached nobody, and stored nothing for it); stored once, however often the
    call comes again."""
    history = RedisHistory(aioredis.Redis.from_url(redis.url()), size=3, ttl=3600)
    client = history._redis
    sha = await client.script_load(PUBLISH)
    await history.append(Draft("again", "u", "u", "old", "k0"), ts=0.0)  # id 1
    drafts = [Draft("again", "u", "u", "new", "k1"), Draft("again", "u", "u", "old", "k0")]
    keys, args = history._publication([(draft, 0.0) for draft in drafts])

    async def run() -> list[tuple[int, int, str]]:
        """Each draft's answer: created, id, and for a retry the text it found (the caller
        has a created message's)."""
        _, *each = await client.evalsha(sha, len(keys), *keys, *args)
        return [(int(c), int(i), "" if int(c) else json.loads(body)["text"]) for c, i, body in each]

    first = await run()
    assert first == [(1, 2, ""), (0, 1, "old")]
    assert await run() == first  # sent again: the same answer, nothing stored
    for n in range(3):
        await history.append(Draft("again", "u2", "u2", f"later {n}"), ts=0.0)  # ids 3 to 5
    assert await run() == [(1, 2, ""), (1, 6, "")]  # k0's message left the stream
    assert await run() == [(1, 2, ""), (1, 6, "")]
    assert [(m.id, m.text) for m in await history.after("again", 0, 10)] == [
        (4, "later 1"),
        (5, "later 2"),
        (6, "old"),
    ]
    await client.aclose()


@pytest.mark.timeout(30)
async def test_ids_up_to_the_largest_are_written_exactly(chat: LocalChat) -> None:
    """Lua wrote an id of 10**14 or more as `1e+14`: the stream refused it, and every send to
    the room failed. Every id up to 2**53-1 (the bound on ids, handler/chat/wire.py) is
    written, published, answered to a retry and read back exactly."""
    assert chat.engine is not None
    history: RedisHistory = chat.engine.feed.subscription._history
    member = await watch(chat, "far")
    await chat.engine.client.hset(seq_key("far"), "id", MAX_MESSAGE_ID - 2)
    sent = [Draft("far", "u", "u", text, text) for text in ("one", "two")]
    stored = await history.append_many([*sent, sent[0]], ts=0.0)
    one, two = MAX_MESSAGE_ID - 1, MAX_MESSAGE_ID
    assert [(m.id, created) for m, created in stored] == [(one, True), (two, True), (one, False)]
    read = await history.after("far", MAX_MESSAGE_ID - 2, 10)
    assert [(m.id, m.text) for m in read] == [(one, "one"), (two, "two")]
    assert (await history.latest("far"))[0] == MAX_MESSAGE_ID
    await member.wait_for(f'"id":{MAX_MESSAGE_ID},', 5)
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_publications_from_several_sockets_in_one_turn_share_a_pipeline(
    chat: LocalChat,
) -> None:
    """Sixteen senders in a busy room each have a message in flight: what their sockets hand
    over in the same turn of the event loop goes to Redis in one pipeline, in the order it
    was handed over, as one script run per room, instead of a round trip each. Redis counts
    the reads it made and the scripts it ran: eight publications in two rooms took eight of
    each, then one read and eight scripts."""
    assert chat.engine is not None
    history: RedisHistory = chat.engine.feed.subscription._history
    client = chat.engine.client

    async def counts() -> tuple[int, int]:
        stats, commands = await client.info("stats"), await client.info("commandstats")
        return stats["total_reads_processed"], commands["cmdstat_evalsha"]["calls"]

    for room in ("turn-a", "turn-b"):
        await history.append_many([Draft(room, "u0", "u0", "warm-up")], ts=0.0)
    reads_before, runs_before = await counts()
    stored = await asyncio.gather(
        *(
            history.append_many(
                [Draft(f"turn-{'ab'[n % 2]}", f"u{n}", f"u{n}", f"m{n}.{k}") for k in range(n % 3)],
                ts=0.0,
            )
            for n in range(8)
        )
    )
    reads_after, runs_after = await counts()
    reads, runs = reads_after - reads_before, runs_after - runs_before
    next_id = {"a": 2, "b": 2}
    for n, batch in enumerate(stored):
        room = "ab"[n % 2]
        expected = [(next_id[room] + k, f"turn-{room}", f"m{n}.{k}") for k in range(n % 3)]
        next_id[room] += n % 3
        assert [(m.id, m.room, m.text) for m, _ in batch] == expected
    # The pipeline, the first INFO, and a canary or heartbeat perhaps; one run per room.
    assert reads <= 4, reads
    assert runs == 2, runs


@pytest.mark.timeout(30)
async def test_no_room_name_reaches_another_rooms_keys(chat: LocalChat) -> None:
    """Room names may hold `}` and `:`. Unescaped, room `a}:dedup:u1:x` had its stream under
    room `a`'s hash tag, at the key of user u1's dedup entry for client_msg_id `x}:log` in
    room `a`: that send then failed with WRONGTYPE, and so did everything published to room
    `a` in the same script call."""
    assert chat.engine is not None
    history: RedisHistory = chat.engine.feed.subscription._history
    await history.append_many([Draft("a}:dedup:u1:x", "u2", "u2", "in the odd room")], ts=0.0)
    stored = await history.append_many(
        [Draft("a", "u9", "u9", "first"), Draft("a", "u1", "u1", "keyed", "x}:log")], ts=0.0
    )
    assert [(m.id, m.text, created) for m, created in stored] == [
        (1, "first", True),
        (2, "keyed", True),
    ]
    assert [m.text for m in await history.after("a}:dedup:u1:x", 0, 10)] == ["in the odd room"]
    assert len({channel(room) for room in ("a", "a}", "a%7D", "a:", "canary")}) == 5


@pytest.mark.timeout(30)
async def test_a_big_turn_is_published_in_several_script_calls(chat: LocalChat) -> None:
    """Redis queues a publication whole to every subscriber, and drops a subscriber whose
    queue passes its output-buffer limit (32 MB), with every room it hears: sixteen sockets'
    bursts of 30 KB texts in one script call passed it. A room's turn is cut into calls of
    about 256 K characters of text, still in order."""
    engine = chat.engine
    assert engine is not None
    history: RedisHistory = engine.feed.subscription._history
    member = await join(chat, "big")

    async def script_runs() -> int:
        return int((await engine.client.info("commandstats"))["cmdstat_evalsha"]["calls"])

    await post(history, "big", "warm-up")
    before = await script_runs()
    texts = [f"{n}:" + "x" * 100_000 for n in range(5)]
    stored = await asyncio.gather(
        history.append_many([Draft("big", "u1", "u1", t) for t in texts[:3]], ts=0.0),
        history.append_many([Draft("big", "u2", "u2", t) for t in texts[3:]], ts=0.0),
    )
    assert [(m.id, m.text) for batch in stored for m, _ in batch] == [
        (n + 2, t) for n, t in enumerate(texts)
    ]
    assert await script_runs() - before == 3  # 200 K, 200 K and 100 K characters
    await member.wait_for("4:x", 5)
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_message_published_before_batching_is_still_delivered(chat: LocalChat) -> None:
    """While workers of two versions share a Redis (a rolling deploy), one that published a
    message alone (`"m"` an object, `"s"` a string) is still heard."""
    engine = chat.engine
    assert engine is not None
    member = await join(chat, "mixed")
    await post(engine.feed.subscription._history, "mixed", "one")
    await member.wait_for("one", 5)
    epoch = (await engine.feed.subscription._history.latest("mixed"))[1]
    await engine.client.hset(f"{channel('mixed')}:seq", "id", 2)
    message = {"room": "mixed", "user_id": "u", "user_name": "u", "text": "two", "ts": 0.0}
    payload = {"e": epoch, "s": "", "m": {**message, "id": 2}}
    await engine.client.spublish(channel("mixed"), json.dumps(payload))
    await member.wait_for("two", 5)
    member.writer.cancel()


async def fail_over_losing(chat: LocalChat, room: str, kept: int) -> str:
    """What a failover to a replica that lacked the room's last writes leaves: its counter
    back at `kept`, its stream without the ids above, under the same epoch. Returns it."""
    assert chat.engine is not None
    client = chat.engine.client
    epoch = await client.hget(seq_key(room), "epoch")
    entries = await client.xrange(log_key(room), max=f"{kept}-0")
    pipe = client.pipeline(transaction=True)
    pipe.delete(log_key(room))  # the replica's stream never had the rest, nor its top id
    for entry_id, fields in entries:
        pipe.xadd(log_key(room), fields, id=entry_id)
    pipe.hset(seq_key(room), "id", kept)
    await pipe.execute()
    return str(epoch.decode())


@pytest.mark.timeout(30)
async def test_a_counter_behind_what_a_worker_delivered_starts_the_room_over_above_it(
    chat: LocalChat,
) -> None:
    """Redis fails over to a replica that lacked the room's last writes: its counter is back
    at 1 under the same epoch, though this worker delivered 3. The next publication used to
    take ids 2 and 3 again, which the worker (and every client) dropped as repeats: silent
    loss. It now goes on under a new epoch, from what the failover kept, and the JSON member
    here, holding the old ids, is closed with 1012 to resume and be told `recovered: false`."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    member = await watch(chat, "failover")
    text_member = await join(chat, "failover", "t1")
    for text in ("one", "two", "three"):
        await post(history, "failover", text)
    await text_member.wait_for("three", 5)
    before = await fail_over_losing(chat, "failover", kept=1)
    (message, created), *_ = await history.append_many(
        [Draft("failover", "u2", "u2", "after the failover")], ts=0.0
    )
    assert created and message.id == 2
    _, epoch = await history.latest("failover")
    assert epoch != before and epoch.endswith("+1")
    await text_member.wait_for("after the failover", 5)
    assert await member.closed(3) == [1012]
    # The text member heard each message once: the kept history is not sent again.
    assert sum("one" in frame for frame in text_member.frames) == 1
    # What the failover kept is the room's history under its new epoch.
    assert [(m.id, m.text) for m in await history.after("failover", 0, 10)] == [
        (1, "one"),
        (2, "after the failover"),
    ]
    member.writer.cancel()
    text_member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_client_resuming_past_a_counter_that_fell_behind_is_not_recovered(
    chat: LocalChat,
) -> None:
    """A worker with no member in the room knows nothing of its ids; the client resuming
    with `since=3` and its epoch does. Its welcome holds Redis to that: the room goes on under
    a new epoch, the welcome says `recovered: false` with it, and the next message is not id
    2 under the old one (which the client would drop as a repeat). (This worker
    subscribed the room before the welcome, under the old epoch: it hears the new one with
    the next message and closes its JSON members, this one too, which then resumes under
    the new epoch, recovered.)"""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    for text in ("one", "two", "three"):
        await post(history, "resumed", text)
    before = await fail_over_losing(chat, "resumed", kept=1)
    member = Member(chat, "j1")
    principal = Principal(id="u-j1", name="u-j1", echo="u-j1")
    params = ConnectParams(Dialect.JSON)
    await chat.call(chat.core.connect, "j1", "resumed", principal, params)
    await chat.call(chat.core.welcome, "j1", 3, before)
    await member.wait_for('"welcome"', 5)
    welcome = json.loads(member.frames[0])
    assert welcome["recovered"] is False and welcome["epoch"] != before
    _, latest_epoch = await history.latest("resumed")
    assert latest_epoch == welcome["epoch"]
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_ids_taken_again_past_a_workers_mark_by_one_without_it_are_found(
    chat: LocalChat,
) -> None:
    """After the failover, a worker with no member in the room (a REST publication) gets to
    the promoted replica first, while this worker's subscription is down, and takes ids 2, 3
    and 4 again: the counter is past the 3 this worker delivered, so the counter alone says
    nothing. But the message at id 3 is not the one this worker delivered there (it was sent
    at another time): its catch-up starts the room over, and the JSON member here, which
    holds the old 2 and 3, is closed with 1012 (it used to be sent 4 and miss the new 2 and
    3 for good)."""
    assert chat.engine is not None
    client = chat.engine.client
    history = chat.engine.feed.subscription._history
    member = await watch(chat, "raced")
    for text in ("one", "two", "three"):
        await history.append(Draft("raced", "u2", "u2", text), ts=time.time())
    await member.wait_for("three", 5)
    await fail_over_losing(chat, "raced", kept=1)
    elsewhere = RedisHistory(client, 1000, 3600)  # holds no mark for the room
    sha = await client.script_load(PUBLISH)
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # the failover's lost link
    for text in ("new two", "new three", "new four"):
        keys, args = elsewhere._publication([(Draft("raced", "u3", "u3", text), time.time())])
        pipe.evalsha(sha, len(keys), *keys, *args)
    await pipe.execute()
    assert await member.closed(DEAF_AFTER) == [1012]
    member.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_client_claiming_more_than_a_room_has_closes_no_one_else(
    chat: LocalChat,
) -> None:
    """A client resumes with the room's epoch and a `since` past its counter: either Redis
    lost writes that client saw, or the client lies. The room goes on under a new epoch all
    the same, but a JSON member here that holds nothing past the counter holds the same
    messages under the same ids as the new epoch: it stays, and hears what comes next (a
    client could otherwise close every member of a room with one handshake)."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    member = await watch(chat, "claimed")
    for text in ("one", "two"):
        await post(history, "claimed", text)
    await member.wait_for("two", 5)
    _, epoch = await history.latest("claimed")
    liar = Member(chat, "j2")
    principal = Principal(id="u-j2", name="u-j2", echo="u-j2")
    await chat.call(chat.core.connect, "j2", "claimed", principal, ConnectParams(Dialect.JSON))
    await chat.call(chat.core.welcome, "j2", 50, epoch)
    await liar.wait_for('"welcome"', 5)
    assert json.loads(liar.frames[0])["recovered"] is False
    await post(history, "claimed", "three")
    await member.wait_for("three", 5)
    assert member.closes == []
    assert (await history.latest("claimed"))[1] != epoch
    member.writer.cancel()
    liar.writer.cancel()


# Sent by the subscription, one channel per command in a cluster: the cluster client's.
PUBSUB = {b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PSUBSCRIBE"}


@contextlib.contextmanager
def commands_sent() -> Iterator[list[tuple[Any, ...]]]:
    """Every command this process sends to Redis meanwhile, alone or in a pipeline."""
    sent: list[tuple[Any, ...]] = []
    pack = AbstractConnection.pack_command

    def recorded(self: AbstractConnection, *args: Any) -> Any:
        sent.append(args)
        return pack(self, *args)

    AbstractConnection.pack_command = recorded  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        AbstractConnection.pack_command = pack  # type: ignore[method-assign]


@pytest.mark.timeout(60)
async def test_every_script_and_command_touches_keys_of_one_slot(chat: LocalChat) -> None:
    """A Redis Cluster refuses a script or command whose keys hash to two slots (CROSSSLOT):
    JOIN touched a room's keys and its worker's together. Every call the engine makes, in a
    chat's whole life (joins, messages, a resume, listing, leaves, strays, reaping a dead
    worker, being reaped and registering again), must touch one slot; Redis itself says
    which keys each touches (COMMAND GETKEYS)."""
    assert chat.engine is not None
    feed = chat.engine.feed
    history = feed.subscription._history
    membership = feed.membership
    membership.one_node = False  # as on a cluster: one Redis may take a call across slots
    with commands_sent() as sent:
        watcher = await watch(chat, "slots")
        await join(chat, "slots")  # c1
        await join(chat, "other", "c2")
        await chat.call(chat.core.receive, "c1", ["hello"])
        drafts = [Draft("slots", "u2", "u2", "a"), Draft("other", "u2", "u2", "b")]
        await history.append_many(drafts, 0.0)  # two rooms: two calls
        await history.latest("slots")
        await feed.users("slots", 10)
        await feed.count("slots")
        await feed.typing(feed.local_members("slots")[0])
        await chat.call(chat.core.disconnect, "c1")
        with leave_fails(feed), pytest.raises(StoreUnavailable):
            await chat.call(chat.core.disconnect, "c2")
        await register_dead_worker(feed, {"d1": "slots", "d2": "other"})
        await feed._heartbeat_once()  # a stray out, the dead worker reaped
        await cut_off(feed)
        await membership.reap(feed.worker)
        await feed._heartbeat_once()  # reaped: a new life, its members again
        await membership.withdraw()
    scripts = {
        membership._join.sha: "JOIN",
        membership._remove_script.sha: "REMOVE",
        membership._claim.sha: "CLAIM",
        membership._forget.sha: "FORGET",
        membership._presence_script.sha: "PRESENCE",
        history._publish.sha: "PUBLISH",
        history._latest.sha: "LATEST",
    }
    seen = set()
    for command in sent:
        name = str(command[0]).upper().encode() if isinstance(command[0], str) else command[0]
        if name.upper() in PUBSUB:
            continue
        if name.upper() == b"EVALSHA":
            seen.add(scripts.get(as_text(command[1]), as_text(command[1])))
        try:
            keys = await chat.engine.client.execute_command("COMMAND GETKEYS", *command)
        except ResponseError:  # a command without keys
            continue
        slots = {key_slot(key if isinstance(key, bytes) else str(key).encode()) for key in keys}
        assert len(slots) <= 1, (command[:8], keys)
    assert set(scripts.values()) <= seen
    watcher.writer.cancel()


async def script_calls(chat: LocalChat) -> int:
    """Scripts Redis ran so far (every client's)."""
    assert chat.engine is not None
    stats = await chat.engine.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.timeout(30)
async def test_joins_into_one_room_at_once_go_together_each_announced_once(
    chat: LocalChat,
) -> None:
    """A storm of joins into one room on one worker took one script call each, one after
    the other. Joins made while the room's call is in flight go together in the next one
    (issue 30), and each is still announced once, with the count it left; each gets the
    room's epoch from the call that registered it."""
    assert chat.engine is not None
    feed = chat.engine.feed
    watcher = await watch(chat, "storm")
    members = [
        # 12: a watcher's outbox holds 16 frames, and presence goes at once in these tests
        Connection(f"s{i}", "storm", f"user-s{i}", "someone", Dialect.JSON, "")
        for i in range(12)
    ]
    before = await script_calls(chat)
    joined = await asyncio.gather(*(feed.membership.register(member) for member in members))
    calls = await script_calls(chat) - before
    assert calls < len(members) // 2  # 2 here (a lone first, then the rest); 12 one by one
    assert len({epoch for epoch, _ in joined}) == 1
    # Each gets the count its own join left, in the order of the joins.
    assert [count for _, count in joined] == list(range(2, 14))
    assert await feed.count("storm") == 13
    events = await heard(watcher, 12)
    assert [(event, count) for event, _, count in events] == [
        ("join", count) for count in range(2, 14)
    ]
    assert sorted(user for _, user, _ in events) == sorted(m.user_id for m in members)
    watcher.writer.cancel()


@pytest.mark.timeout(30)
async def test_a_welcome_reads_the_head_and_the_page_in_one_call_and_takes_the_count_from_the_join(
    redis: RedisServer,
) -> None:
    """A welcome read the room's head, its history and its count: three round trips one
    after the other. Where presence is batched (as `wschat serve` has it) the count comes
    with the join now, and the head and the page are one script call (in that order: every
    id up to the head not in the page has expired)."""
    chat = build_local_chat(Settings(redis_url=redis.url()))
    assert chat.engine is not None
    await chat.engine.start()
    await watch(chat, "reads")  # the room subscribed, the scripts loaded
    await chat.call(chat.core.receive, "j1", ['{"action":"sendmessage","text":"hi"}'])
    member = Member(chat, "j2")
    principal = Principal(id="u-j2", name="u-j2", echo="u-j2")
    await chat.call(chat.core.connect, "j2", "reads", principal, ConnectParams(Dialect.JSON))
    with commands_sent() as sent:
        await chat.call(chat.core.welcome, "j2")
    assert [command[0] for command in sent] == ["EVALSHA"]
    await member.wait_for('"welcome"', 5)
    (welcome,) = [json.loads(frame) for frame in member.frames if '"welcome"' in frame]
    assert welcome["count"] == 2
    assert [message["text"] for message in welcome["history"]] == ["hi"]
    await chat.engine.stop()


@pytest.mark.timeout(30)
async def test_on_one_redis_a_join_and_a_leave_are_one_call_each_with_their_conns_entry(
    chat: LocalChat,
) -> None:
    """A join wrote its worker's conns entry in a call of its own before its room's, and a
    leave deleted it in one after: two round trips each. On one Redis (not a cluster) the
    room's call writes it, in the same atomic step: first for a join, last for a leave."""
    assert chat.engine is not None
    feed = chat.engine.feed
    member = Connection("one", "calls", "user-one", "someone", Dialect.JSON, "")
    client = chat.engine.client
    warm = Connection("warm", "calls", "user-warm", "someone", Dialect.JSON, "")
    await feed.membership.register(warm)  # the pool's connection made, the script loaded
    await feed.membership.leave(warm)
    with commands_sent() as sent:
        await feed.membership.register(member)
    assert [command[0] for command in sent] == ["EVALSHA"]
    assert await client.hget(f"wschat:worker:{{{feed.worker}}}:conns", "one") is not None
    with commands_sent() as sent:
        await feed.membership.leave(member)
    assert [command[0] for command in sent] == ["EVALSHA"]
    assert await client.hget(f"wschat:worker:{{{feed.worker}}}:conns", "one") is None
    assert await feed.count("calls") == 0


@pytest.mark.timeout(30)
async def test_joins_and_welcome_reads_made_at_once_share_one_round_trip(
    chat: LocalChat,
) -> None:
    """A room's batch of joins went in a script call of its own beside the welcomes' read
    pipeline: two round trips where one does (a reconnect storm makes both at once, all
    the time). Now the batch waits its turn with the reads, and grows meanwhile."""
    assert chat.engine is not None
    feed = chat.engine.feed
    history = feed.subscription._history
    members = [
        Connection(f"t{i}", "trips", f"user-t{i}", "someone", Dialect.JSON, "") for i in range(8)
    ]
    await feed.membership.register(members[0])  # the pool's connection made, scripts loaded
    await history.opening("trips", None, NO_MARK, 10)
    with round_trips(carrying=b"EVALSHA") as sends:
        joined, _ = await asyncio.gather(
            asyncio.gather(*(feed.membership.register(member) for member in members[1:])),
            asyncio.gather(*(history.opening("trips", None, NO_MARK, 10) for _ in members[1:])),
        )
    assert sends == [1]
    assert [count for _, count in joined] == list(range(2, 9))
    assert await feed.count("trips") == 8


@pytest.mark.timeout(30)
async def test_publications_made_while_one_is_in_flight_go_together_in_the_next(
    chat: LocalChat,
) -> None:
    """Each turn of the loop sent the publications handed over in it in a pipeline of its
    own, however many were in flight: senders whose messages come in turns of their own
    took a round trip each (and a pool connection each while the others were out). Now
    those made while a pipeline is in flight wait for it, and go together, in order."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    await history.append(Draft("pubs", "u0", "u0", "warm"), ts=0.0)  # the script loaded
    await chat.engine.client.client_pause(1000, all=False)  # the first pipeline stays out
    with round_trips(carrying=history._publish.sha.encode()) as sends:
        first = asyncio.create_task(history.append(Draft("pubs", "u1", "u1", "first"), 0.0))
        await asyncio.sleep(0.05)
        later = []
        for n in range(2, 6):
            draft = Draft("pubs", f"u{n}", f"u{n}", f"later {n}")
            later.append(asyncio.create_task(history.append(draft, 0.0)))
            await asyncio.sleep(0)  # each in a turn of its own
        stored = [await first, *[await task for task in later]]
    assert sends == [2]
    assert [(message.id, message.text) for message, _ in stored] == [
        (2, "first"),
        (3, "later 2"),
        (4, "later 3"),
        (5, "later 4"),
        (6, "later 5"),
    ]


@pytest.mark.timeout(30)
async def test_a_join_and_a_leave_of_one_member_in_one_batch_are_both_announced(
    chat: LocalChat,
) -> None:
    """A member that joins and leaves while its room's call is in flight goes in one batch
    with both changes, in order: announced joining, then leaving, with their counts, and
    not left in the room."""
    assert chat.engine is not None
    feed = chat.engine.feed
    watcher = await watch(chat, "pair")
    member = Connection("p1", "pair", "user-p1", "someone", Dialect.JSON, "")
    batch = feed.membership._room_batch("pair")
    before = await script_calls(chat)
    joined, left = await asyncio.gather(batch.submit(("j", member)), batch.submit(("l", member)))
    assert await script_calls(chat) - before == 1
    assert (joined[1], left[1]) == (1, 1)
    assert await feed.count("pair") == 1
    assert await heard(watcher, 2) == [("join", "user-p1", 2), ("leave", "user-p1", 1)]
    watcher.writer.cancel()


@pytest.mark.timeout(30)
async def test_joins_heard_where_presence_is_batched_list_no_members_each(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each join heard on the room's channel listed the worker's members of the room, which
    a batched room does not use: a storm of N joins, N lists of up to N members."""
    chat = build_local_chat(Settings(redis_url=redis.url()))
    assert chat.engine is not None
    await chat.engine.start()
    feed = chat.engine.feed
    await watch(chat, "heard")
    listed: list[str] = []
    members = feed.subscription.members

    def counted(room: str) -> list[Connection]:
        listed.append(room)
        return members(room)

    monkeypatch.setattr(feed.subscription, "members", counted)
    joiners = [Connection(f"h{i}", "heard", f"user-h{i}", "h", Dialect.JSON, "") for i in range(20)]
    await asyncio.gather(*(feed.membership.register(member) for member in joiners))
    watcher = Member(chat, "j1")
    await asyncio.sleep(0.8)  # heard, and the batch (0.3 s) gone out
    assert 1 <= len(listed) <= 3  # by the batches that went out, not by each of 20 joins
    assert await feed.count("heard") == 21
    watcher.writer.cancel()
    await chat.engine.stop()
