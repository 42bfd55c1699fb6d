"""Local delivery: each frame encoded once, written straight to every socket that keeps up,
and queued, with a writer task of its own, only for a socket that is behind.

Broadcasting never waits, so a slow reader can never hold up a room. A connection whose
queue overflows is closed with 1013 instead of being allowed to grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from handler.chat.wire import CloseCode

log = logging.getLogger(__name__)


def text_frame(payload: str) -> bytes:
    """A server's WebSocket text frame carrying `payload`, whole. Server frames are not
    masked, so every uncompressed socket gets these same bytes (RFC 6455, 5.2)."""
    data = payload.encode()
    size = len(data)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + data


class FrameSink(Protocol):
    """A socket's own transport, for frames encoded here (handler/local/protocols.py)."""

    def ready(self) -> bool:
        """True while a write goes out now: the socket is open, with no close sent or
        received, and its transport is not paused."""
        ...

    def write(self, data: bytes) -> None:
        """Write whole frames; nothing is written once the socket is closing."""
        ...

    async def drained(self) -> None:
        """Wait until the transport takes writes again, or the socket is gone."""
        ...


class OutboxState(Enum):
    """Where an outbox is in its life. OPEN takes frames; the others take none."""

    OPEN = "open"
    CLOSING = "closing"  # a close is queued behind the frames before it
    ABANDONED = "abandoned"  # the client did not take its close in time; the writer stopped
    CLOSED = "closed"  # the close was sent, or the socket failed


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class Outbox:
    """What is on its way to one client, in order.

    For a socket with nothing queued and a transport that takes writes, the first frame in a
    turn of the event loop is written at once (the client starts reading while the rest of
    the room is served); the frames after it in the same turn are corked, and go out together
    at the turn's end, in one write (`Corks`): a burst costs a socket two system calls, not
    one a frame. Otherwise a frame is queued, and a writer task, started then and ended once
    the queue is empty, waits for the socket to drain. A socket without a sink
    (permessage-deflate, or the emulator's) has every frame written by that writer through
    the ASGI `send`.

    Call `start()` once the socket is accepted. After a close is requested the writer gets
    `close_grace` seconds to flush it; a client that still is not reading is then abandoned
    so the server can let go of it.
    """

    __slots__ = (
        "_capacity",
        "_close",
        "_close_grace",
        "_corked",
        "_corks",
        "_finished",
        "_frames",
        "_on_overflow",
        "_send",
        "_sink",
        "_writer",
        "close_code",
        "state",
    )

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        capacity: int,
        close_grace: float = 10.0,
        on_overflow: Callable[[], None] = lambda: None,
        sink: FrameSink | None = None,
        corks: Corks | None = None,
    ) -> None:
        """`on_overflow` is called when the queue overflows and the client is closed. With a
        `sink`, frames go to it, corked by `corks` (one per event loop)."""
        self._send = send
        self._close = close
        self._capacity = capacity
        self._close_grace = close_grace
        self._on_overflow = on_overflow
        self._sink = sink
        self._corks = corks if corks is not None else Corks()
        # None: nothing written in this turn of the loop; a list: the first frame was, and
        # these wait for the turn's end.
        self._corked: list[bytes] | None = None
        # Encoded frames for the sink, payloads for `send`, and the close; made when first
        # needed (an empty deque takes 760 bytes, and most sockets never need one).
        self._frames: deque[bytes | str | _Close] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._finished: asyncio.Future[None] | None = None
        self.close_code: int | None = None  # the close this side asked for, if any
        self.state = OutboxState.OPEN

    def start(self) -> asyncio.Future[None]:
        """Begin writing; returns what completes when the outbox is done with its socket
        (its close sent, the socket failed, or the client abandoned). Cancelling it stops
        the writer."""
        self._finished = asyncio.get_running_loop().create_future()
        self._finished.add_done_callback(self._stop)
        if self._frames:
            self._wake()  # what was queued before the accept goes first
        return self._finished

    @property
    def closing(self) -> bool:
        return self.state is not OutboxState.OPEN

    def offer(self, payload: str, frame: bytes | None = None) -> None:
        """Send `payload` (`frame`, when the caller has encoded it: `text_frame(payload)`).
        On overflow, drop the backlog and close the connection with 1013."""
        if self.state is not OutboxState.OPEN:
            return
        sink = self._sink
        if sink is not None and frame is None:
            frame = text_frame(payload)
        # No writer means nothing queued nor in flight: a frame written now keeps its place.
        if (
            frame is not None
            and sink is not None
            and self._writer is None
            and self._finished is not None
            and sink.ready()
        ):
            if self._corked is None:  # the turn's first: out now, while the room is served
                self._corked = []
                self._corks.add(self)
                sink.write(frame)
            else:
                self._corked.append(frame)
            return
        if self._frames is not None and len(self._frames) >= self._capacity:
            log.warning("send queue full (%d frames); closing slow consumer", self._capacity)
            self._on_overflow()
            self._frames.clear()
            self.request_close(CloseCode.TRY_AGAIN_LATER, "slow consumer: send queue full")
            return
        self._push(payload if sink is None or frame is None else frame)

    def request_close(self, code: int, reason: str) -> None:
        """Close after the frames already sent or queued. Only the first request counts."""
        if self.state is not OutboxState.OPEN:
            return
        self.state = OutboxState.CLOSING
        self.close_code = code
        if self._frames is not None and len(self._frames) >= self._capacity:
            self._frames.clear()
        self._push(_Close(code, reason))
        if self._finished is not None:
            asyncio.get_running_loop().call_later(self._close_grace, self._abandon)

    def uncork(self) -> None:
        """Write what this turn corked, in one write; the next frame is a turn's first."""
        corked, self._corked = self._corked, None
        if corked and self._sink is not None:
            self._sink.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def _push(self, item: bytes | str | _Close) -> None:
        if self._frames is None:
            self._frames = deque()
        self._frames.append(item)
        if self._finished is not None:
            self._wake()

    def _wake(self) -> None:
        if self._writer is None and not self._finished_done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def _finished_done(self) -> bool:
        return self._finished is None or self._finished.done()

    def _finish(self, state: OutboxState) -> None:
        self.state = state
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    def _stop(self, finished: asyncio.Future[None]) -> None:
        if finished.cancelled() and self._writer is not None:
            self._writer.cancel()

    def _abandon(self) -> None:
        if not self._finished_done():
            log.info("client did not take its close frame in time; abandoning it")
            if self._writer is not None:
                self._writer.cancel()
            self._finish(OutboxState.ABANDONED)

    async def _write(self) -> None:
        """Drain the queue, then end: a socket that keeps up has no task of its own."""
        frames, sink = self._frames, self._sink
        assert frames is not None  # a writer is started for frames queued
        try:
            self.uncork()  # a frame corked earlier in this turn goes before the queue
            while frames and not self._finished_done():
                item = frames.popleft()
                if isinstance(item, _Close):
                    await self._close(item.code, item.reason)
                    self._finish(OutboxState.CLOSED)
                elif isinstance(item, str):
                    await self._send(item)
                else:
                    assert sink is not None  # only a socket with a sink gets frames encoded
                    await sink.drained()
                    if not sink.ready():
                        raise ConnectionError("the socket closed with frames queued")
                    batch = [item]  # with what queued while it waited, in one write
                    while frames and isinstance(following := frames[0], bytes):
                        batch.append(following)
                        frames.popleft()
                    sink.write(b"".join(batch))
        except Exception as error:  # the socket is gone; the reader side will notice too
            log.debug("writer stopped: %r", error)
            self._finish(OutboxState.CLOSED)
        finally:
            self._writer = None


class Corks:
    """The outboxes written to in this turn of the event loop: at its end, what each has
    corked since its first frame goes out in one write, and its next frame is a turn's first
    again."""

    __slots__ = ("_corked", "_loop")

    def __init__(self) -> None:
        self._corked: list[Outbox] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, outbox: Outbox) -> None:
        if not self._corked:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._uncork)
        self._corked.append(outbox)

    def _uncork(self) -> None:
        corked, self._corked = self._corked, []
        for outbox in corked:
            outbox.uncork()


class LocalDelivery:
    """The delivery port over the outboxes of this process's connections. Outboxes live on
    the event loop, and so does every caller (the core runs there, in memory and on Redis)."""

    def __init__(self, delivered: Callable[[int], None] = lambda frames: None) -> None:
        """`delivered` is told how many frames each send queued."""
        self._outboxes: dict[str, Outbox] = {}
        self._delivered = delivered
        self.corks = Corks()  # for the outboxes registered here

    def register(self, connection_id: str, outbox: Outbox) -> None:
        """Called when a socket is accepted."""
        self._outboxes[connection_id] = outbox

    def unregister(self, connection_id: str) -> None:
        self._outboxes.pop(connection_id, None)

    def __len__(self) -> int:
        return len(self._outboxes)

    def send(self, connection_ids: Sequence[str], payload: str) -> Sequence[str]:
        frame = text_frame(payload)  # once, for every socket that takes it as it is
        outboxes = self._outboxes
        gone: list[str] = []
        for connection_id in connection_ids:
            outbox = outboxes.get(connection_id)
            if outbox is None:
                gone.append(connection_id)
            else:
                outbox.offer(payload, frame)
        self._delivered(len(connection_ids) - len(gone))
        return gone

    def close(self, connection_id: str, code: int, reason: str) -> None:
        outbox = self._outboxes.get(connection_id)
        if outbox is not None:
            outbox.request_close(code, reason)

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection after the frames already queued for it."""
        for outbox in list(self._outboxes.values()):
            outbox.request_close(code, reason)
