"""The core's expiry timers under uvicorn: one asyncio timer per connection whose credential
runs out, moved whenever the core says (a refresh, sooner or later)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class LoopExpiryTimers:
    """Timers on the running event loop, where the core runs (directly, or in a greenlet)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._handles: dict[str, asyncio.TimerHandle] = {}

    def expire_at(
        self, connection_id: str, at: float | None, due: Callable[[str], float | None]
    ) -> None:
        handle = self._handles.pop(connection_id, None)
        if handle is not None:
            handle.cancel()
        if at is not None:
            delay = max(0.0, at - self._clock())
            loop = asyncio.get_running_loop()
            self._handles[connection_id] = loop.call_later(delay, self._fire, connection_id, due)

    def _fire(self, connection_id: str, due: Callable[[str], float | None]) -> None:
        del self._handles[connection_id]
        self.expire_at(connection_id, due(connection_id), due)

    def __len__(self) -> int:
        return len(self._handles)
