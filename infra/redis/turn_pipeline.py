"""Reads made in one turn of the event loop go to Redis in one pipeline.

A round trip costs a worker about 100 µs of CPU through redis-py (the write, the wake-up for
the answer, the pool and the parsing), whatever it carries; in a pipeline of ten, about a
third of that per command (docs/performance.md, section 9). A reconnect storm is a hundred
welcomes at a time, each reading the room's latest id, its history and its count: the reads
of one turn go together, and the answer to one pipeline wakes all of its callers in one turn,
so their next reads go together again. A lone read goes alone (a plain command costs less
than a pipeline of one), in the next turn: no read waits on another's answer, nor on a
timer. The same idea as the publications' pipeline (infra/redis/history.py), for reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

# How a read is made: given the client (a coroutine) or a pipeline (which queues it), it
# makes the same command, so one or many can go.
Command = Callable[[Any], Any]


class TurnPipeline:
    """Commands of one turn, sent together; each caller gets its own reply or error."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._queued: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, command: Command) -> Any:
        """`command`'s reply, from the pipeline of this turn."""
        (reply,) = await self.run_all([command])
        return reply

    async def run_all(self, commands: Sequence[Command]) -> list[Any]:
        """The commands' replies: they go one after the other in this turn's pipeline, so
        Redis runs them in order (on a cluster, if their keys share a slot). The first error
        met is raised."""
        loop = asyncio.get_running_loop()
        answers: list[asyncio.Future[Any]] = []
        for command in commands:
            answers.append(loop.create_future())
            self._queued.append((command, answers[-1]))
        if len(self._queued) == len(commands):  # the first this turn: send once all queued
            loop.call_soon(self._send_queued)
        return list(await asyncio.gather(*answers))

    async def with_script(self, script: Any, commands: Sequence[Command]) -> list[Any]:
        """`run_all`, for commands among which is an EVALSHA of `script`: where Redis lacks
        it (restarted, flushed, a replica promoted), it is loaded and all are run again (they
        are reads; the EVALSHA did not run, so it does not run twice)."""
        try:
            return await self.run_all(commands)
        except NoScriptError:
            await self._redis.script_load(script.script)
            return await self.run_all(commands)

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._send(queued))
        self._sending.add(task)  # a reference, so the task is not collected half-way
        task.add_done_callback(self._sending.discard)

    async def _send(self, queued: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        replies: list[Any]
        try:
            if len(queued) == 1:
                try:
                    replies = [await queued[0][0](self._redis)]
                except Exception as error:  # the caller's, as in a pipeline
                    replies = [error]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for command, _ in queued:
                    command(pipe)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as error:  # the link failed: every caller of the turn fails
            for _, answer in queued:
                if not answer.done():
                    answer.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for (_, answer), reply in zip(queued, replies, strict=True):
            if answer.done():  # its caller stopped waiting
                continue
            if isinstance(reply, Exception):
                answer.set_exception(reply)
            else:
                answer.set_result(reply)


def evalsha(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Command:
    """The command that runs a registered script by its digest."""
    return lambda redis: redis.evalsha(script.sha, len(keys), *keys, *args)
