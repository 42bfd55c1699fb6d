"""REST on both transports: read a room's history, and publish into a room from a backend.

`GET /rooms/{room}/messages?since=&limit=` (or `?before=&limit=`), `GET /rooms/{room}/members`
and `POST /rooms/{room}/messages`, all behind the
same authenticator as the sockets (a bearer header or a session cookie; never a query token,
which would land in access logs).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from itertools import accumulate
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect

from auth.base import Authenticator, authenticate_on_loop
from auth.credentials import find_credential
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal
from auth.rooms import Right
from handler.chat.core import ChatCore
from handler.chat.handshake import room_problem
from handler.chat.ports import StoreBusy, StoreUnavailable
from handler.chat.wire import (
    HISTORY_PAGE,
    MAX_CLIENT_MSG_ID_CHARS,
    MAX_MESSAGE_ID,
    ONE_BOUND,
    ErrorCode,
    FrameError,
    SendMessage,
    message_body,
    parse_send,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class RestBackend(Protocol):
    core: ChatCore
    authenticator: Authenticator

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run a call into the core where this backend's stores can serve it."""
        ...


# The body a publish takes, for OpenAPI: its rules are `wire.parse_send`'s, which the route
# applies itself, after the credential, the room's right and the rate.
PUBLISH_SCHEMA = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1, "description": "the message"},
        "client_msg_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CLIENT_MSG_ID_CHARS,
            "description": "a retry of the same id is stored once",
        },
    },
}


# Room for a publish's keys, quotes, braces and commas (about 40 bytes as encoders write
# them) and the whitespace around them, pretty-printed included.
BODY_LAYOUT_BYTES = 1024
# A publish is one flat object. A little deeper gets the error that names the field (`text`
# must be a string); deeper than this is refused before the parser sees it.
MAX_BODY_DEPTH = 8


def largest_publish_body(max_message_bytes: int) -> int:
    """The largest body a valid publish can have, in bytes: its text at `max_message_bytes`
    with every byte written as a six-byte escape (`\\u0041`; no escape is longer per UTF-8
    byte), a `client_msg_id` of as many characters as it may have, each outside the BMP and
    escaped as a twelve-byte surrogate pair, and BODY_LAYOUT_BYTES around them. Anything
    larger is refused with 413 unread: 199,168 bytes for the default 32 KiB."""
    return 6 * max_message_bytes + 12 * MAX_CLIENT_MSG_ID_CHARS + BODY_LAYOUT_BYTES


# Every byte that is not a bracket, and each byte's step in depth.
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DEPTH_STEP = [1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256)]


def _nested_deeper_than(body: bytes, cap: int) -> bool:
    """Whether a JSON text's arrays and objects nest deeper than `cap`, counting the brackets
    outside its strings. On UTF-8, whose multi-byte characters have no ASCII byte, at the
    speed of bytes methods but for bodies with more than `cap` brackets."""
    # A backslash escapes the next character: pairs of them first, then escaped quotes; what
    # is left of each string then lies between two quotes.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= cap:
        return False
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets))) > cap


# Seconds a client is asked to wait while the store is unavailable (a Redis failover takes
# a few).
UNAVAILABLE_RETRY_AFTER = 5


async def _run(backend: RestBackend, call: Callable[[], T]) -> T:
    try:
        return await backend.call(call)
    except StoreUnavailable as error:  # expected in an outage: one line, no traceback
        log.warning("REST answered 503: the chat's store is unavailable (%s)", error)
        raise HTTPException(
            503,
            "the chat is unavailable; try again later (a publish with the same client_msg_id)",
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
        ) from None


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
        return await authenticate_on_loop(backend.authenticator, handshake)
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


