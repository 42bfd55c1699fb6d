"""uvicorn's HTTP and WebSocket protocols with the bounds a public chat server needs.

`wschat serve` and `wschat emulate` both run uvicorn with these:

- A connection must complete its request (for a WebSocket, the upgrade request) within
  `WSCHAT_HANDSHAKE_TIMEOUT` seconds, and at most `WSCHAT_MAX_PENDING_HANDSHAKES` requests may
  be in progress at once: a client that sends half its headers and stalls (slowloris) holds a
  slot briefly, and only so many of them.
- A refused handshake (an HTTP denial response) counts as a completed handshake, so uvicorn
  does not log "ASGI callable returned without completing handshake." at ERROR for each one.
- A text frame that is not valid UTF-8 closes its connection with 1007 and one short log line,
  instead of a traceback at ERROR that a client could repeat to flood the log.
- The app can write frames it has encoded itself straight to an uncompressed socket's
  transport (`RawFrames`), without an ASGI `send` per frame: a broadcast encodes a frame once
  and costs each recipient a write (handler/local/delivery.py).

They build on uvicorn's `h11` and `websockets-sansio` implementations (pinned in
pyproject.toml); tests/contract/test_hostile.py holds each behaviour, on both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.protocol import State
from websockets.server import ServerProtocol

from handler.chat.wire import CloseCode

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent, ASGISendEvent

log = logging.getLogger(__name__)

# The app's lifespan state holds, under this key, what closes every socket after what is queued
# for it (handler/local/service.py); a stopping server calls it (ChatWebSocketProtocol).
DRAIN = "wschat.drain"

# The scope's extension under this key (an ASGI extension is a dict) gives the app, under
# "queued", the count of the frames a socket has received that the app has not taken yet (it
# takes them together, handler/local/socket.py), and under "sink", for a socket without
# compression, its RawFrames.
SOCKET = "wschat.socket"

# A request is complete, or beyond our concern, in any of these states of the client's side.
_REQUEST_OVER = frozenset({h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR})


class HandshakeGuard:
    """Counts the requests in progress on one server, and says how long each may take."""

    def __init__(self, timeout: float, limit: int, clock: Any = time.monotonic) -> None:
        self.timeout = timeout
        self.limit = limit
        self.pending = 0
        self._clock = clock
        self._warned_at: float | None = None

    def admit(self) -> bool:
        if self.pending >= self.limit:
            now = self._clock()
            if self._warned_at is None or now - self._warned_at >= 10:
                self._warned_at = now  # one line per 10 s, however hard the flood
                log.warning(
                    "%d requests in progress (WSCHAT_MAX_PENDING_HANDSHAKES); "
                    "refusing new connections until some complete",
                    self.pending,
                )
            return False
        self.pending += 1
        return True

    def release(self) -> None:
        self.pending -= 1


class ChatServerConfig(uvicorn.Config):
    """uvicorn's Config, running our protocols, with the handshake bounds they read."""

    def __init__(
        self, app: Any, *, handshake_timeout: float, max_pending_handshakes: int, **kwargs: Any
    ) -> None:
        super().__init__(app, http=GuardedH11Protocol, ws=ChatWebSocketProtocol, **kwargs)
        self.handshakes = HandshakeGuard(handshake_timeout, max_pending_handshakes)


