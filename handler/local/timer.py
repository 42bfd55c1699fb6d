"""The core's Timer under uvicorn: the event loop it runs on (directly, or in a greenlet)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LoopTimer:
    """Calls later on the running event loop: where the core batches presence."""

    def call_later(self, seconds: float, action: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(seconds, action)
