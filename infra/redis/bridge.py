"""How the synchronous core's ports reach Redis on the event loop. The core is synchronous
(handler/chat/ports.py) and Redis is reached with redis.asyncio on the worker's loop, so on
Redis the core runs in a greenlet on the loop (handler/local/greenbridge.py), and each port
call hands its Redis call to the loop's task and waits for the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from handler.chat.ports import StoreUnavailable

T = TypeVar("T")
CALL_TIMEOUT = 10.0


class Waiter(Protocol):
    """How synchronous code gets a coroutine's result on the event loop: the transport's to
    give (handler/local/greenbridge.py, where the core runs in a greenlet on the loop)."""

    def can_wait(self) -> bool:
        """Whether the caller may wait here (False in plain loop code, which must not)."""
        ...

    def wait(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T: ...


class LoopBridge:
    """How a port reaches Redis: it waits for the answer when the core called it, and starts
    a task when plain loop code did (a fan-out finding a socket gone), since that code must
    not wait. Redis' failures become the core's StoreUnavailable here, at the edge."""

    def __init__(self, waiter: Waiter) -> None:
        self._waiter = waiter
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """The coroutine's result; StoreUnavailable if Redis could not be reached (after
        redis-py's retries) or did not answer within CALL_TIMEOUT."""
        try:
            return self._waiter.wait(coroutine, CALL_TIMEOUT)
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailable(f"Redis: {error}") from error
        except TimeoutError as error:
            raise StoreUnavailable(f"Redis: no answer in {CALL_TIMEOUT:g} s") from error

    def settle(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Wait for `coroutine` if the caller can, else start it as a task."""
        if self._waiter.can_wait():
            self.run(coroutine)
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # a reference, so the task is not collected half-way
        task.add_done_callback(self._tasks.discard)
