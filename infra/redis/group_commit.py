"""Group commit: what callers submit while a call is in flight goes together in the next.

No caller waits for a timer: a lone submission goes at once (the next turn of the loop);
only submissions made while a call is on its way wait, for that call's answer, and then go
together in one call (docs/scaling.md, "Joins and leaves batched"). A worker's publications,
its rooms' joins and leaves, and its reads each go this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from infra.redis.bridge import CALL_TIMEOUT

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Runs `flush` on batches of submitted items, one call at a time; `flush` answers one
    result per item, in order. `idle` is called once nothing is pending nor in flight. A
    call not answered within `timeout` seconds fails its batch (TimeoutError) and the next
    batch goes. Against a Redis that stops answering, redis-py gives up a read after 5 s and
    tries again, ten times (infra/redis/endpoint.py): one call took 63 s to fail, and every
    later batch waited behind it, long after its callers gave up (CALL_TIMEOUT). A batch
    given up may still be stored once Redis reads it, as any call whose answer never came."""

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[list[R]]],
        idle: Callable[[], object] = lambda: None,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self._flush = flush
        self._idle = idle
        self._timeout = timeout
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        # A caller that stops waiting cancels only its future: its item is in the batch
        # already, and goes (no shield needed, one future and two callbacks fewer a call).
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    async with asyncio.timeout(self._timeout):  # redis-py drops the connection
                        results = await self._flush([item for item, _ in batch])
                except BaseException as error:  # every item of the batch fails with it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    if isinstance(error, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._drainer = None
            self._idle()
