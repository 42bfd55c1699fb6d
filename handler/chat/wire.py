"""The wire format: the seed's text lines and the JSON dialect's frames, both directions."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from auth.principal import is_text
from handler.chat.ports import ChatMessage, Connection, User

JSON_SUBPROTOCOL = "wschat.json"

# Every frame the server sends fits in API Gateway's message cap, on both transports, so a
# client sees the same frames whichever it talks to: history longer than that is split.
MAX_SEND_BYTES = 128 * 1024
# A page of history (a welcome's catch-up, a `history` reply, a REST read) carries at most this
# much message JSON, however many messages that is: a few frames, never a flood that would
# overrun a client's send queue. The client asks for the next page (docs/protocol.md, "Resume").
HISTORY_PAGE_BYTES = 1024 * 1024
# ... and at most this many messages: the core's page (Limits.history_page) and REST's `limit`.
HISTORY_PAGE = 500


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003  # API Gateway's answer to any binary frame
    NO_STATUS = 1005  # the peer closed without a code
    ABNORMAL = 1006  # the connection dropped without a close frame
    INVALID_PAYLOAD = 1007  # a text frame that is not UTF-8
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    SERVICE_RESTART = 1012  # the server is stopping: reconnect (and resume with `since`)
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4401
    FORBIDDEN = 4403  # a refreshed credential no longer opens the room


def close_code_label(code: int) -> str:
    """A close code as a metric label: one of the codes above, else `other`. A client may
    close with any code of its own (3000-4999 are free), and a label per value it chose
    would be a time series per value."""
    return str(code) if code in _CLOSE_CODES else "other"


_CLOSE_CODES = frozenset(code.value for code in CloseCode)


class ErrorCode:
    INVALID_JSON = "invalid_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_ACTION = "unknown_action"
    EMPTY_MESSAGE = "empty_message"
    BINARY_UNSUPPORTED = "binary_unsupported"
    RATE_LIMITED = "rate_limited"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 (an error code, not a secret)
    MESSAGE_TOO_LARGE = "message_too_large"
    BUSY = "busy"
    FORBIDDEN = "forbidden"
    REFRESH_FAILED = "refresh_failed"


# --- inbound (JSON dialect) -------------------------------------------------------------

# A retry key is at most this many characters.
MAX_CLIENT_MSG_ID_CHARS = 128

# A `\ud800` escape decodes to a lone surrogate, which no frame can carry (UTF-8 cannot).
NOT_TEXT = "`{name}` must be Unicode text (it has a lone surrogate escape)"

# The largest message id, and so the largest `since` any path takes: 2**53 - 1, the largest
# integer that a JavaScript client's JSON numbers, DynamoDB's numbers and Redis' Lua (whose
# numbers are doubles) all carry exactly. Far past it, engines failed in their own ways (a
# Redis stream id stops at 2**64 - 1).
MAX_MESSAGE_ID = 2**53 - 1
SINCE_RANGE = f"`since` must be an integer from 0 to {MAX_MESSAGE_ID}"
BEFORE_RANGE = f"`before` must be an integer from 0 to {MAX_MESSAGE_ID}"
LIMIT_RANGE = f"`limit` must be an integer from 1 to {HISTORY_PAGE}"
ONE_BOUND = "give `since` (what came after) or `before` (what came before), not both"


def is_message_id(value: object) -> bool:
    """Whether `value` is an id a client may name: as `since` in a `history` action, the
    handshake's query or a REST read (each checks it with this, or with MAX_MESSAGE_ID)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_MESSAGE_ID


@dataclass(frozen=True, slots=True)
class SendMessage:
    text: str
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """The page after `since` (a resume), or with `before`, the newest page below it
    (scrolling back)."""

    since: int = 0
    before: int | None = None
    limit: int = HISTORY_PAGE


@dataclass(frozen=True, slots=True)
class MembersRequest:
    pass


@dataclass(frozen=True, slots=True)
class Typing:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Refresh:
    token: str


Action = SendMessage | HistoryRequest | MembersRequest | Typing | Ping | Refresh
# A credential longer than this is refused before anyone parses it (JWTs are far shorter).
MAX_TOKEN_CHARS = 16 * 1024


