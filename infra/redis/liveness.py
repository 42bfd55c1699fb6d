"""Whether this worker reaches Redis (`RedisLink`) and hears its own subscription (`Canary`).

A failed call to Redis says at once that the link is lost; a subscription can go deaf without
any call failing, and only a canary tells: every CANARY_SECONDS the worker publishes to a
channel of its own, `wschat:canary:{<worker>}`, which its subscription hears
(infra/redis/subscription.py); unseen for DEAF_AFTER, the subscription is renewed. On a Redis
Cluster the worker subscribes on several nodes, each link of which can go deaf alone: each
has a canary, on a channel whose slot is that node's (infra/redis/shards.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff

log = logging.getLogger(__name__)
T = TypeVar("T")

CANARY_SECONDS = 1.0
DEAF_AFTER = 5.0  # a canary unseen this long: resubscribe and catch up


class RedisLink:
    """Whether this worker reaches Redis: lost at the first failure of any call to it, found
    again when a call succeeds. Each connection's retry policy (`retry`) reports a failure
    before retrying the call: redis-py retries a call on a dead link for seconds, and the
    subscription's reconnects for longer, so health said `linked` for 5 s after Redis died
    (until the canary's silence told). The canary stays, for a link that fails silently."""

    def __init__(self) -> None:
        self.up = False

    def __deepcopy__(self, memo: dict[int, Any]) -> RedisLink:
        return self  # each connection copies its pool's retry policy: all report here

    def retry(self, backoff: AbstractBackoff, retries: int) -> Retry:
        """redis-py's retry policy, reporting each failure here first."""
        return _ReportingRetry(self, backoff, retries)


class _ReportingRetry(Retry):
    def __init__(self, link: RedisLink, backoff: AbstractBackoff, retries: int) -> None:
        super().__init__(backoff, retries)
        self._link = link

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        async def reported(error: Exception, *count: int) -> Any:
            self._link.up = False
            return await fail(error, *count)

        return await super().call_with_retry(do, reported, is_retryable, with_failure_count)


class Canary:
    """This worker's canary: published every CANARY_SECONDS on a channel of its own, heard
    on its subscription (`heard`). `renew` is set when the subscription must be made afresh
    (the canary went missing, or the subscription says it lost something); the listener
    resubscribes, and clears it."""

    def __init__(self, redis: Any, link: RedisLink, channel: str) -> None:
        self.channel = channel  # not `wschat:{...}`: no room's channel
        self._redis = redis
        self._link = link
        self._seen = time.monotonic()
        self.renew = asyncio.Event()  # set by the canary's watcher, for the listener

    @property
    def deaf(self) -> bool:
        """No canary for DEAF_AFTER seconds, until a new subscription is in place."""
        return self.renew.is_set() or time.monotonic() - self._seen > DEAF_AFTER

    def heard(self) -> None:
        """The canary arrived, or a new subscription is in place: deaf no sooner than
        DEAF_AFTER from now."""
        self._seen = time.monotonic()

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(CANARY_SECONDS)
            try:
                await self._redis.spublish(self.channel, "canary")
                self._link.up = True
            except Exception:
                self._link.up = False
                continue
            if self.deaf and not self.renew.is_set():
                log.warning("no canary for %.0f s: the subscription is deaf", DEAF_AFTER)
                self.renew.set()  # the listener resubscribes within CANARY_SECONDS
