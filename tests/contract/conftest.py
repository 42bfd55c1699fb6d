"""One behavioural suite, three topologies: `wschat serve` (uvicorn, in memory), `wschat
emulate` (the Lambda handlers behind the API Gateway emulator), and two `wschat serve`
processes sharing one Redis, each room's clients spread across both. Each test runs on all."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import websockets

from tests.support.redis_server import running_redis
from tests.support.servers import Server, running_server

TRANSPORTS = {"uvicorn": "serve", "emulator": "emulate", "redis": "serve"}


@dataclass
class Transport:
    name: str
    server: Server  # REST and logs go here
    peers: tuple[Server, ...] = ()  # sockets take turns among server and peers
    _turn: int = 0

    def url(self, room: str, **query: str) -> str:
        if self.name == "emulator":
            path = "/local"
            query = {"room": room, **query}
        else:
            path = f"/items/{quote(room, safe='')}/ws"
        servers = (self.server, *self.peers)
        server = servers[self._turn % len(servers)]
        self._turn += 1
        return server.ws(f"{path}?{urlencode(query)}" if query else path)

    def connect(self, room: str, **kwargs: Any) -> Any:
        """A `websockets` connection: query parameters as keywords, plus `headers`,
        `subprotocols`, `sock`, `max_queue`, `ping_interval` and `close_timeout` (2 s)."""
        close_timeout = kwargs.pop("close_timeout", 2)
        options = {
            k: kwargs.pop(k)
            for k in ("subprotocols", "sock", "max_queue", "ping_interval")
            if k in kwargs
        }
        headers = kwargs.pop("headers", None)
        return websockets.connect(
            self.url(room, **kwargs),
            additional_headers=headers,
            close_timeout=close_timeout,
            **options,
        )


@contextmanager
def topology(name: str, directory: Path, env: dict[str, str]) -> Iterator[Transport]:
    """A transport's servers, started with `env`; on Redis, two of them and their Redis."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        if name != "redis":
            server = stack.enter_context(running_server(directory, env, TRANSPORTS[name]))
            yield Transport(name, server)
            return
        redis = stack.enter_context(running_redis(directory))
        shared = {**env, "WSCHAT_REDIS_URL": redis.url()}
        first = stack.enter_context(running_server(directory, shared))
        second = stack.enter_context(running_server(directory, shared))
        yield Transport(name, first, (second,))


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Transport]]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield {
            name: stack.enter_context(topology(name, tmp_path_factory.mktemp(name), {}))
            for name in TRANSPORTS
        }


@pytest.fixture(params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest, servers: dict[str, Transport]) -> Transport:
    return servers[request.param]


@pytest.fixture(params=list(TRANSPORTS))
def start_transport(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Transport]]:
    """Start this transport with extra WSCHAT_ settings, for tests that change them."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(**env: str) -> Transport:
            return stack.enter_context(topology(request.param, tmp_path, env))

        yield start


@contextmanager
def transport_with(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> Iterator[Transport]:
    """The transport `request.param` names, started with `env`: for module-scoped fixtures
    that several tests share."""
    with topology(request.param, tmp_path_factory.mktemp(request.param), env) as transport:
        yield transport
