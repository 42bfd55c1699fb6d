from __future__ import annotations

import asyncio

from handler.local.delivery import LocalDelivery, Outbox


class Socket:
    """Records writes; `gate` lets a test stall the client like one that stopped reading."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.done = asyncio.Event()

    async def send(self, payload: str) -> None:
        await self.gate.wait()
        self.sent.append(payload)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.done.set()


async def test_frames_are_written_in_order_then_closed() -> None:
    socket = Socket()
    outbox = Outbox(socket.send, socket.close, capacity=10)
    task = outbox.start()
    for i in range(5):
        outbox.offer(str(i))
    outbox.request_close(1000, "bye")
    await asyncio.wait_for(task, 5)
    assert socket.sent == ["0", "1", "2", "3", "4"]
    assert socket.closed == (1000, "bye")


async def test_overflow_drops_the_backlog_and_closes_1013_without_blocking() -> None:
    slow, fast = Socket(), Socket()
    slow.gate.clear()
    delivery = LocalDelivery()
    slow_box = Outbox(slow.send, slow.close, capacity=4)
    fast_box = Outbox(fast.send, fast.close, capacity=4)
    delivery.register("slow", slow_box)
    delivery.register("fast", fast_box)
    slow_task, fast_task = slow_box.start(), fast_box.start()
    for i in range(20):
        assert delivery.send(["slow", "fast"], str(i)) == []  # returns at once, never waits
        await asyncio.sleep(0)  # let the fast writer run, as the event loop would
    assert fast.sent == [str(i) for i in range(20)]
    assert slow_box.closing
    slow.gate.set()
    await asyncio.wait_for(slow.done.wait(), 5)
    assert slow.closed == (1013, "slow consumer: send queue full")
    assert len(slow.sent) < 20
    assert not fast_task.done()
    fast_task.cancel()
    await asyncio.wait_for(slow_task, 5)


async def test_a_client_that_never_reads_is_abandoned_after_the_grace() -> None:
    socket = Socket()
    socket.gate.clear()
    outbox = Outbox(socket.send, socket.close, capacity=2, close_grace=0.05)
    task = outbox.start()
    outbox.offer("stuck")
    outbox.request_close(1013, "slow")
    await asyncio.wait_for(task, 5)
    assert socket.closed is None and task.done() and not task.cancelled()


async def test_send_to_unknown_connection_reports_it_gone() -> None:
    assert LocalDelivery().send(["nobody"], "x") == ["nobody"]


async def test_a_failing_socket_ends_only_its_writer() -> None:
    async def broken(payload: str) -> None:
        raise OSError("connection reset")

    socket = Socket()
    outbox = Outbox(broken, socket.close, capacity=2)
    task = outbox.start()
    outbox.offer("x")
    await asyncio.wait_for(task, 5)
    assert task.exception() is None
