"""The uvicorn transport: translates a Starlette WebSocket into the core's three calls."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, WebSocket, WebSocketException
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from auth.base import authenticate_on_loop
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal
from auth.rooms import Rights, readable
from handler.chat.core import ConnectParams
from handler.chat.handshake import Accepted, Refused, negotiate
from handler.chat.ports import StoreUnavailable
from handler.chat.wire import CloseCode
from handler.local.delivery import Outbox
from handler.local.protocols import SOCKET
from infra.observability.log_json import log_context

if TYPE_CHECKING:
    from handler.local.service import LocalChat

log = logging.getLogger(__name__)

# At most this many frames go to the core in one call (one Redis pipeline).
BATCH_FRAMES = 64

# The seed's socket path. Any room name, `/` included, so that one with `/` reaches the
# handshake's rules and is refused with their reason, as on API Gateway.
SOCKET_PATH = re.compile(r"/items/(?P<item_id>.*)/ws")


class SocketsFirst:
    """The ASGI app `wschat serve` runs: a socket on the chat's path goes straight to
    `chat_socket`, everything else to the FastAPI app. A socket lives for hours, and so does
    each coroutine frame between uvicorn and its endpoint: FastAPI's middleware, exit stacks,
    router and dependency solving held about 11 KiB for every idle connection
    (docs/performance.md). What they did for this one route is done here: the app in the
    scope, and a WebSocketException before the accept answered as a close (an HTTP 403)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            match = SOCKET_PATH.fullmatch(path)
            if match is not None:
                scope["app"] = self.app
                websocket = WebSocket(scope, receive, send)
                try:
                    await chat_socket(websocket, match["item_id"])
                except WebSocketException as refused:
                    await websocket.close(refused.code, refused.reason)
                return
        await self.app(scope, receive, send)


async def chat_socket(websocket: WebSocket, item_id: str) -> None:
    """`/items/{item_id}/ws`: the seed's endpoint, now a room of a chat."""
    chat: LocalChat = websocket.app.state.chat
    handshake = Handshake.from_asgi(websocket.scope)
    asked = negotiate(
        item_id, handshake.query, handshake.subprotocols, chat.settings.max_room_length
    )
    if isinstance(asked, Refused):
        log.info("handshake refused (%d): %s", asked.status, asked.reason)
        chat.metrics.refused(asked.status)
        # The seed's answer: a policy-violation close before accept, which is HTTP 403.
        raise WebSocketException(CloseCode.POLICY_VIOLATION, asked.reason)
    try:
        principal = await authenticate_on_loop(chat.authenticator, handshake)
        rights = readable(chat.core.rights(principal, asked.room))
    except AuthError as error:
        log.info("handshake refused (%d): %s", error.status, error.reason)
        chat.metrics.refused(error.status)
        if error.status == 403:
            raise WebSocketException(CloseCode.POLICY_VIOLATION, error.reason) from None
        await websocket.send_denial_response(
            PlainTextResponse(error.reason, status_code=error.status)
        )
        return

    del handshake  # its headers and query are not needed for the hours a socket may live
    connection_id = secrets.token_urlsafe(9)
    with log_context(connection_id=connection_id, room=asked.room, user_id=principal.id):
        await _serve_socket(websocket, chat, connection_id, asked, principal, rights)


async def _serve_socket(
    websocket: WebSocket,
    chat: LocalChat,
    connection_id: str,
    asked: Accepted,
    principal: Principal,
    rights: Rights,
) -> None:
    metrics = chat.metrics
    access = (websocket.scope.get("extensions") or {}).get(SOCKET, {})
    outbox = Outbox(
        websocket.send_text,
        websocket.close,
        chat.settings.send_queue_frames,
        on_overflow=metrics.slow_consumer_closes.inc,
        sink=access.get("sink"),
        corks=chat.delivery.corks,
    )
    chat.delivery.register(connection_id, outbox)
    metrics.joined(asked.room)
    reader: asyncio.Task[int] | None = None
    finished: asyncio.Future[None] | None = None
    try:
        params = ConnectParams(asked.dialect, asked.q, rights)
        try:
            # A member before the handshake completes, as on API Gateway: whatever the room
            # says once the client has its socket reaches it. (On Redis, joining takes round
            # trips; a message published meanwhile went to another worker's members only.)
            await chat.call(chat.core.connect, connection_id, asked.room, principal, params)
        except Exception as error:
            _unavailable(outbox, error)
        await websocket.accept(subprotocol=asked.subprotocol)
        finished = outbox.start()
        try:
            await chat.call(chat.core.welcome, connection_id, asked.since, asked.epoch)
        except Exception as error:
            _unavailable(outbox, error)
        reader = asyncio.create_task(
            _read(websocket, chat, connection_id, outbox, access.get("queued", lambda: 0))
        )
        # Whichever side ends first ends the connection: the client hanging up, or the
        # writer finishing a close (slow consumer, oversize frame, expiry, abuse).
        try:
            ends: list[asyncio.Future[Any]] = [reader, finished]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
    finally:
        try:
            await chat.call(chat.core.disconnect, connection_id)
        except Exception:  # the store is down: the socket's own resources go all the same
            log.warning("could not record that %s left (store unavailable)", connection_id)
        finally:
            chat.delivery.unregister(connection_id)
            if finished is not None:
                finished.cancel()
            metrics.left(asked.room, _close_code(reader, outbox))


def _close_code(reader: asyncio.Task[int] | None, outbox: Outbox) -> int:
    """How the connection ended: the close this side sent, else the client's, else 1006."""
    if outbox.close_code is not None:
        return outbox.close_code
    if reader is not None and reader.done() and not reader.cancelled() and not reader.exception():
        return reader.result()
    return CloseCode.ABNORMAL


async def _read(
    websocket: WebSocket,
    chat: LocalChat,
    connection_id: str,
    outbox: Outbox,
    waiting: Callable[[], int],
) -> int:
    """Hand the client's frames to the core until it goes; returns its close code. Frames that
    arrived while the core was busy with earlier ones (`waiting` counts them) go to it
    together: on Redis, their messages are then stored in one round trip instead of one each."""
    while True:
        message = await websocket.receive()
        frames: list[str | bytes] = []
        while message["type"] != "websocket.disconnect":
            text = message.get("text")
            frames.append(text if text is not None else message.get("bytes", b""))
            if len(frames) == BATCH_FRAMES or not waiting():
                break
            message = await websocket.receive()  # already queued: no wait
        while frames and not outbox.closing:  # once closing, what the client says is moot
            try:
                handled = await chat.call(chat.core.receive, connection_id, frames)
            except Exception as error:
                _unavailable(outbox, error)
                break
            frames = frames[handled:]
        if message["type"] == "websocket.disconnect":
            return int(message.get("code", CloseCode.NO_STATUS))


def _unavailable(outbox: Outbox, error: Exception) -> None:
    """The store failed a call (Redis unreachable, say): close with 1013, and the client
    reconnects and resumes with `since`, losing nothing. An outage is one line per socket;
    anything else is a bug, with its traceback."""
    if isinstance(error, StoreUnavailable):
        log.warning("the chat's store is unavailable (%s); closing with 1013", error)
    else:
        log.exception("the chat's store failed; closing the connection with 1013")
    outbox.request_close(CloseCode.TRY_AGAIN_LATER, "the chat is unavailable; try again")
