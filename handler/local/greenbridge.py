"""Synchronous code that waits on coroutines, on the event loop itself.

The chat core is synchronous (handler/chat/ports.py): on Lambda its ports block on boto3. On
Redis its ports must wait on redis.asyncio, which lives on the worker's event loop. Running the
core in worker threads costs four thread hand-offs per call (to the thread, to the loop and
back twice), and each is a futex wake and a GIL hand-off: on a 2-core VM they cost more CPU
than the Redis round trip they wrap (docs/performance.md, section 9).

So the core runs in a greenlet on the loop's own thread instead: `Greenlets.call` runs it
there (in a greenlet of its own, reused by later calls), and when a port needs Redis, `wait`
switches back to the loop's task with the coroutine, which awaits it and switches in again
with its result. The same idea as SQLAlchemy's asyncio bridge (`greenlet_spawn` /
`await_only`). Everything stays on one thread: between two `wait`s the core runs without
interruption, as plain loop code does between two `await`s.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from greenlet import GreenletExit, getcurrent, greenlet

T = TypeVar("T")


# Idle greenlets `Greenlets` keeps for its next calls: starting a greenlet and running it to
# its end costs about 9 µs of CPU, resuming one about 0.3 µs; a reconnect storm has at most
# its handshakes in flight (100 in bench/storm.py) in the core at once.
IDLE_KEPT = 128


_RETURNED = object()  # what a call's greenlet hands its caller when the call is over


class _Bridged(greenlet):
    """A greenlet that runs sync calls on behalf of tasks, one call at a time, and waits
    between them to be given the next; its parent is the calling task's."""

    def __init__(self) -> None:
        super().__init__(self._serve)
        # The call's value, or the error it raised: kept here, not handed over by the
        # switch, which an idle greenlet's frame would hold on to until its next call.
        self.outcome: tuple[Any, BaseException | None] = (None, None)

    def _serve(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        while True:
            try:
                self.outcome = (function(*args), None)
            except GreenletExit:  # collected while idle: end
                raise
            except BaseException as error:  # the caller's to raise
                self.outcome = (None, error)
            del function, args  # not kept alive while idle
            caller = self.parent
            assert caller is not None  # set by `Greenlets.call`
            function, args = caller.switch(_RETURNED)


class Greenlets:
    """Runs sync code on this loop (`call`), in greenlets it reuses."""

    def __init__(self) -> None:
        self._idle: list[_Bridged] = []

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function(*args)` on this loop; its `wait`s are awaited by this task."""
        bridged = self._idle.pop() if self._idle else _Bridged()
        caller = getcurrent()
        bridged.parent = caller
        bridged.gr_context = caller.gr_context  # the task's contextvars, as in a thread
        result: Any = bridged.switch(function, args)
        while result is not _RETURNED:  # it handed us a coroutine to await
            try:
                value = await cast(Awaitable[Any], result)
            except BaseException:  # the error belongs to the sync code that waited
                result = bridged.throw(*sys.exc_info())
            else:
                result = bridged.switch(value)
        (returned, error), bridged.outcome = bridged.outcome, (None, None)
        if len(self._idle) < IDLE_KEPT:
            self._idle.append(bridged)
        if error is not None:
            raise error
        return cast(T, returned)


def can_wait() -> bool:
    """True inside `Greenlets.call`: `wait` may be used. False in plain loop code, which must
    not block and so should start a task instead."""
    return isinstance(getcurrent(), _Bridged)


def wait(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """The coroutine's result, awaited by the task that started this `call`."""
    current = getcurrent()
    if not isinstance(current, _Bridged):
        coroutine.close()
        raise RuntimeError("wait() outside Greenlets.call() would block the event loop")
    task = current.parent
    assert task is not None  # set by `Greenlets.call`
    awaitable = coroutine if timeout is None else _within(coroutine, timeout)
    return cast(T, task.switch(awaitable))


async def _within(coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
    # Not asyncio.wait_for: before Python 3.12 it runs the coroutine in a task of its own,
    # one more task per Redis call (4.7% of a Redis worker's CPU in py-spy).
    async with asyncio.timeout(timeout):
        return await coroutine
