"""`engine`: each test of the port suites runs once per engine (tests/ports/engines.py).
The Redis runs are marked `redis_server`: `make test-fast`, which starts no server process,
leaves them out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
import redis

from infra.settings import Settings
from tests.ports.engines import ENGINES, DynamoEngine, Engine, local_engine
from tests.support.management_api import ManagementApiStandIn
from tests.support.redis_server import RedisServer, running_redis


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for this worker's Redis engines, emptied before each."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def history_size() -> int:
    """A room's history cap in memory and on Redis: a test parametrizes it to change it."""
    return Settings.history_size


@pytest.fixture(
    params=[
        pytest.param(name, marks=[pytest.mark.redis_server] if name == "redis" else [])
        for name in ENGINES
    ]
)
def engine(request: pytest.FixtureRequest, history_size: int) -> Iterator[Engine]:
    if request.param == "dynamodb":
        request.getfixturevalue("aws")  # moto, the chat table, the Management API stand-in
        stand_in = cast(ManagementApiStandIn, request.getfixturevalue("management_api"))
        yield DynamoEngine(stand_in)
        return
    settings = Settings(history_size=history_size)
    if request.param == "redis":
        server = cast(RedisServer, request.getfixturevalue("shared_redis"))
        with redis.Redis.from_url(server.url()) as client:
            client.flushall()
        settings = Settings(redis_url=server.url(), history_size=history_size)
    with local_engine(settings) as built:
        yield built
