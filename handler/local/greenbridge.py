"""Synchronous code that waits on coroutines, on the event loop itself.

The chat core is synchronous (handler/chat/ports.py): on Lambda its ports block on boto3. On
Redis its ports must wait on redis.asyncio, which lives on the worker's event loop. Running the
core in worker threads costs four thread hand-offs per call (to the thread, to the loop and
back twice), and each is a futex wake and a GIL hand-off: on a 2-core VM they cost more CPU
than the Redis round trip they wrap (docs/performance.md, section 9).

So the core runs in a greenlet on the loop's own thread instead: `call` starts it there, and
when a port needs Redis, `wait` switches back to the loop's task with the coroutine, which
awaits it and switches in again with its result. The same idea as SQLAlchemy's asyncio
bridge (`greenlet_spawn` / `await_only`). Everything stays on one thread: between two `wait`s
the core runs without interruption, as plain loop code does between two `await`s.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from greenlet import getcurrent, greenlet

T = TypeVar("T")


class _Bridged(greenlet):
    """A greenlet running sync code on behalf of a task; its parent is that task's."""


async def call(function: Callable[..., T], *args: Any) -> T:
    """Run `function(*args)` on this loop; its `wait`s are awaited by this task."""
    bridged = _Bridged(function, getcurrent())
    bridged.gr_context = getcurrent().gr_context  # the task's contextvars, as in a thread
    result: Any = bridged.switch(*args)
    while not bridged.dead:  # it handed us a coroutine to await
        try:
            value = await cast(Awaitable[Any], result)
        except BaseException:  # the error belongs to the sync code that waited
            result = bridged.throw(*sys.exc_info())
        else:
            result = bridged.switch(value)
    return cast(T, result)


def can_wait() -> bool:
    """True inside `call`: `wait` may be used. False in plain loop code, which must not
    block and so should start a task instead."""
    return isinstance(getcurrent(), _Bridged)


def wait(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """The coroutine's result, awaited by the task that started this `call`."""
    current = getcurrent()
    if not isinstance(current, _Bridged):
        coroutine.close()
        raise RuntimeError("wait() outside greenbridge.call() would block the event loop")
    task = current.parent
    assert task is not None  # set by `call`
    awaitable = coroutine if timeout is None else _within(coroutine, timeout)
    return cast(T, task.switch(awaitable))


async def _within(coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
    # Not asyncio.wait_for: before Python 3.12 it runs the coroutine in a task of its own,
    # one more task per Redis call (4.7% of a Redis worker's CPU in py-spy).
    async with asyncio.timeout(timeout):
        return await coroutine