def serve(config: ChatServerConfig) -> None:
    """Run a server as `uvicorn.run` would: with reload, several workers, or alone."""
    from uvicorn.supervisors import ChangeReload, Multiprocess

    server = uvicorn.Server(config)
    if config.should_reload:
        ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
    elif config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
        if not server.started:  # e.g. the port was taken; uvicorn has said why
            raise SystemExit(3)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request and a cap on those in progress."""

    def __init__(
        self,
        config: ChatServerConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = config.handshakes
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state in _REQUEST_OVER:
            self._disarm()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()  # the upgrade request is complete; the WebSocket protocol takes over
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self.transport.is_closing():
            return
        if not self._guard.admit():
            self.transport.abort()
            return
        self._deadline = self.loop.call_later(self._guard.timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            self._guard.release()

    def _expire(self) -> None:
        self._deadline = None
        self._guard.release()
        client = "%s:%d" % self.client if self.client else "a client"  # noqa: UP031
        log.info("%s did not complete its request in %gs; closing", client, self._guard.timeout)
        self.transport.abort()


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol: a denial response completes the handshake, a
    text frame with invalid UTF-8 gets 1007 and one log line, a stopping server lets the
    app flush each socket before its 1012 close, and the app can see how many frames wait."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # websockets' debug lines show every header and frame: cookies, bearer tokens, the
        # seed's echo of the credential, refresh requests. Not at any log level.
        self.conn.debug = False
        # An idle socket holds these for hours: the lighter forms save 3.8 KiB together.
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.handshake_initiated and not self.handshake_complete:  # the app runs
            access: dict[object, object] = {"queued": self.queue.qsize}
            if not self.conn.extensions:  # a deflated frame is each socket's own
                access["sink"] = RawFrames(self.conn, self.transport, self.writable)
            self.scope["extensions"][SOCKET] = access

    def shutdown(self) -> None:
        """uvicorn closes each socket with 1012 at once, dropping what the app still had
        queued for it. An app that can drain does so instead: every socket gets its queued
        frames, then 1012; what has not closed after most of the graceful-shutdown time is
        closed here as uvicorn would (uvicorn stops waiting at the full time)."""
        drain = self.app_state.get(DRAIN)
        if drain is None or not self.handshake_complete or self.close_sent:
            super().shutdown()
            return
        drain()
        grace = (self.config.timeout_graceful_shutdown or 10.0) * 0.8
        self.loop.call_later(grace, self._close_now)

    def _close_now(self) -> None:
        if not self.transport.is_closing():
            super().shutdown()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True  # the denial response was sent: nothing is pending
        elif message["type"] == "websocket.accept" and hasattr(self, "response"):
            # The upgrade request and its response (their headers, about 2.5 KiB) are
            # needed no more; the scope keeps what the app reads. websockets' parser keeps
            # the request for the socket's life (a local of its generator): empty it.
            self.request.headers.clear()
            del self.request, self.response

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text":
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                client = "%s:%d" % self.client if self.client else "a client"  # noqa: UP031
                log.info("%s sent a text frame that is not UTF-8; closing with 1007", client)
                self.conn.send_close(CloseCode.INVALID_PAYLOAD, "invalid UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()


class RawFrames:
    """Writes frames the app encoded (whole, unmasked, uncompressed) to one socket's
    transport. websockets' protocol state still governs the socket: nothing is written
    unless it is OPEN, so never before the handshake's response nor after a close frame
    either way; pings, pongs and the close handshake stay uvicorn's."""

    __slots__ = ("_conn", "_transport", "_writable")

    def __init__(
        self, conn: ServerProtocol, transport: asyncio.Transport, writable: asyncio.Event | _Flag
    ) -> None:
        self._conn = conn
        self._transport = transport
        self._writable = writable  # uvicorn's: clear while the transport is paused

    def ready(self) -> bool:
        return (
            self._conn.state is State.OPEN
            and self._writable.is_set()
            and not self._transport.is_closing()
        )

    def write(self, data: bytes) -> None:
        if self._conn.state is State.OPEN and not self._transport.is_closing():
            self._transport.write(data)

    async def drained(self) -> None:
        await self._writable.wait()  # also set once the connection is lost


class _Inbox:
    """The frames and events uvicorn's protocol queues for the app (its ASGI `receive`):
    the part of asyncio.Queue that uvicorn uses, for one reader, without the three deques and
    the Event an asyncio.Queue allocates up front. uvicorn pauses reading while anything
    waits here, so it holds a few items at most."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Flag:
    """asyncio.Event as uvicorn uses it for `writable`, whose waiters' deque is allocated
    only when someone waits (a paused transport)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter
