"""One behavioural suite, two transports: `wschat serve` (uvicorn) and `wschat emulate` (the
Lambda handlers behind the API Gateway emulator). Each test runs against both."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import websockets

from tests.servers import Server, running_server

TRANSPORTS = {"uvicorn": "serve", "emulator": "emulate"}


@dataclass
class Transport:
    name: str
    server: Server

    def url(self, room: str, **query: str) -> str:
        if self.name == "uvicorn":
            path = f"/items/{quote(room, safe='')}/ws"
        else:
            path = "/local"
            query = {"room": room, **query}
        return self.server.ws(f"{path}?{urlencode(query)}" if query else path)

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


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield {
            name: stack.enter_context(running_server(tmp_path_factory.mktemp(name), {}, command))
            for name, command in TRANSPORTS.items()
        }


@pytest.fixture(params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest, servers: dict[str, Server]) -> Transport:
    return Transport(request.param, servers[request.param])


@pytest.fixture(params=list(TRANSPORTS))
def start_transport(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Transport]]:
    """Start this transport with extra WSCHAT_ settings, for tests that change them."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(**env: str) -> Transport:
            command = TRANSPORTS[request.param]
            server = stack.enter_context(running_server(tmp_path, env, command))
            return Transport(request.param, server)

        yield start


@contextmanager
def transport_with(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> Iterator[Transport]:
    """The transport `request.param` names, started with `env`: for module-scoped fixtures
    that several tests share."""
    command = TRANSPORTS[request.param]
    with running_server(tmp_path_factory.mktemp(command), env, command) as server:
        yield Transport(request.param, server)
