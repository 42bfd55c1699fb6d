from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.management_api import ManagementApiStandIn, running_management_api
from tests.support.redis_server import RedisServer, running_redis
from tests.support.servers import Server, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `wschat serve` with default settings, shared by tests that do not change them."""
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def start_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a server with extra WSCHAT_ settings; stopped at the end of the test."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(**env: str) -> Server:
            return stack.enter_context(running_server(tmp_path, env))

        yield start


@pytest.fixture
def management_api() -> Iterator[ManagementApiStandIn]:
    """The Management API on loopback (tests/support/management_api.py), answering 200 unless
    told otherwise."""
    with running_management_api() as stand_in:
        yield stand_in


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, management_api: ManagementApiStandIn) -> Iterator[None]:
    """moto's AWS with the chat table made from infra/deploy/resources.yml, and the Management API
    stand-in as every handler's endpoint; fresh caches around it."""
    import os

    import boto3
    from moto import mock_aws

    from tests.support.aws import create_table, reset_caches

    for key in list(os.environ):
        if key.startswith("WSCHAT_"):
            monkeypatch.delenv(key)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "WSCHAT_TABLE": "wschat-test",
        "WSCHAT_APIGW_ENDPOINT": management_api.endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("IS_OFFLINE", raising=False)
    reset_caches()
    with mock_aws():
        create_table(boto3.client("dynamodb"), "wschat-test")
        yield
    reset_caches()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on a free loopback port."""
    with running_redis(tmp_path) as server:
        yield server
