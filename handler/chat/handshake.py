"""The handshake's rules, for every transport: which room, dialect, `q` and `since` a client
asked for, and which subprotocol to select; or why it is refused, with the status to answer.
Authentication is separate (`auth`): this only reads what the client asked for.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from auth.credentials import BEARER_SUBPROTOCOL
from handler.chat.ports import Dialect
from handler.chat.wire import JSON_SUBPROTOCOL, SINCE_RANGE, is_message_id

# FastAPI parses the seed's `q: int` with pydantic, which takes surrounding blanks, a sign,
# `_` between digits and a zero fraction ("3.0"). The same here, without pydantic, so the
# Lambda path stays lean and both transports accept the same `q`.
_INTEGER = re.compile(r"\s*([+-]?[0-9]+(?:_[0-9]+)*)(?:\.0*)?\s*", re.ASCII)


@dataclass(frozen=True, slots=True)
class Accepted:
    room: str
    dialect: Dialect
    q: int | None = None
    since: int | None = None
    subprotocol: str | None = None  # to select in the handshake's answer; never a token
    epoch: str | None = None  # the history `since` belongs to, from an earlier welcome


@dataclass(frozen=True, slots=True)
class Refused:
    status: int  # the HTTP status to refuse the handshake with
    reason: str  # safe to log and to send back


def negotiate(
    room: str | None,
    query: Mapping[str, str],
    subprotocols: Sequence[str],
    max_room_length: int,
) -> Accepted | Refused:
    """What the client asked for, or why it cannot have it. `room` is the path's `item_id`
    locally; on API Gateway, whose URLs have no path parameters, it is None and the query's
    `room` (or `item_id`) names it."""
    if room is None:
        room = query.get("room") or query.get("item_id")
        if room is None:
            return Refused(400, "the `room` query parameter is required")
    problem = room_problem(room, max_room_length)
    if problem is not None:
        return Refused(403, problem)
    try:
        q = _integer(query, "q")
        since = _integer(query, "since")
    except ValueError as error:
        return Refused(403, str(error))
    if since is not None and not is_message_id(since):
        return Refused(403, SINCE_RANGE)
    epoch = query.get("epoch")
    if epoch is not None and not (len(epoch) <= 64 and epoch.isprintable()):
        return Refused(403, "`epoch` must be what a welcome said")
    requested = query.get("format")
    if requested not in (None, "text", "json"):
        return Refused(403, "`format` must be text or json")
    offered, subprotocol = choose_subprotocol(subprotocols)
    dialect = Dialect(requested) if requested else (offered or Dialect.TEXT)
    return Accepted(room, dialect, q, since, subprotocol, epoch)


def room_problem(room: str, max_length: int) -> str | None:
    """Why a room name is refused, or None. Any printable Unicode but `/` is a fine room
    name: a `/` cannot sit in the room's segment of `/items/{room}/ws` or `/rooms/{room}/...`
    (nor can `%2F`, which servers and proxies decode or refuse), so no path may have it."""
    if not room:
        return "room name is empty"
    if len(room) > max_length:
        return f"room name longer than {max_length} characters"
    if any(unicodedata.category(ch).startswith("C") for ch in room):
        return "room name contains control characters"
    if "/" in room:
        return "room name contains `/`"
    return None


def choose_subprotocol(offered: Sequence[str]) -> tuple[Dialect | None, str | None]:
    """The dialect the offered subprotocols ask for, and the one to select (never a token)."""
    if JSON_SUBPROTOCOL in offered:
        return Dialect.JSON, JSON_SUBPROTOCOL
    if BEARER_SUBPROTOCOL in offered:
        return None, BEARER_SUBPROTOCOL
    return None, None


def _integer(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    match = _INTEGER.fullmatch(raw)
    if match is None:
        raise ValueError(f"`{name}` must be an integer")
    try:
        return int(match.group(1))
    except ValueError:  # over Python's 4,300 digits: its message would name its own limit
        raise ValueError(f"`{name}` has too many digits") from None
