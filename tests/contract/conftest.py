"""One behavioural suite, four topologies: `wschat serve` (uvicorn, in memory), `wschat
emulate` (the Lambda handlers behind the API Gateway emulator), two `wschat serve` processes
sharing one Redis, each room's clients spread across both, and two sharing a Redis Cluster
(three primaries, three replicas) the same way. Each test runs on the first three; the
cluster runs the modules that exercise Redis' behaviour (CLUSTER_MODULES)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import websockets

from tests.support.redis_server import cluster_url, running_cluster, running_redis
from tests.support.servers import Server, running_server

TRANSPORTS = {"uvicorn": "serve", "emulator": "emulate", "redis": "serve", "cluster": "serve"}
# The modules run on the cluster too: what Redis does (delivery across workers, resume,
# rooms, the verbs' answers from Redis). The others (auth, hostile clients, REST, the
# clients' libraries) test nothing a cluster does differently from one Redis, and a cluster
# topology costs seconds to start for each test that starts its own.
CLUSTER_MODULES = frozenset({"test_chat", "test_resume", "test_rooms", "test_verbs"})


def transports_for(module: str) -> list[str]:
    """The topologies a contract module (its `__name__`) runs on."""
    name = module.rpartition(".")[2]
    return [t for t in TRANSPORTS if t != "cluster" or name in CLUSTER_MODULES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture in ("transport", "start_transport"):
        if fixture in metafunc.fixturenames:
            names = transports_for(metafunc.module.__name__)
            metafunc.parametrize(fixture, names, indirect=True)


@dataclass
class Transport:
    name: str
    server: Server  # REST and logs go here
    peers: tuple[Server, ...] = ()  # sockets take turns among server and peers
    _turn: int = 0

    @property
    def on_redis(self) -> bool:
        """Whether its servers share rooms through Redis (one, or a cluster)."""
        return self.name in ("redis", "cluster")

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
    """A transport's servers, started with `env`; on Redis (or a cluster), two of them and
    their Redis."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        if name == "cluster":
            url = cluster_url(stack.enter_context(running_cluster(directory)))
        elif name == "redis":
            url = stack.enter_context(running_redis(directory)).url()
        else:
            server = stack.enter_context(running_server(directory, env, TRANSPORTS[name]))
            yield Transport(name, server)
            return
        shared = {**env, "WSCHAT_REDIS_URL": url}
        first = stack.enter_context(running_server(directory, shared))
        second = stack.enter_context(running_server(directory, shared))
        yield Transport(name, first, (second,))


class _Started(dict[str, Transport]):
    """Each topology started when a test first asks for it (a test process that runs no
    cluster test starts no cluster), and stopped with the session."""

    def __init__(self, stack: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self._stack = stack
        self._tmp = tmp_path_factory

    def __missing__(self, name: str) -> Transport:
        started = topology(name, self._tmp.mktemp(name), {})
        transport: Transport = self._stack.enter_context(started)
        self[name] = transport
        return transport


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Transport]]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield _Started(stack, tmp_path_factory)


@pytest.fixture
def transport(request: pytest.FixtureRequest, servers: dict[str, Transport]) -> Transport:
    """Each topology in turn (pytest_generate_tests)."""
    return servers[request.param]


@pytest.fixture
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
