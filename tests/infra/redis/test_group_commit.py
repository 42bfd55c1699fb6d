from __future__ import annotations

import asyncio

import pytest

from handler.chat.ports import Draft
from infra.redis.endpoint import Endpoint
from infra.redis.group_commit import GroupCommit
from infra.redis.history import RedisHistory
from infra.redis.liveness import RedisLink
from tests.support.redis_server import RedisServer


async def test_a_lone_item_goes_at_once_and_those_made_meanwhile_go_together() -> None:
    calls: list[list[int]] = []
    release = asyncio.Event()
    idle: list[bool] = []

    async def flush(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            await release.wait()  # the first call in flight
        return [item * 10 for item in items]

    batch: GroupCommit[int, int] = GroupCommit(flush, lambda: idle.append(True))
    first = asyncio.create_task(batch.submit(1))
    await asyncio.sleep(0)  # no timer: it is on its way
    await asyncio.sleep(0)
    assert calls == [[1]]
    rest = [asyncio.create_task(batch.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert calls == [[1]]  # they wait for the call in flight
    release.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40]
    assert calls == [[1], [2, 3, 4]]
    assert idle == [True]


async def test_a_failed_call_fails_every_item_of_its_batch_and_the_next_goes_on() -> None:
    async def flush(items: list[int]) -> list[int]:
        if 0 in items:
            raise ConnectionError("Redis went away")
        return items

    batch: GroupCommit[int, int] = GroupCommit(flush, lambda: None)
    results = await asyncio.gather(batch.submit(0), batch.submit(1), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    assert await batch.submit(2) == 2


@pytest.mark.timeout(5)
async def test_a_caller_that_stops_waiting_does_not_undo_its_item() -> None:
    done: list[int] = []

    async def flush(items: list[int]) -> list[int]:
        await asyncio.sleep(0.05)
        done.extend(items)
        return items

    batch: GroupCommit[int, int] = GroupCommit(flush, lambda: None)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(batch.submit(7), 0.01)
    await asyncio.sleep(0.1)
    assert done == [7]


@pytest.mark.timeout(5)
async def test_a_call_that_never_answers_fails_its_batch_and_the_next_goes_on() -> None:
    """A call that did not come back held every later batch behind it for as long as it
    took: the worker's publications, or its joins, stopped meanwhile."""
    forever = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        if 0 in items:
            await forever.wait()
        return items

    batch: GroupCommit[int, int] = GroupCommit(flush, lambda: None, timeout=0.1)
    stuck = asyncio.create_task(batch.submit(0))
    await asyncio.sleep(0)
    later = asyncio.create_task(batch.submit(1))  # waits for the call in flight
    with pytest.raises(TimeoutError):
        await stuck
    assert await later == 1


@pytest.mark.timeout(30)
async def test_a_silent_redis_holds_up_one_batch_only_for_the_timeout(redis: RedisServer) -> None:
    """Against a Redis that stops answering, redis-py gives up a read after 5 s and tries
    again, ten times (the worker's policy, infra/redis/endpoint.py): one call took 63 s to
    fail, and every later batch of the worker waited behind it, to land long after its
    callers gave up. The batch is given up after its timeout, and once Redis answers again
    the next one goes at once. What was given up may still be stored (Redis reads it when
    it wakes), once, as any call whose answer never came."""
    client = Endpoint(redis.url(), RedisLink()).client  # the worker's client and policy
    history = RedisHistory(client, 100, 3600)
    history._publications._timeout = 0.5  # CALL_TIMEOUT, shortened for the test
    before, _ = await history.append(Draft("silent", "u1", "u1", "before"), 0.0)
    redis.pause()
    try:
        with pytest.raises(TimeoutError):
            await history.append(Draft("silent", "u1", "u1", "given up"), 0.0)
    finally:
        redis.resume()
    after, _ = await history.append(Draft("silent", "u1", "u1", "after"), 0.0)
    stored = [message.text for message in await history.recent("silent", 10)]
    assert stored in (["before", "after"], ["before", "given up", "after"])
    assert (before.id, after.id) == (1, len(stored))
    await client.aclose()
