from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode

from handler.local.delivery import LocalDelivery, Outbox, OutboxState, text_frame


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


class Sink:
    """A socket's transport as RawFrames shows it: records writes; `ready` is false while
    paused, as after a write the kernel could not take."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.open = True
        self.resumed = asyncio.Event()
        self.resumed.set()

    def ready(self) -> bool:
        return self.open and self.resumed.is_set()

    def write(self, data: bytes) -> None:
        if self.open:
            self.writes.append(data)

    async def drained(self) -> None:
        await self.resumed.wait()

    def frames(self) -> list[str]:
        """The payloads written, in order (each frame here is under 126 bytes)."""
        data, payloads = b"".join(self.writes), []
        while data:
            size = data[1]
            payloads.append(data[2 : 2 + size].decode())
            data = data[2 + size :]
        return payloads


def _sunk(capacity: int = 8) -> tuple[Outbox, Sink, Socket]:
    sink, socket = Sink(), Socket()
    return Outbox(socket.send, socket.close, capacity, sink=sink), sink, socket


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_frame_is_encoded_as_websockets_would(size: int) -> None:
    payload = "é" * (size // 2) + "x" * (size % 2)  # two bytes each in UTF-8
    expected = Frame(Opcode.TEXT, payload.encode()).serialize(mask=False)
    assert text_frame(payload) == expected


async def test_a_turns_first_frame_goes_at_once_and_the_rest_of_the_turn_in_one_write() -> None:
    outbox, sink, socket = _sunk()
    outbox.start()
    tasks = len(asyncio.all_tasks())
    for i in range(4):
        outbox.offer(str(i), text_frame(str(i)))
    assert sink.writes == [text_frame("0")]  # the first goes while the room is served
    assert len(asyncio.all_tasks()) == tasks  # no writer was started for any of them
    await asyncio.sleep(0)
    assert sink.writes == [text_frame("0"), text_frame("1") + text_frame("2") + text_frame("3")]
    outbox.offer("4")  # a new turn: its first frame goes at once again
    assert sink.frames() == ["0", "1", "2", "3", "4"] and len(sink.writes) == 3
    assert socket.sent == []  # nothing went through the ASGI send


async def test_a_paused_transport_queues_frames_and_keeps_their_order() -> None:
    outbox, sink, _ = _sunk()
    outbox.start()
    outbox.offer("a")
    await asyncio.sleep(0)
    sink.resumed.clear()  # the kernel took only part of a write: asyncio paused it
    outbox.offer("b")
    outbox.offer("c")
    await asyncio.sleep(0.01)
    assert sink.frames() == ["a"]
    sink.resumed.set()
    outbox.offer("d")  # while b and c wait their turn: after them, not before
    await asyncio.sleep(0)
    outbox.offer("e")  # the queue is empty again: straight through
    await asyncio.sleep(0.01)
    assert sink.frames() == ["a", "b", "c", "d", "e"]
    assert len(sink.writes) == 3  # a; b, c and d together; e


async def test_a_frame_corked_before_a_pause_goes_before_those_queued_after_it() -> None:
    outbox, sink, _ = _sunk()
    outbox.start()
    outbox.offer("a")  # corked
    sink.resumed.clear()  # something else written in this turn (a pong) paused it
    outbox.offer("b")  # queued
    sink.resumed.set()
    await asyncio.sleep(0.01)
    assert sink.frames() == ["a", "b"]


async def test_a_paused_socket_that_overflows_is_closed_1013_after_its_sent_frames() -> None:
    outbox, sink, socket = _sunk(capacity=4)
    finished = outbox.start()
    sink.resumed.clear()
    for i in range(6):
        outbox.offer(str(i))
    sink.resumed.set()
    await asyncio.wait_for(finished, 5)
    assert socket.closed == (1013, "slow consumer: send queue full")
    assert sink.frames() == []  # the backlog was dropped; the close is all it gets


async def test_nothing_is_written_once_the_socket_closed() -> None:
    outbox, sink, _ = _sunk()
    finished = outbox.start()
    sink.resumed.clear()
    outbox.offer("queued")
    sink.open = False  # the client's close frame arrived; uvicorn answered it
    sink.resumed.set()
    await asyncio.wait_for(finished, 5)
    assert outbox.state is OutboxState.CLOSED and sink.writes == []


async def test_one_encoding_serves_every_recipient_and_the_close_comes_after() -> None:
    delivery = LocalDelivery()
    sunk = [_sunk() for _ in range(3)]
    for index, (outbox, _, _) in enumerate(sunk):
        delivery.register(str(index), outbox)
        outbox.start()
    assert delivery.send(["0", "1", "2"], "hello") == []
    delivery.close("1", 1000, "bye")
    await asyncio.sleep(0.01)
    writes = [sink.writes for _, sink, _ in sunk]
    assert writes == [[text_frame("hello")]] * 3
    assert writes[0][0] is writes[2][0]  # the same bytes object, encoded once
    assert sunk[1][2].closed == (1000, "bye")