class FrameError(Exception):
    """A frame the server understood well enough to refuse; the connection stays open."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_send(body: Mapping[str, Any]) -> SendMessage:
    """A message to send, as a JSON `sendmessage` frame or a REST publish's body gives it
    (`text`, and `client_msg_id` for retries), or FrameError saying what was expected."""
    text = body.get("text")
    if not isinstance(text, str):
        raise FrameError(ErrorCode.BAD_REQUEST, "`text` must be a string")
    if not is_text(text):
        raise FrameError(ErrorCode.BAD_REQUEST, NOT_TEXT.format(name="text"))
    client_msg_id = body.get("client_msg_id")
    if client_msg_id is not None and not (
        isinstance(client_msg_id, str) and 0 < len(client_msg_id) <= MAX_CLIENT_MSG_ID_CHARS
    ):
        raise FrameError(
            ErrorCode.BAD_REQUEST,
            f"`client_msg_id` must be a string of 1-{MAX_CLIENT_MSG_ID_CHARS} characters",
        )
    if client_msg_id is not None and not is_text(client_msg_id):
        raise FrameError(ErrorCode.BAD_REQUEST, NOT_TEXT.format(name="client_msg_id"))
    return SendMessage(text, client_msg_id)


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
        return parse_send(body)
    if action == "history":
        return _history_request(body)
    if action == "members":
        return MembersRequest()
    if action == "typing":
        return Typing()
    if action == "ping":
        return Ping()
    if action == "refresh":
        token = body.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            raise FrameError(ErrorCode.BAD_REQUEST, "`token` must be a non-empty string")
        if not is_text(token):
            raise FrameError(ErrorCode.BAD_REQUEST, NOT_TEXT.format(name="token"))
        return Refresh(token)
    raise FrameError(
        ErrorCode.UNKNOWN_ACTION,
        "`action` must be one of: sendmessage, history, members, typing, ping, refresh",
    )


def _history_request(body: Mapping[str, Any]) -> HistoryRequest:
    limit = body.get("limit", HISTORY_PAGE)
    if not (is_message_id(limit) and 1 <= limit <= HISTORY_PAGE):
        raise FrameError(ErrorCode.BAD_REQUEST, LIMIT_RANGE)
    if "before" not in body:
        since = body.get("since", 0)
        if not is_message_id(since):
            raise FrameError(ErrorCode.BAD_REQUEST, SINCE_RANGE)
        return HistoryRequest(since, limit=limit)
    if "since" in body:
        raise FrameError(ErrorCode.BAD_REQUEST, ONE_BOUND)
    before = body["before"]
    if not is_message_id(before):
        raise FrameError(ErrorCode.BAD_REQUEST, BEFORE_RANGE)
    return HistoryRequest(before=before, limit=limit)


def is_refresh_request(frame: str) -> bool:
    """Whether a frame is a JSON `refresh` request, which carries a credential. In the text
    dialect every frame is chat, but this one must not become a line the room and its history
    keep."""
    if not frame.lstrip().startswith("{"):
        return False  # the common case, without parsing
    try:
        body = json.loads(frame)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and body.get("action") == "refresh"


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


def _size(frame: str) -> int:
    """A frame's size in UTF-8. A lone surrogate counts the three bytes of the U+FFFD that
    will replace it (see `writable`)."""
    return len(frame.encode(errors="surrogatepass"))


# Room for a frame's fields around one message (room names are short; JSON may escape them).
_FRAME_OVERHEAD = 1024


def fits_in_a_frame(
    room: str, user_id: str, user_name: str, text: str, client_msg_id: str | None
) -> bool:
    """Whether a message can go out in any frame: as a `message`, or alone in a `history`
    frame. JSON escapes a control character in six bytes, so a 32 KiB text can grow past the
    cap; the exact size is computed only when it could."""
    chars = len(room) + len(user_id) + len(user_name) + len(text) + len(client_msg_id or "")
    if 6 * chars + 512 <= MAX_SEND_BYTES - _FRAME_OVERHEAD:
        return True
    draft = ChatMessage(10**15, room, user_id, user_name, text, 0.0, client_msg_id)
    return _size(message_frame(draft)) <= MAX_SEND_BYTES - _FRAME_OVERHEAD


def page(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The longest prefix of `messages` within HISTORY_PAGE_BYTES of JSON (at least one)."""
    taken: list[ChatMessage] = []
    total = 0
    for message in messages:
        total += _size(message_frame(message)) + 1
        if taken and total > HISTORY_PAGE_BYTES:
            break
        taken.append(message)
    return taken


