"""The chat core's ports on Redis, for `wschat serve` with `WSCHAT_REDIS_URL`.

The core is synchronous (handler/chat/ports.py); Redis is reached with redis.asyncio on the
worker's event loop. So on Redis the core runs in a greenlet on the loop (infra/greenbridge.py),
and these adapters hand each Redis call to the loop's task and wait for its answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from auth.rooms import Rights
from handler.chat.core import ChatCore
from handler.chat.ports import ChatMessage, Connection, Draft, Stored, StoreUnavailable
from infra import greenbridge
from infra.redis_history import RedisHistory
from infra.redis_rooms import RoomFeed

T = TypeVar("T")
CALL_TIMEOUT = 10.0


class LoopBridge:
    """How a port reaches Redis: it waits for the answer when the core called it (through
    greenbridge.call), and starts a task when plain loop code did (a fan-out finding a
    socket gone), since that code must not wait."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """The coroutine's result; StoreUnavailable if Redis could not be reached (after
        redis-py's retries) or did not answer within CALL_TIMEOUT."""
        try:
            return greenbridge.wait(coroutine, CALL_TIMEOUT)
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailable(f"Redis: {error}") from error
        except TimeoutError as error:
            raise StoreUnavailable(f"Redis: no answer in {CALL_TIMEOUT:g} s") from error

    def settle(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Wait for `coroutine` if the caller can, else start it as a task."""
        if greenbridge.can_wait():
            self.run(coroutine)
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # a reference, so the task is not collected half-way
        task.add_done_callback(self._tasks.discard)


class RedisConnections:
    """The connection store: this worker's members in the feed, membership in Redis."""

    def __init__(self, feed: RoomFeed, bridge: LoopBridge) -> None:
        self._feed = feed
        self._bridge = bridge

    def add(self, connection: Connection) -> None:
        self._bridge.run(self._feed.join(connection))

    def refresh(self, connection_id: str, expires_at: float | None, rights: Rights) -> bool:
        connection = self._feed.get(connection_id)
        if connection is not None:  # what Redis holds of a member does not change
            self._feed.update(replace(connection, expires_at=expires_at, rights=rights))
        return connection is not None

    def get(self, connection_id: str) -> Connection | None:
        return self._feed.get(connection_id)

    def remove(self, connection_id: str) -> Connection | None:
        connection = self._feed.forget(connection_id)
        if connection is not None:  # from the core, or from a fan-out finding it gone
            self._bridge.settle(self._feed.leave(connection))
        return connection

    def in_room(self, room: str) -> Sequence[Connection]:
        """This worker's members of the room (the others are other workers' to reach)."""
        return self._feed.local_members(room)

    def count(self, room: str) -> int:
        return self._bridge.run(self._feed.count(room))

    def mark_welcomed(
        self, connection_id: str, room: str, through_id: int, force: bool = False
    ) -> bool:
        return self._feed.mark_welcomed(connection_id, through_id, force)

    def defer_presence(self, member: Connection, frame: str) -> bool:
        return self._feed.defer_presence(member, frame)

    def take_deferred(self, connection: Connection) -> Sequence[str]:
        return self._feed.take_deferred(connection.id)


class RedisMessageLog:
    """The message log: a stream per room, appended to by the atomic publish script."""

    def __init__(self, history: RedisHistory, bridge: LoopBridge) -> None:
        self._history = history
        self._bridge = bridge

    def append(self, draft: Draft) -> tuple[ChatMessage, bool]:
        return self._bridge.run(self._history.append(draft, time.time()))

    def append_many(self, drafts: Sequence[Draft]) -> Sequence[Stored]:
        return self._bridge.run(self._history.append_many(drafts, time.time()))

    def after(self, room: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        return self._bridge.run(self._history.after(room, after_id, limit))

    def recent(self, room: str, limit: int) -> Sequence[ChatMessage]:
        return self._bridge.run(self._history.recent(room, limit))

    def latest_id(self, room: str) -> int:
        latest, _ = self.head(room)
        return latest

    def head(self, room: str) -> tuple[int, str]:
        return self._bridge.run(self._history.latest(room))


class RedisBroadcast:
    """On Redis the store publishes: one script stores a message and publishes it on its
    room's channel (MessageLog.append), and the script that changes a room's membership
    announces it. So there is nothing left to send here. What arrives on a channel reaches
    this worker's members through the feed, which delivers through the core that built this
    broadcast (RoomFeed.serve)."""

    def __init__(self, feed: RoomFeed, core: ChatCore) -> None:
        feed.serve(core)

    def message(self, message: ChatMessage, sender_id: str | None) -> None:
        """Nothing to do: the publish script that stored the message published it."""

    def presence(self, event: str, connection: Connection) -> None:
        """Nothing to do: the script that made the change in Redis (JOIN, LEAVE, or a
        reaper's REMOVE) announced it, once, with the room's count."""
