"""A worker's subscription on a real Redis Cluster (three primaries, three replicas, on
loopback: tests/support/redis_server.py): a link per node, each with its canary; a room
whose slot migrates mid-chat, and one whose primary is killed mid-chat, followed to their
new node and caught up, nothing lost and nothing twice. In process, where the rooms' nodes
can be chosen; the members are added to the subscription as a join does before it registers
them (the whole servers on a cluster: tests/contract, tests/chaos)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from handler.chat.ports import Connection, Dialect, Draft
from handler.local.service import LocalChat, build_local_chat
from infra.redis.history import channel
from infra.redis.liveness import CANARY_SECONDS, DEAF_AFTER
from infra.redis.subscription import _Subscription
from infra.settings import Settings
from tests.infra.redis.test_engine import Member
from tests.support.redis_server import (
    RedisServer,
    cluster_url,
    primaries_of,
    running_cluster,
    serving,
)

pytestmark = pytest.mark.redis_server


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """One cluster for the tests that kill no node (a slot migrated leaves it whole)."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[RedisServer]]:
    """The shared cluster, or one of the test's own for a test marked `kills_a_node`."""
    if request.node.get_closest_marker("kills_a_node") is None:
        yield request.getfixturevalue("shared_cluster")
        return
    with running_cluster(tmp_path) as nodes:
        yield nodes


@pytest.fixture
async def chat(cluster: list[RedisServer]) -> AsyncIterator[LocalChat]:
    chat = build_local_chat(Settings(redis_url=cluster_url(cluster), presence_interval=0))
    assert chat.engine is not None
    await chat.engine.start()
    yield chat
    await chat.engine.stop()


def room_on(nodes: list[RedisServer], primary: RedisServer, prefix: str) -> str:
    """A room name whose channel (and keys) the primary serves."""
    for n in range(10_000):
        if serving(nodes, channel(f"{prefix}{n}")).port == primary.port:
            return f"{prefix}{n}"
    raise LookupError(primary.port)


async def listen_in(chat: LocalChat, room: str, connection_id: str) -> Member:
    """A text member of `room` on this worker, subscribed as a join subscribes it."""
    assert chat.engine is not None
    member = Member(chat, connection_id, capacity=1000)  # a catch-up comes as one burst
    connection = Connection(connection_id, room, f"u-{connection_id}", "m", Dialect.TEXT, "")
    await chat.engine.feed.subscription.add(connection)
    return member


async def chatter(
    chat: LocalChat, room: str, count: int, pace: float, stored: list[float] | None = None
) -> list[str]:
    """Publish `count` messages to `room`, one every `pace` seconds, each tried again until
    stored (with its client_msg_id: stored once); returns what each try that failed said.
    `stored` gets when each was (time.monotonic())."""
    assert chat.engine is not None
    history = chat.engine.feed.subscription._history
    failures: list[str] = []
    for n in range(count):
        draft = Draft(room, "sender", "s", f"m-{n}", client_msg_id=f"m-{n}")
        while True:
            try:
                await history.append(draft, time.time())
                if stored is not None:
                    stored.append(time.monotonic())
                break
            except Exception as error:
                failures.append(repr(error))
                await asyncio.sleep(0.1)
        await asyncio.sleep(pace)
    return failures


def said(member: Member) -> list[str]:
    return [frame.removeprefix("s: ") for frame in member.frames]


async def heard_all(member: Member, count: int, seconds: float) -> list[str]:
    await member.wait_for(f"m-{count - 1}", seconds)
    await asyncio.sleep(0.3)  # any repeat on its way
    return said(member)


def migrate(nodes: list[RedisServer], slot: int, source: RedisServer, target: RedisServer) -> None:
    """Move one slot, keys and all, as `redis-cli --cluster reshard` does it."""
    with (
        redis.Redis(port=source.port, socket_timeout=5) as src,
        redis.Redis(port=target.port, socket_timeout=5) as dst,
    ):
        source_id, target_id = src.cluster("myid"), dst.cluster("myid")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in primaries_of(nodes):
            with redis.Redis(port=node.port, socket_timeout=5) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


