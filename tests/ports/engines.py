"""The chat's three engines, each built as the app builds it, for the port suites beside this
module: memory and Redis as `wschat serve` does (handler/local/service.py), DynamoDB as the
Lambda runtime does (handler/aws/runtime.py).

A test calls the ports as the core does, synchronously, and each call runs where the core
runs: on memory and Redis, on the engine's event loop (a thread of the test's own), and on
Redis inside the greenlet bridge there (handler/local/greenbridge.py), where the ports wait
on Redis.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from handler.chat.core import ChatCore
from handler.chat.ports import ConnectionStore, MessageLog
from handler.local.delivery import Outbox
from handler.local.service import LocalChat, build_local_chat
from infra.aws.delivery import GONE
from infra.settings import Settings
from tests.support.management_api import ManagementApiStandIn, always_ok

T = TypeVar("T")
ENGINES = ("memory", "redis", "dynamodb")


class Engine(ABC):
    """One engine: its chat core, and the core's ports to call as the core does."""

    name: str
    # What a room's history holds at most (memory and Redis: WSCHAT_HISTORY_SIZE); None for
    # DynamoDB, which keeps messages by age alone.
    cap: int | None
    # Whether a room's history outlives a restart: DynamoDB's table does; memory's history
    # is its process's, and a Redis without persistence loses what it held.
    durable: bool

    @property
    @abstractmethod
    def core(self) -> ChatCore:
        """The chat core, wired to this engine's ports."""

    @abstractmethod
    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`function(*args, **kwargs)`, run where this engine's core runs."""

    @property
    def connections(self) -> ConnectionStore:
        """The core's connection store, each method run through `call`."""
        return cast(ConnectionStore, _Calls(lambda: self.core.connections, self.call))

    @property
    def messages(self) -> MessageLog:
        """The core's message log, each method run through `call`."""
        return cast(MessageLog, _Calls(lambda: self.core.messages, self.call))

    @abstractmethod
    def open(self, connection_id: str) -> None:
        """A socket for `connection_id`, taking what the core delivers to it. (Without one, a
        delivery finds the connection gone, and the core forgets it past its handshake.)"""

    @abstractmethod
    def lose(self, connection_id: str) -> None:
        """The socket for `connection_id` is gone: a delivery to it finds it so (locally its
        outbox is no longer registered; the Management API answers 410)."""

    @abstractmethod
    def frames(self, connection_id: str) -> list[str]:
        """What was delivered to `connection_id` so far."""

    @abstractmethod
    def closed(self, connection_id: str) -> int | None:
        """How many frames `connection_id` had been delivered when its socket was closed;
        None while it is open."""

    def wait_for(self, connection_id: str, count: int, seconds: float = 5.0) -> list[str]:
        """What was delivered to `connection_id`, once it is at least `count` frames (on
        Redis, a room's messages reach its members through the worker's subscription)."""
        deadline = time.monotonic() + seconds
        while len(frames := self.frames(connection_id)) < count:
            assert time.monotonic() < deadline, frames
            time.sleep(0.02)
        return frames

    @abstractmethod
    def restart(self) -> None:
        """What a restart does to this engine's store: memory's process starts afresh, Redis
        restarts without persistence (FLUSHALL stands for it), DynamoDB's container starts
        cold (its table stays)."""


class _Calls:
    """A port whose every method runs through `call`."""

    def __init__(self, port: Callable[[], object], call: Callable[..., Any]) -> None:
        self._port = port
        self._call = call

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._port(), name)
        return functools.partial(self._call, method)


class _LoopThread:
    """An event loop running in a thread, as a worker's runs under uvicorn."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="engine-loop")
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        async def finish() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            self.run(finish())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


class LocalEngine(Engine):
    """`wschat serve`'s chat: in memory, or on Redis when `settings` names one."""

    def __init__(self, settings: Settings, loop: _LoopThread) -> None:
        self.name = "redis" if settings.redis_url else "memory"
        self.cap = settings.history_size
        self.durable = False
        self._settings = settings
        self._loop = loop
        self._delivered: dict[str, list[str]] = defaultdict(list)
        self._closed: dict[str, int] = {}
        self._chat = loop.run(self._start())

    async def _start(self) -> LocalChat:
        chat = build_local_chat(self._settings)
        if chat.engine is not None:
            await chat.engine.start()
        return chat

    async def _stop(self) -> None:
        if self._chat.engine is not None:
            await self._chat.engine.stop()

    @property
    def core(self) -> ChatCore:
        return self._chat.core

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._loop.run(self._chat.call(functools.partial(function, **kwargs), *args))

    def open(self, connection_id: str) -> None:
        async def send(frame: str) -> None:
            self._delivered[connection_id].append(frame)

        async def close(code: int, reason: str) -> None:
            self._closed[connection_id] = len(self._delivered[connection_id])

        async def start() -> None:
            outbox = Outbox(send, close, self._settings.send_queue_frames)
            self._chat.delivery.register(connection_id, outbox)
            outbox.start()

        self._loop.run(start())

    def lose(self, connection_id: str) -> None:
        async def unregister() -> None:
            self._chat.delivery.unregister(connection_id)

        self._loop.run(unregister())

    def frames(self, connection_id: str) -> list[str]:
        return list(self._delivered[connection_id])

    def closed(self, connection_id: str) -> int | None:
        return self._closed.get(connection_id)

    def restart(self) -> None:
        if self._chat.engine is None:  # memory: a new process, with nothing of the old one's
            self._chat = self._loop.run(self._start())
        else:
            self._loop.run(self._chat.engine.client.flushall())

    def close(self) -> None:
        self._loop.run(self._stop())


class DynamoEngine(Engine):
    """The Lambda runtime's chat: DynamoDB (moto), delivering through the Management API
    (its stand-in, which takes every post)."""

    def __init__(self, management_api: ManagementApiStandIn) -> None:
        self.name = "dynamodb"
        self.cap = None
        self.durable = True
        self._management_api = management_api
        self._delivered: dict[str, list[str]] = defaultdict(list)
        self._lost: set[str] = set()
        management_api.answer = self._answer
        self._core = self._cold_start()

    @staticmethod
    def _cold_start() -> ChatCore:
        from handler.aws.runtime import reset_runtime, runtime

        reset_runtime()
        return runtime().core(runtime().configured_endpoint())

    @property
    def core(self) -> ChatCore:
        return self._core

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return function(*args, **kwargs)

    def open(self, connection_id: str) -> None:
        """Nothing to open: the Management API stand-in takes every post."""

    def _answer(self, method: str, connection_id: str, attempt: int) -> int:
        if connection_id in self._lost:
            return GONE
        return always_ok(method, connection_id, attempt)

    def lose(self, connection_id: str) -> None:
        self._lost.add(connection_id)

    def frames(self, connection_id: str) -> list[str]:
        self._delivered[connection_id] += self._management_api.take(connection_id)
        return list(self._delivered[connection_id])

    def closed(self, connection_id: str) -> int | None:
        # Each call to the Management API returns once answered: what was posted before the
        # delete has been taken.
        if connection_id not in self._management_api.deleted:
            return None
        return len(self.frames(connection_id))

    def restart(self) -> None:
        self._core = self._cold_start()


@contextmanager
def local_engine(settings: Settings) -> Iterator[LocalEngine]:
    loop = _LoopThread()
    try:
        engine = LocalEngine(settings, loop)
        try:
            yield engine
        finally:
            engine.close()
    finally:
        loop.close()