def page_back(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The longest suffix of `messages` within HISTORY_PAGE_BYTES of JSON (at least one): a
    scroll back keeps the newest of what it read."""
    return page(messages[::-1])[::-1]


# A message's JSON, and its size in bytes.
_Body = tuple[str, int]


def _bodies(messages: Sequence[ChatMessage]) -> list[_Body]:
    return [(frame, _size(frame)) for frame in map(message_frame, messages)]


def _fitting(bodies: Sequence[_Body], room: int) -> int:
    """How many of `bodies`, comma-joined, fit in `room` bytes."""
    count, size = 0, -1
    for _, length in bodies:
        size += length + 1
        if size > room:
            break
        count += 1
    return count


def _frame(head: dict[str, Any], key: str, bodies: Sequence[_Body]) -> str:
    """`head` with the JSON `bodies` as a list in its last field, `key`."""
    prefix = _dump({**head, key: []})[:-2]  # it ends in `[]}`: the bodies go in between
    return prefix + ",".join(body for body, _ in bodies) + "]}"


def _room_for(head: dict[str, Any], key: str) -> int:
    return MAX_SEND_BYTES - _size(_dump({**head, key: []}))


def _split(head: dict[str, Any], key: str, bodies: list[_Body]) -> list[str]:
    """`head` with `bodies` as a list in its field `key`, in as many frames as it takes to
    keep each within MAX_SEND_BYTES, in order; every frame but the last says `more: true`."""
    head = {**head, "more": False}
    space = _room_for(head, key)
    frames: list[str] = []
    while True:
        count = max(1, _fitting(bodies, space))  # one body always fits (fits_in_a_frame)
        chunk, bodies = bodies[:count], bodies[count:]
        frames.append(_frame({**head, "more": bool(bodies)}, key, chunk))
        if not bodies:
            return frames


def history_frames(
    room: str, messages: Sequence[ChatMessage], latest_id: int, before: int | None = None
) -> list[str]:
    """Messages as `history` frames, each within MAX_SEND_BYTES, oldest first. Every frame
    but the last says `more: true`. A reply to a scroll back names its `before`."""
    head: dict[str, Any] = {"type": "history", "room": room, "latest_id": latest_id}
    if before is not None:
        head["before"] = before
    return _split(head, "messages", _bodies(messages))


def members_frames(
    room: str,
    count: int,
    users: Sequence[User],
    complete: bool,
    presence_seq: int | None = None,
) -> list[str]:
    """Who is in the room: its `count` of connections, and its distinct `users` (all of them
    if `complete`, else the first found), in frames as `history_frames` splits them.
    `presence_seq`: see `presence_frame`."""
    bodies = [(body, _size(body)) for body in (_dump(_user(u.id, u.name)) for u in users)]
    head = {"type": "members", "room": room, "count": count, "complete": complete}
    return _split(_numbered(head, presence_seq), "members", bodies)


def typing_frame(connection: Connection) -> str:
    return _dump(
        {
            "type": "typing",
            "room": connection.room,
            "user": _user(connection.user_id, connection.user_name),
        }
    )


def welcome_frames(
    connection: Connection,
    count: int,
    history: Sequence[ChatMessage],
    latest_id: int,
    epoch: str,
    recovered: bool | None = None,
    presence_seq: int | None = None,
) -> list[str]:
    """The `welcome`, carrying as much of `history` as fits in its frame, then `history`
    frames with the rest (the welcome then says `more: true`). `epoch`: which history the
    ids belong to; `recovered`, on a resume: whether the client's `since` could be honoured
    (False: the room started over); `presence_seq`: see `presence_frame`."""
    head: dict[str, Any] = {
        "type": "welcome",
        "connection_id": connection.id,
        "room": connection.room,
        "user": _user(connection.user_id, connection.user_name),
        "count": count,
        "latest_id": latest_id,
        "epoch": epoch,
    }
    if recovered is not None:
        head["recovered"] = recovered
    _numbered(head, presence_seq)
    head["more"] = False
    bodies = _bodies(history)
    carried = _fitting(bodies, _room_for(head, "history"))
    rest = bodies[carried:]
    welcome = _frame({**head, "more": bool(rest)}, "history", bodies[:carried])
    more = {"type": "history", "room": connection.room, "latest_id": latest_id}
    return [welcome, *(_split(more, "messages", rest) if rest else [])]


def presence_frame(
    room: str,
    joins: Sequence[User],
    leaves: Sequence[User],
    count: int,
    presence_seq: int | None = None,
) -> str:
    """Who joined and who left the room since its last `presence` frame (one entry per
    connection), and how many connections it has now. So many that the frame would be over
    MAX_SEND_BYTES (long names): the count alone, as for a big room.

    `presence_seq` (Lambda, where a room's frames can arrive in any order): the number the
    store drew for this change before the count was read (`ConnectionStore.next_presence_seq`).
    A client keeps the count that came with the highest number; None: frames come in order."""
    body = {
        "type": "presence",
        "room": room,
        "joins": [_user(u.id, u.name) for u in joins],
        "leaves": [_user(u.id, u.name) for u in leaves],
        "count": count,
    }
    frame = _dump(_numbered(body, presence_seq))
    return frame if _size(frame) <= MAX_SEND_BYTES else occupancy_frame(room, count, presence_seq)


def occupancy_frame(room: str, count: int, presence_seq: int | None = None) -> str:
    """A big room's `presence`: only how many connections it has (no joins, no leaves)."""
    return _dump(_numbered({"type": "presence", "room": room, "count": count}, presence_seq))


def _numbered(frame: dict[str, Any], presence_seq: int | None) -> dict[str, Any]:
    """`frame` with the presence sequence its count was read after, where there is one."""
    if presence_seq is not None:
        frame["presence_seq"] = presence_seq
    return frame


def refreshed_frame(expires_at: float | None) -> str:
    return _dump({"type": "refreshed", "expires_at": expires_at})


def pong_frame() -> str:
    return _dump({"type": "pong"})


def error_frame(code: str, detail: str, client_msg_id: str | None = None) -> str:
    """An `error`; one refusing a `sendmessage` names its `client_msg_id`, if it had one."""
    frame = {"type": "error", "code": code, "detail": detail}
    if client_msg_id is not None:
        frame["client_msg_id"] = client_msg_id
    return _dump(frame)