@pytest.mark.timeout(60)
async def test_a_worker_subscribes_on_each_primary_with_a_canary_on_each(
    chat: LocalChat, cluster: list[RedisServer]
) -> None:
    assert chat.engine is not None
    primaries = primaries_of(cluster)
    subscription = chat.engine.feed.subscription
    every_primary = sorted(f"127.0.0.1:{node.port}" for node in primaries)
    assert subscription.nodes == every_primary  # from the start, each with its canary
    rooms = [room_on(cluster, primary, f"r{n}-") for n, primary in enumerate(primaries)]
    members = [await listen_in(chat, room, f"c{n}") for n, room in enumerate(rooms)]
    assert subscription.nodes == every_primary
    for link in subscription._links.values():  # each canary flies on its own node
        assert f"127.0.0.1:{serving(cluster, link.canary.channel).port}" == link.node
    history = subscription._history
    for room in rooms:
        await history.append(Draft(room, "sender", "s", f"hello {room}"), time.time())
    for member, room in zip(members, rooms, strict=True):
        await member.wait_for(f"hello {room}", 3)
        assert said(member) == [f"hello {room}"]
    await asyncio.sleep(3 * CANARY_SECONDS)
    assert not chat.engine.feed.deaf and chat.engine.link() == "linked"
    health = chat.health()
    assert health["redis_node"] == ",".join(subscription.nodes), health
    # /metrics: a series per node (as the scrape asks: handler/local/service.py), and a node
    # no longer subscribed on loses its series.
    chat.metrics.talks_to(chat.engine.endpoint.kind, chat.engine.node.split(","))
    exposed = chat.metrics.exposition().decode()
    for node in every_primary:
        assert f'wschat_redis_node{{kind="cluster",node="{node}"}} 1.0' in exposed
    chat.metrics.talks_to("cluster", every_primary[1:])
    assert f'node="{every_primary[0]}"' not in chat.metrics.exposition().decode()


@pytest.mark.timeout(60)
async def test_a_room_left_idle_is_unsubscribed_on_its_node_without_a_renewal(
    chat: LocalChat, cluster: list[RedisServer]
) -> None:
    """The node confirms the unsubscribe the worker asked for with a `sunsubscribe`, as it
    tells of a slot it let go: only the latter is a reason to subscribe afresh."""
    assert chat.engine is not None
    primary = primaries_of(cluster)[0]
    room = room_on(cluster, primary, "idle-")
    await listen_in(chat, room, "c1")
    subscription = chat.engine.feed.subscription
    link = subscription._links[f"127.0.0.1:{primary.port}"]
    assert channel(room).encode() in link.pubsub.shard_channels
    subscription.rooms[room].members.clear()  # as when its last member here leaves
    await subscription.drop_idle_rooms()
    await asyncio.sleep(0.5)  # the confirmation read
    assert channel(room).encode() not in link.pubsub.shard_channels
    assert link.rooms == set() and subscription.resubscribes == 0


@pytest.mark.timeout(30)
async def test_rooms_left_idle_in_several_slots_of_one_node_are_all_unsubscribed(
    chat: LocalChat, cluster: list[RedisServer]
) -> None:
    """A node refuses an SSUNSUBSCRIBE naming channels of several slots (CROSSSLOT), as it
    refuses any multi-key command across slots: the rooms stayed subscribed, their traffic
    coming for as long as the link lived."""
    assert chat.engine is not None
    primary = primaries_of(cluster)[0]
    rooms = [room_on(cluster, primary, prefix) for prefix in ("idle-a-", "idle-b-", "idle-c-")]
    assert len({key_slot(channel(room).encode()) for room in rooms}) == 3
    for n, room in enumerate(rooms):
        await listen_in(chat, room, f"c{n}")
    subscription = chat.engine.feed.subscription
    link = subscription._links[f"127.0.0.1:{primary.port}"]
    for room in rooms:
        subscription.rooms[room].members.clear()
    await subscription.drop_idle_rooms()
    await asyncio.sleep(0.5)  # the confirmations read
    assert not {channel(room).encode() for room in rooms} & set(link.pubsub.shard_channels)
    assert subscription.resubscribes == 0


@pytest.mark.timeout(30)
async def test_a_link_that_reconnects_subscribes_each_room_again_on_its_own(
    chat: LocalChat, cluster: list[RedisServer]
) -> None:
    """redis-py subscribes a reconnected link to all its channels in one SSUBSCRIBE, which a
    node refuses for channels of several slots (CROSSSLOT): the link's reader met the error
    instead of its rooms' messages."""
    assert chat.engine is not None
    primary = primaries_of(cluster)[1]
    rooms = [room_on(cluster, primary, prefix) for prefix in ("back-a-", "back-b-")]
    assert len({key_slot(channel(room).encode()) for room in rooms}) == 2
    for n, room in enumerate(rooms):
        await listen_in(chat, room, f"c{n}")
    link = chat.engine.feed.subscription._links[f"127.0.0.1:{primary.port}"]
    probe = _Subscription(link.pubsub.connection_pool, lambda: None)
    for room in rooms:
        await probe.ssubscribe(channel(room))
    await probe._resubscribe_shard_channels()  # what a reconnect runs
    answers = [await probe.get_message(timeout=1) for _ in range(4)]
    assert sorted(a["type"] for a in answers if a) == ["ssubscribe"] * 4
    await probe.aclose()


