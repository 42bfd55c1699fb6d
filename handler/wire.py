"""The wire format: the seed's text lines and the JSON dialect's frames, both directions."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from auth.credentials import BEARER_SUBPROTOCOL
from auth.principal import is_text
from handler.ports import ChatMessage, Connection, Dialect

JSON_SUBPROTOCOL = "wschat.json"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4401


class ErrorCode:
    INVALID_JSON = "invalid_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_ACTION = "unknown_action"
    EMPTY_MESSAGE = "empty_message"
    BINARY_UNSUPPORTED = "binary_unsupported"
    RATE_LIMITED = "rate_limited"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 (an error code, not a secret)


# --- the handshake ----------------------------------------------------------------------


def room_problem(room: str, max_length: int) -> str | None:
    """Why a room name is refused, or None. Any printable Unicode is a fine room name."""
    if not room:
        return "room name is empty"
    if len(room) > max_length:
        return f"room name longer than {max_length} characters"
    if any(unicodedata.category(ch).startswith("C") for ch in room):
        return "room name contains control characters"
    return None


def choose_subprotocol(offered: Sequence[str]) -> tuple[Dialect | None, str | None]:
    """The dialect the offered subprotocols ask for, and the one to select (never a token)."""
    if JSON_SUBPROTOCOL in offered:
        return Dialect.JSON, JSON_SUBPROTOCOL
    if BEARER_SUBPROTOCOL in offered:
        return None, BEARER_SUBPROTOCOL
    return None, None


# --- inbound (JSON dialect) -------------------------------------------------------------

# A `\ud800` escape decodes to a lone surrogate, which no frame can carry (UTF-8 cannot).
NOT_TEXT = "`{name}` must be Unicode text (it has a lone surrogate escape)"


@dataclass(frozen=True, slots=True)
class SendMessage:
    text: str
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    since: int


@dataclass(frozen=True, slots=True)
class Ping:
    pass


Action = SendMessage | HistoryRequest | Ping


class FrameError(Exception):
    """A frame the server understood well enough to refuse; the connection stays open."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_action(frame: str) -> Action:
    """Parse one JSON-dialect frame, or raise FrameError saying what was expected."""
    try:
        body = json.loads(frame)
    except (ValueError, RecursionError):
        raise FrameError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(body, dict):
        raise FrameError(ErrorCode.BAD_REQUEST, "frame must be a JSON object with an `action`")
    action = body.get("action")
    if action == "sendmessage":
        text = body.get("text")
        if not isinstance(text, str):
            raise FrameError(ErrorCode.BAD_REQUEST, "`text` must be a string")
        if not is_text(text):
            raise FrameError(ErrorCode.BAD_REQUEST, NOT_TEXT.format(name="text"))
        client_msg_id = body.get("client_msg_id")
        if client_msg_id is not None and not (
            isinstance(client_msg_id, str) and 0 < len(client_msg_id) <= 128
        ):
            raise FrameError(ErrorCode.BAD_REQUEST, "`client_msg_id` must be a string of 1-128")
        if client_msg_id is not None and not is_text(client_msg_id):
            raise FrameError(ErrorCode.BAD_REQUEST, NOT_TEXT.format(name="client_msg_id"))
        return SendMessage(text, client_msg_id)
    if action == "history":
        since = body.get("since", 0)
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise FrameError(ErrorCode.BAD_REQUEST, "`since` must be a non-negative integer")
        return HistoryRequest(since)
    if action == "ping":
        return Ping()
    raise FrameError(
        ErrorCode.UNKNOWN_ACTION, "`action` must be one of: sendmessage, history, ping"
    )


# --- outbound ---------------------------------------------------------------------------


def seed_lines(connection: Connection, data: str) -> list[str]:
    """Exactly the lines FastAPI's example sends back for one text frame."""
    lines = [f"Session cookie or query token value is: {connection.echo}"]
    if connection.q is not None:
        lines.append(f"Query parameter q is: {connection.q}")
    lines.append(f"Message text was: {data}, for item ID: {connection.room}")
    return lines


def chat_line(message: ChatMessage) -> str:
    return f"{message.user_name}: {message.text}"


def error_line(detail: str) -> str:
    return f"Error: {detail}"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def writable(payload: str) -> str:
    """The payload, or, if UTF-8 cannot carry it (a lone surrogate that got past the edges,
    or was stored before they checked), the payload with each one replaced by U+FFFD: still
    valid JSON, and nobody's socket fails on it."""
    if payload.isascii() or is_text(payload):
        return payload
    return _LONE_SURROGATE.sub("\ufffd", payload)


def _dump(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def _user(user_id: str, name: str) -> dict[str, str]:
    return {"id": user_id, "name": name}


def message_body(message: ChatMessage) -> dict[str, Any]:
    """A message as a JSON object: the `message` frame, and the REST API's representation."""
    body: dict[str, Any] = {
        "type": "message",
        "id": message.id,
        "room": message.room,
        "user": _user(message.user_id, message.user_name),
        "text": message.text,
        "ts": message.ts,
    }
    if message.client_msg_id is not None:
        body["client_msg_id"] = message.client_msg_id
    return body


def message_frame(message: ChatMessage) -> str:
    return _dump(message_body(message))


def welcome_frame(
    connection: Connection, count: int, history: Sequence[ChatMessage], latest_id: int
) -> str:
    return _dump(
        {
            "type": "welcome",
            "connection_id": connection.id,
            "room": connection.room,
            "user": _user(connection.user_id, connection.user_name),
            "count": count,
            "latest_id": latest_id,
            "history": [message_body(m) for m in history],
        }
    )


def presence_frame(event: str, connection: Connection, count: int) -> str:
    return _dump(
        {
            "type": "presence",
            "event": event,
            "room": connection.room,
            "user": _user(connection.user_id, connection.user_name),
            "count": count,
        }
    )


def history_frame(room: str, messages: Sequence[ChatMessage], latest_id: int) -> str:
    return _dump(
        {
            "type": "history",
            "room": room,
            "latest_id": latest_id,
            "messages": [message_body(m) for m in messages],
        }
    )


def pong_frame() -> str:
    return _dump({"type": "pong"})


def error_frame(code: str, detail: str) -> str:
    return _dump({"type": "error", "code": code, "detail": detail})
