"""REST on both transports: read a room's history, and publish into a room from a backend.

`GET /rooms/{room}/messages?since=&limit=` and `POST /rooms/{room}/messages`, both behind the
same authenticator as the sockets (a bearer header or a session cookie; never a query token,
which would land in access logs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationInfo, field_validator
from starlette.concurrency import run_in_threadpool

from auth.base import Authenticator
from auth.credentials import find_credential
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal, is_text
from auth.rooms import Right
from handler.chat.core import ChatCore
from handler.chat.handshake import room_problem
from handler.chat.ports import StoreBusy
from handler.chat.wire import MAX_MESSAGE_ID, NOT_TEXT, ErrorCode, FrameError, message_body

log = logging.getLogger(__name__)
T = TypeVar("T")


class RestBackend(Protocol):
    core: ChatCore
    authenticator: Authenticator

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run a call into the core where this backend's stores can serve it."""
        ...


class PublishRequest(BaseModel):
    text: str = Field(min_length=1, description="the message")
    client_msg_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="a retry of the same id is stored once",
    )

    @field_validator("text", "client_msg_id")
    @classmethod
    def _unicode_text(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not is_text(value):
            raise ValueError(NOT_TEXT.format(name=info.field_name))
        return value


async def _run(backend: RestBackend, call: Callable[[], T]) -> T:
    return await backend.call(call)


async def _principal(request: Request, backend: RestBackend) -> Principal:
    scope = dict(request.scope)
    scope["query_string"] = b""
    handshake = Handshake.from_asgi(scope)
    if find_credential(handshake) is None:
        raise HTTPException(
            401,
            "send `Authorization: Bearer <token>` or a `session` cookie",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return await run_in_threadpool(backend.authenticator.authenticate, handshake)
    except AuthError as error:
        log.info("REST request refused (%d): %s", error.status, error.reason)
        raise HTTPException(error.status, error.reason) from None


# The HTTP status of each refusal the core may answer a publish with.
STATUS_OF = {ErrorCode.MESSAGE_TOO_LARGE: 413, ErrorCode.EMPTY_MESSAGE: 422}


def _check_room(room: str, backend: RestBackend) -> None:
    problem = room_problem(room, backend.core.limits.max_room_length)
    if problem is not None:
        raise HTTPException(400, problem)


def _check_right(chat: RestBackend, principal: Principal, room: str, right: Right) -> None:
    if right not in chat.core.rights(principal, room):
        raise HTTPException(403, f"this credential does not let you {right} this room")


async def validation_error(request: Request, error: Exception) -> Response:
    """422 for a request body that does not fit, without echoing the input back: it may hold
    text no JSON response can carry (a lone surrogate), or something the caller meant to keep
    to themselves. ASCII-only JSON, so any name in `loc` is safe to write."""
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    detail = [{"loc": p["loc"], "msg": p["msg"], "type": p["type"]} for p in problems]
    return Response(json.dumps({"detail": detail}), 422, media_type="application/json")


def rest_router(backend: Callable[[], RestBackend]) -> APIRouter:
    router = APIRouter(prefix="/rooms/{room:path}")  # `/` in a room: a 400 that says why

    @router.get("/messages")
    async def read_messages(
        room: str,
        request: Request,
        since: Annotated[int, Query(ge=0, le=MAX_MESSAGE_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Messages after `since`, oldest first, and the room's latest id. Fewer than `limit`
        when they are large (a page is at most 1 MiB of JSON): read on from the last id."""
        chat = backend()
        principal = await _principal(request, chat)
        _check_room(room, chat)
        _check_right(chat, principal, room, Right.READ)
        messages, latest = await _run(chat, lambda: chat.core.read(room, since, limit))
        return {"room": room, "latest_id": latest, "messages": [message_body(m) for m in messages]}

    @router.post("/messages", status_code=201)
    async def publish(
        room: str, body: PublishRequest, request: Request, response: Response
    ) -> dict[str, Any]:
        """Publish as the authenticated principal; the room receives it as a chat message."""
        chat = backend()
        principal = await _principal(request, chat)
        _check_room(room, chat)
        _check_right(chat, principal, room, Right.WRITE)
        try:
            message, created = await _run(
                chat,
                lambda: chat.core.publish(
                    room, principal.id, principal.name, body.text, body.client_msg_id
                ),
            )
        except FrameError as error:  # the core's refusal: empty, or too large
            raise HTTPException(STATUS_OF.get(error.code, 422), error.detail) from None
        except StoreBusy:
            raise HTTPException(
                503, "the room is busy; retry with the same client_msg_id"
            ) from None
        if not created:
            response.status_code = 200  # a retry: already stored and delivered
        return message_body(message)

    return router