def _check_rate(chat: RestBackend, principal: Principal) -> None:
    wait = chat.core.admit_publisher(principal)
    if wait > 0:
        rate = chat.core.limits.rate_per_second
        raise HTTPException(
            429,
            f"over {rate:g} messages/s for this credential; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


def _unfit(problem: str, kind: str, loc: tuple[str, ...] = ("body",)) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": problem, "type": kind}])


async def _publish_request(request: Request, limit: int) -> SendMessage:
    """The body as a publish, read only up to `limit` bytes: past them, 413 whatever the
    framing (a `Content-Length` that announces more is refused before a byte is read).
    422 for a body that is not a publish, as FastAPI would answer it."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (media == "application/json" or media.endswith("+json")):
        # As FastAPI's own body parameters: and a form cannot post it across origins.
        raise _unfit("send the body as application/json", "content_type")
    too_large = HTTPException(413, f"a publish's body is at most {limit} bytes")
    announced = request.headers.get("content-length", "")
    if announced.isascii() and announced.isdigit() and int(announced) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "the request's body did not arrive whole") from None
    body = b"".join(chunks)
    if not body:
        raise _unfit("Field required", "missing")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise _unfit("the body is not UTF-8", "json_invalid") from None
    if _nested_deeper_than(body, MAX_BODY_DEPTH):
        raise _unfit(f"JSON nested deeper than {MAX_BODY_DEPTH} levels", "json_too_deep")
    try:
        value = json.loads(text)
    except ValueError:
        raise _unfit("JSON decode error", "json_invalid") from None
    if not isinstance(value, dict):
        raise _unfit("the body must be a JSON object with `text`", "type")
    try:
        return parse_send(value)
    except FrameError as error:
        raise _unfit(error.detail, error.code) from None


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
        since: Annotated[int | None, Query(ge=0, le=MAX_MESSAGE_ID)] = None,
        before: Annotated[int | None, Query(ge=0, le=MAX_MESSAGE_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=HISTORY_PAGE)] = 100,
    ) -> dict[str, Any]:
        """Messages after `since` (0 by default), oldest first, and the room's latest id:
        fewer than `limit` when they are large (a page is at most 1 MiB of JSON), read on
        from the last id. Or, with `before`, the newest messages below it, oldest first:
        scroll back from the first id; an empty page, nothing older is kept."""
        chat = backend()
        principal = await _principal(request, chat)
        _check_room(room, chat)
        _check_right(chat, principal, room, Right.READ)
        if since is not None and before is not None:
            raise _unfit(ONE_BOUND, "value_error", ("query", "before"))
        core = chat.core
        if before is None:
            messages, latest = await _run(chat, lambda: core.read(room, since or 0, limit))
        else:
            messages, latest = await _run(chat, lambda: core.read_before(room, before, limit))
        page: dict[str, Any] = {"room": room, "latest_id": latest}
        if before is not None:
            page["before"] = before
        return page | {"messages": [message_body(m) for m in messages]}

    @router.get("/members")
    async def read_members(room: str, request: Request) -> dict[str, Any]:
        """Who is in the room: its count of connections, and its distinct users by name (at
        most a thousand: `complete` is false when there are more)."""
        chat = backend()
        principal = await _principal(request, chat)
        _check_room(room, chat)
        _check_right(chat, principal, room, Right.READ)
        count, users, complete = await _run(chat, lambda: chat.core.members(room))
        members = [{"id": user.id, "name": user.name} for user in users]
        return {"room": room, "count": count, "complete": complete, "members": members}

    # The body is read by hand, after the credential, the room's right and the rate were
    # checked (a body parameter would have FastAPI read and parse it first), so its schema
    # is given to OpenAPI here.
    body_schema = {"application/json": {"schema": PUBLISH_SCHEMA}}

    @router.post(
        "/messages",
        status_code=201,
        openapi_extra={"requestBody": {"required": True, "content": body_schema}},
    )
    async def publish(room: str, request: Request, response: Response) -> dict[str, Any]:
        """Publish as the authenticated principal; the room receives it as a chat message."""
        chat = backend()
        principal = await _principal(request, chat)
        _check_room(room, chat)
        _check_right(chat, principal, room, Right.WRITE)
        _check_rate(chat, principal)
        limit = largest_publish_body(chat.core.limits.max_message_bytes)
        body = await _publish_request(request, limit)
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
