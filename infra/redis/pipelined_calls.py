"""A worker's reads, joins and leaves made while one pipeline is on its way go together in
the next.

A round trip costs a worker about 100 µs of CPU through redis-py (the write, the wake-up for
the answer, the pool and the parsing), whatever it carries; in a pipeline of ten, about a
third of that per command (docs/performance.md, section 11). A reconnect storm is a hundred
welcomes at a time, each joining its room and reading its head and history: group commit
(infra/redis/group_commit.py), so the busier the worker, the more each round trip carries.
The rooms' batches of joins and leaves (infra/redis/membership.py) go this way too: each
waits here while a pipeline is in flight, so its room's batch grows meanwhile, and it
shares the round trip with the welcomes' reads. A lone call goes at once (as a plain
command: less than a pipeline of one); no call waits for a timer. The publications have a
pipeline of their own (infra/redis/history.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from infra.redis.group_commit import GroupCommit

# How a call is made: given the client (a coroutine) or a pipeline (which queues it), it
# makes the same command, so one or many can go.
Command = Callable[[Any], Any]


class PipelinedCalls:
    """Calls sent together; each caller gets its own replies, or error."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._batches: GroupCommit[Sequence[Command], list[Any]] = GroupCommit(self._send)

    async def run(self, command: Command) -> Any:
        """`command`'s reply."""
        (reply,) = await self.run_all([command])
        return reply

    async def run_all(self, commands: Sequence[Command]) -> list[Any]:
        """The commands' replies: they go one after the other in one pipeline, so Redis runs
        them in order (on a cluster, if their keys share a slot). The first error met is
        raised."""
        replies = await self._batches.submit(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def with_script(self, script: Any, commands: Sequence[Command]) -> list[Any]:
        """`run_all`, for commands among which is an EVALSHA of `script`: where Redis lacks
        it (restarted, flushed, a replica promoted), it is loaded and all are run again (the
        EVALSHA did not run, so it does not run twice; any other command among them runs
        again, so must be a read)."""
        try:
            return await self.run_all(commands)
        except NoScriptError:
            await self._redis.script_load(script.script)
            return await self.run_all(commands)

    async def _send(self, groups: list[Sequence[Command]]) -> list[list[Any]]:
        commands = [command for group in groups for command in group]
        replies: list[Any]
        if len(commands) == 1:
            try:
                replies = [await commands[0](self._redis)]
            except Exception as error:  # the caller's, as in a pipeline
                replies = [error]
        else:
            pipe = self._redis.pipeline(transaction=False)
            for command in commands:
                command(pipe)
            replies = await pipe.execute(raise_on_error=False)
        answers = []
        for group in groups:
            answers.append(replies[: len(group)])
            replies = replies[len(group) :]
        return answers


def evalsha(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Command:
    """The command that runs a registered script by its digest."""
    return lambda redis: redis.evalsha(script.sha, len(keys), *keys, *args)
