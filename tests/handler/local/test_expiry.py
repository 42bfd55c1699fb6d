"""The expiry timers under uvicorn, on a real event loop, driving the core over memory."""

from __future__ import annotations

import asyncio
import time

from auth.principal import Principal
from handler.chat.core import ChatCore, ConnectParams
from handler.chat.ports import Dialect
from handler.local.expiry import LoopExpiryTimers
from infra.memory.connections import MemoryConnections
from infra.memory.message_log import MemoryMessageLog
from tests.handler.chat.recording import RecordingDelivery, TokenBook


async def test_a_timer_follows_each_refresh_and_goes_with_its_connection() -> None:
    now = time.time()
    timers = LoopExpiryTimers()
    delivery = RecordingDelivery()
    core = ChatCore(
        MemoryConnections(),
        MemoryMessageLog(),
        delivery,
        credentials=TokenBook(sooner=Principal("u", "u", "u", expires_at=now + 0.2)),
        timers=timers,
    )
    json = ConnectParams(Dialect.JSON)
    core.connect("A", "r", Principal("u", "u", "u", expires_at=now + 60), json)
    core.connect("B", "r", Principal("v", "v", "v", expires_at=now + 60), json)
    core.connect("C", "r", Principal("w", "w", "w"), json)
    assert len(timers) == 2  # C's credential never runs out
    core.disconnect("B")
    assert len(timers) == 1
    core.message("A", '{"action":"refresh","token":"sooner"}')
    await asyncio.sleep(0.5)
    assert delivery.closed == {"A": (4401, "token expired")} and len(timers) == 0
