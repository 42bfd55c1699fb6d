"""The message log on Redis: a stream per room, appended to by the atomic publish script
(infra/redis/history.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from handler.chat.ports import ChatMessage, Draft, Stored
from infra.redis.bridge import LoopBridge
from infra.redis.history import RedisHistory


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

    def before(self, room: str, before_id: int, limit: int) -> Sequence[ChatMessage]:
        return self._bridge.run(self._history.before(room, before_id, limit))

    def latest_id(self, room: str) -> int:
        latest, _ = self.head(room)
        return latest

    def opening(
        self, room: str, since: int | None, epoch: str, limit: int
    ) -> tuple[int, str, Sequence[ChatMessage]]:
        mark = (epoch, since or 0, "")
        return self._bridge.run(self._history.opening(room, since, mark, limit))

    def head(self, room: str, since: int = 0, epoch: str = "") -> tuple[int, str]:
        return self._bridge.run(self._history.latest(room, (epoch, since, "")))