@pytest.mark.timeout(60)
async def test_a_deaf_link_to_one_node_is_found_by_its_canary_and_its_rooms_caught_up(
    chat: LocalChat, cluster: list[RedisServer]
) -> None:
    """One node's link goes deaf without an error (here: unsubscribed from everything, the
    canary's channel too): that node's canary goes missing, and its link alone is subscribed
    afresh, its room caught up with what was published meanwhile."""
    assert chat.engine is not None
    primaries = primaries_of(cluster)
    deaf_room = room_on(cluster, primaries[0], "deaf-")
    fine_room = room_on(cluster, primaries[1], "fine-")
    deaf = await listen_in(chat, deaf_room, "c1")
    fine = await listen_in(chat, fine_room, "c2")
    subscription = chat.engine.feed.subscription
    link = subscription._links[f"127.0.0.1:{primaries[0].port}"]
    await link.pubsub.sunsubscribe()
    await asyncio.sleep(0.3)
    history = subscription._history
    await history.append(Draft(deaf_room, "sender", "s", "in the silence"), time.time())
    await history.append(Draft(fine_room, "sender", "s", "heard at once"), time.time())
    await fine.wait_for("heard at once", 2)
    waited = await deaf.wait_for("in the silence", DEAF_AFTER + 3 * CANARY_SECONDS)
    assert waited > DEAF_AFTER - 2 * CANARY_SECONDS  # not before its canary was missed
    assert subscription.resubscribes == 1  # that link's, not the other's
    assert said(deaf) == ["in the silence"] and said(fine) == ["heard at once"]


@pytest.mark.timeout(60)
async def test_a_room_whose_slot_migrates_mid_chat_is_followed_and_caught_up(
    chat: LocalChat, cluster: list[RedisServer]
) -> None:
    """The node that served the room's slot lets go of its channel (`sunsubscribe`); the
    worker finds the slot's new node, subscribes there, and catches the room up from its
    stream: every message once, in order."""
    assert chat.engine is not None
    source, target = primaries_of(cluster)[:2]
    room = room_on(cluster, source, "busy-")
    member = await listen_in(chat, room, "c1")
    count = 120
    sending = asyncio.create_task(chatter(chat, room, count, pace=0.01))
    await member.wait_for("m-20", 5)
    with redis.Redis(port=source.port) as client:
        slot = int(client.cluster("keyslot", channel(room)))
    await asyncio.to_thread(migrate, cluster, slot, source, target)
    failures = await sending
    assert said(member) == [f"m-{n}" for n in range(count)] or (
        await heard_all(member, count, 10)
    ) == [f"m-{n}" for n in range(count)], failures
    await asyncio.sleep(0.3)
    assert said(member) == [f"m-{n}" for n in range(count)]  # nothing twice
    subscription = chat.engine.feed.subscription
    assert room in subscription._links[f"127.0.0.1:{target.port}"].rooms
    assert subscription.resubscribes >= 1
    print(
        f"\nslot migration: {count} sent, {len(said(member))} received, "
        f"tries failed {len(failures)}"
    )


@pytest.mark.kills_a_node
@pytest.mark.timeout(90)
async def test_a_room_whose_primary_is_killed_mid_chat_is_followed_to_its_replica(
    chat: LocalChat, cluster: list[RedisServer]
) -> None:
    """SIGKILL on the room's primary: its replica takes over (cluster-node-timeout 1.5 s),
    the worker finds it, subscribes there, and catches up. The member has every message the
    room holds once, in order, or was told the room started over (its epoch restarted)."""
    assert chat.engine is not None
    primary = cluster[0]
    replica = cluster[3]
    assert replica.replica_of == primary.port
    room = room_on(cluster, primary, "doomed-")
    member = await listen_in(chat, room, "c1")
    count = 200
    stored: list[float] = []
    sending = asyncio.create_task(chatter(chat, room, count, pace=0.02, stored=stored))
    await member.wait_for("m-20", 5)
    killed = time.monotonic()
    primary.stop(kill=True)
    # Delivery resumed: the first message stored after the kill reached the member.
    while not any(at > killed for at in stored):
        await asyncio.sleep(0.02)
        assert time.monotonic() - killed < 30, "nothing stored for 30 s after the kill"
    first = next(n for n, at in enumerate(stored) if at > killed)
    await member.wait_for(f"m-{first}", 30)
    resumed = time.monotonic() - killed
    failures = await sending
    heard = await heard_all(member, count, 15)
    subscription = chat.engine.feed.subscription
    restarted = subscription.restarts > 0
    print(
        f"\ncluster failover: {count} sent, {len(heard)} received, {len(heard) - len(set(heard))} "
        f"repeats, tries failed {len(failures)}, epoch restarts {subscription.restarts}, "
        f"delivery resumed {resumed:.1f} s after the kill"
    )
    assert len(heard) == len(set(heard)), "a message twice"
    if not restarted:
        assert heard == [f"m-{n}" for n in range(count)]
    assert room in subscription._links[f"127.0.0.1:{replica.port}"].rooms
