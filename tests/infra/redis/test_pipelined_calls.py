from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from infra.redis.pipelined_calls import PipelinedCalls, evalsha
from tests.support.redis_server import RedisServer

COUNT = "return redis.call('HLEN', KEYS[1])"


async def _clients(client: Any) -> int:
    """How many connections Redis has open (this one's included)."""
    return int((await client.info("clients"))["connected_clients"])


async def test_reads_made_at_once_share_one_connection_and_each_gets_its_reply(
    redis: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis.url())
    for n in range(20):
        await client.hset(f"room{n}", mapping={str(i): "x" for i in range(n + 1)})
    before = await _clients(client)  # the pool holds the one connection used so far
    calls = PipelinedCalls(client)

    def count(key: str) -> Any:
        return lambda r: r.hlen(key)

    counts = await asyncio.gather(*(calls.run(count(f"room{n}")) for n in range(20)))

    assert counts == list(range(1, 21))
    # Twenty reads one at a time would each have taken a connection of the pool.
    assert await _clients(client) == before
    await client.aclose()


async def test_a_command_that_fails_fails_only_its_own_caller(redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis.url())
    await client.set("plain", "1")
    await client.hset("hash", "a", "1")
    calls = PipelinedCalls(client)

    outcomes = await asyncio.gather(
        calls.run(lambda r: r.hlen("hash")),
        calls.run(lambda r: r.hlen("plain")),  # WRONGTYPE
        calls.run(lambda r: r.get("plain")),
        return_exceptions=True,
    )

    assert outcomes[0] == 1
    assert isinstance(outcomes[1], ResponseError)
    assert outcomes[2] == b"1"
    with pytest.raises(ResponseError):  # alone in its turn, too
        await calls.run(lambda r: r.hlen("plain"))
    await client.aclose()


@pytest.mark.parametrize("together", [1, 3])
async def test_a_script_redis_lacks_is_loaded_and_run_once(
    redis: RedisServer, together: int
) -> None:
    client = aioredis.Redis.from_url(redis.url())
    await client.hset("hash", mapping={"a": "1", "b": "2"})
    script = client.register_script(COUNT)
    calls = PipelinedCalls(client)
    await client.script_flush()  # as after a restart, or on a replica just promoted

    replies = await asyncio.gather(
        *(calls.with_script(script, [evalsha(script, ["hash"], [])]) for _ in range(together))
    )

    assert replies == [[2]] * together
    assert (await client.script_exists(script.sha)) == [True]
    await client.aclose()


async def test_a_link_that_fails_fails_every_caller_of_its_batch(redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis.url(), retry_on_error=[])
    await client.ping()
    calls = PipelinedCalls(client)
    redis.stop()

    outcomes = await asyncio.gather(
        *(calls.run(lambda r: r.hlen("hash")) for _ in range(3)), return_exceptions=True
    )

    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes
    await client.aclose()


async def test_commands_run_together_run_in_order_in_one_round_trip(redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis.url())
    await client.ping()
    before = await _clients(client)
    calls = PipelinedCalls(client)

    together, alone = await asyncio.gather(
        calls.run_all([lambda r: r.incr("n"), lambda r: r.get("n"), lambda r: r.incr("n")]),
        calls.run(lambda r: r.get("n")),
    )

    assert together == [1, b"1", 2]
    assert alone == b"2"  # sent after them in the same pipeline
    assert await _clients(client) == before
    await client.aclose()
