"""Server-side scripts run many at a time, in one pipeline.

A node that lacks a script answers its EVALSHA with NoScriptError, without running it: a
Redis restarted or flushed, a replica just promoted (scripts are not replicated), and, on a
Redis Cluster, any node at all, since redis-py's cluster pipeline, unlike the plain one,
never loads the scripts it carries. So the calls that met it are run again once the script
is loaded (on a cluster, SCRIPT LOAD goes to every primary): they did not run, so nothing
runs twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

Call = tuple[list[str], list[Any]]  # one run of a script: its keys and arguments


async def run_pipelined(redis: Any, script: Any, calls: Sequence[Call]) -> list[Any]:
    """`script` (a registered script) run once per call, all in one pipeline; each call's
    reply, or the error it met (not raised)."""
    replies = await _once(redis, script, calls)
    missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        await redis.script_load(script.script)
        again = await _once(redis, script, [calls[n] for n in missing])
        for n, reply in zip(missing, again, strict=True):
            replies[n] = reply
    return replies


async def _once(redis: Any, script: Any, calls: Sequence[Call]) -> list[Any]:
    # EVALSHA itself, not the script object: redis-py's plain pipeline would ask SCRIPT
    # EXISTS first, one more round trip for every batch.
    pipe = redis.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies
