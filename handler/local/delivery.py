"""Local delivery: one bounded queue and one writer task per connection.

Broadcasting only enqueues, so a slow reader can never hold up a room. A connection whose
queue overflows is closed with 1013 instead of being allowed to grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from handler.chat.wire import CloseCode

log = logging.getLogger(__name__)


class OutboxState(Enum):
    """Where an outbox is in its life. OPEN takes frames; the others take none."""

    OPEN = "open"
    CLOSING = "closing"  # a close is queued behind the frames before it
    ABANDONED = "abandoned"  # the client did not take its close in time; the writer stopped
    CLOSED = "closed"  # the writer finished: the close was sent, or the socket failed


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class Outbox:
    """The frames waiting for one client, and the task that writes them in order.

    Call `start()` once the socket is accepted; the task it returns completes when the writer
    stops (after sending a close, or when the socket fails). After a close is requested the
    writer gets `close_grace` seconds to flush it; a client that still is not reading is
    then abandoned so the server can let go of it.
    """

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        capacity: int,
        close_grace: float = 10.0,
        on_overflow: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_overflow` is called when the queue overflows and the client is closed."""
        self._send = send
        self._on_overflow = on_overflow
        self.close_code: int | None = None  # the close this side asked for, if any
        self._close = close
        # A deque and one wake-up future rather than an asyncio.Queue: every delivery passes
        # through here, and the queue's bookkeeping was a measurable share of its CPU.
        self._frames: deque[str | _Close] = deque()
        self._capacity = capacity
        self._wakeup: asyncio.Future[None] | None = None
        self._close_grace = close_grace
        self.state = OutboxState.OPEN
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self._task

    @property
    def closing(self) -> bool:
        return self.state is not OutboxState.OPEN

    def offer(self, payload: str) -> None:
        """Queue a frame; on overflow, drop the backlog and close the connection with 1013."""
        if self.state is not OutboxState.OPEN:
            return
        if len(self._frames) >= self._capacity:
            log.warning("send queue full (%d frames); closing slow consumer", self._capacity)
            self._on_overflow()
            self._frames.clear()
            self.request_close(CloseCode.TRY_AGAIN_LATER, "slow consumer: send queue full")
            return
        self._push(payload)

    def request_close(self, code: int, reason: str) -> None:
        """Close after the frames already queued. Only the first request counts."""
        if self.state is not OutboxState.OPEN:
            return
        self.state = OutboxState.CLOSING
        self.close_code = code
        if len(self._frames) >= self._capacity:
            self._frames.clear()
        self._push(_Close(code, reason))
        if self._task is not None:
            asyncio.get_running_loop().call_later(self._close_grace, self._abandon)

    def _push(self, item: str | _Close) -> None:
        self._frames.append(item)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _abandon(self) -> None:
        if self._task is not None and not self._task.done():
            self.state = OutboxState.ABANDONED
            self._task.cancel()

    async def _run(self) -> None:
        frames = self._frames
        try:
            while True:
                if not frames:
                    self._wakeup = asyncio.get_running_loop().create_future()
                    await self._wakeup
                    continue
                item = frames.popleft()
                if isinstance(item, _Close):
                    await self._close(item.code, item.reason)
                    self.state = OutboxState.CLOSED
                    return
                await self._send(item)
        except asyncio.CancelledError:
            if self.state is not OutboxState.ABANDONED:
                raise
            log.info("client did not take its close frame in time; abandoning it")
        except Exception as error:  # the socket is gone; the reader side will notice too
            self.state = OutboxState.CLOSED
            log.debug("writer stopped: %r", error)


class LocalDelivery:
    """The delivery port over the outboxes of this process's connections. Outboxes live on
    the event loop, and so does every caller (the core runs there, in memory and on Redis)."""

    def __init__(self, delivered: Callable[[int], None] = lambda frames: None) -> None:
        """`delivered` is told how many frames each send queued."""
        self._outboxes: dict[str, Outbox] = {}
        self._delivered = delivered

    def register(self, connection_id: str, outbox: Outbox) -> None:
        """Called when a socket is accepted."""
        self._outboxes[connection_id] = outbox

    def unregister(self, connection_id: str) -> None:
        self._outboxes.pop(connection_id, None)

    def __len__(self) -> int:
        return len(self._outboxes)

    def send(self, connection_ids: Sequence[str], payload: str) -> Sequence[str]:
        gone: list[str] = []
        for connection_id in connection_ids:
            outbox = self._outboxes.get(connection_id)
            if outbox is None:
                gone.append(connection_id)
            else:
                outbox.offer(payload)
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
