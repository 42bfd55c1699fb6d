"""Sync code waiting on coroutines from a greenlet on the event loop
(handler/local/greenbridge.py)."""

from __future__ import annotations

import asyncio
import contextvars
import inspect

import pytest
from greenlet import getcurrent

from handler.local import greenbridge

REQUEST = contextvars.ContextVar("REQUEST", default="none")


async def double(value: int) -> int:
    await asyncio.sleep(0.01)  # a real suspension: the loop runs others meanwhile
    return value * 2


async def fail() -> None:
    await asyncio.sleep(0)
    raise LookupError("from the coroutine")


def sync_core(value: int) -> tuple[int, bool, str]:
    first = greenbridge.wait(double(value))
    second = greenbridge.wait(double(first))
    return second, greenbridge.can_wait(), REQUEST.get()


async def test_sync_code_waits_on_coroutines_and_sees_the_tasks_context() -> None:
    REQUEST.set("r1")
    assert await greenbridge.Greenlets().call(sync_core, 3) == (12, True, "r1")
    assert not greenbridge.can_wait()


async def test_calls_interleave_on_one_loop_each_with_its_own_answers() -> None:
    greenlets = greenbridge.Greenlets()
    results = await asyncio.gather(*(greenlets.call(sync_core, n) for n in range(20)))
    assert [result[0] for result in results] == [n * 4 for n in range(20)]


async def test_errors_travel_both_ways() -> None:
    def catches() -> str:
        try:
            greenbridge.wait(fail())
        except LookupError as error:
            return f"caught {error}"
        return "not raised"

    def raises() -> None:
        raise ValueError("from the sync code")

    assert await greenbridge.Greenlets().call(catches) == "caught from the coroutine"
    with pytest.raises(ValueError, match="from the sync code"):
        await greenbridge.Greenlets().call(raises)


async def test_a_wait_past_its_timeout_raises_in_the_sync_code() -> None:
    def slow() -> None:
        greenbridge.wait(asyncio.sleep(5), timeout=0.05)

    with pytest.raises(TimeoutError):
        await greenbridge.Greenlets().call(slow)


async def test_waiting_outside_a_call_is_refused_rather_than_blocking_the_loop() -> None:
    coroutine = double(1)
    with pytest.raises(RuntimeError, match=r"outside Greenlets\.call"):
        greenbridge.wait(coroutine)
    # Closed, not left to warn "never awaited".
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


async def test_calls_reuse_greenlets_each_with_its_callers_context_and_errors() -> None:
    """Each call started a greenlet and ran it to its end: 9 µs of CPU, where resuming one
    costs 0.3. `Greenlets` keeps its idle greenlets for the next calls, and a reused one runs
    in the new caller's context, after a call that raised as after one that returned."""
    greenlets = greenbridge.Greenlets()

    def which() -> tuple[object, str]:
        greenbridge.wait(double(1))
        return getcurrent(), REQUEST.get()

    def raises() -> None:
        greenbridge.wait(fail())

    first, _ = await greenlets.call(which)
    with pytest.raises(LookupError):
        await greenlets.call(raises)
    REQUEST.set("r2")
    again, seen = await greenlets.call(which)
    assert again is first and seen == "r2"
    together = await asyncio.gather(*(greenlets.call(which) for _ in range(3)))
    assert len({id(greenlet) for greenlet, _ in together}) == 3  # one each, at once
    await asyncio.gather(*(greenlets.call(which) for _ in range(greenbridge.IDLE_KEPT + 10)))
    assert len(greenlets._idle) == greenbridge.IDLE_KEPT
