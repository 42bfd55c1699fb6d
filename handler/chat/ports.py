"""What the chat core needs from the outside world, and the records it exchanges with it.

Each port has a local adapter (in memory, asyncio) and a serverless one (DynamoDB, the API
Gateway Management API). Ports are synchronous: the local adapters never block, and Lambda
handlers are synchronous anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from auth.errors import AuthError
from auth.principal import Principal
from auth.rooms import ALL, Rights


class Dialect(StrEnum):
    TEXT = "text"  # the seed's plain lines
    JSON = "json"  # one JSON object per frame


@dataclass(frozen=True, slots=True)
class Connection:
    """One open WebSocket as the core remembers it between frames."""

    id: str
    room: str
    user_id: str
    user_name: str
    dialect: Dialect
    echo: str  # what the seed's first line shows to this user (Principal.echo); text dialect only
    q: int | None = None
    expires_at: float | None = None
    connected_at: float = 0.0  # epoch seconds
    rights: Rights = ALL  # in its room, as the room policy said at connect (or refresh)
    # JSON dialect: the id up to which the welcome delivered history; live messages go to the
    # connection only above it, and none before it is set. The seam is then exactly-once.
    welcomed_through: int | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A message as stored in a room's history. `id` increases strictly within a room."""

    id: int
    room: str
    user_id: str
    user_name: str
    text: str
    ts: float
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class User:
    """A user as other users see them: a principal's id and name."""

    id: str
    name: str


class StoreBusy(Exception):
    """The store could not take a message now (too many concurrent writers to one room);
    the sender may retry, with the same `client_msg_id`."""


class StoreUnavailable(Exception):
    """The store could not be reached, or did not answer in time (Redis down or frozen): the
    call may or may not have taken effect. The caller may try again later; a publish with
    the same `client_msg_id` is then stored once."""


@dataclass(frozen=True, slots=True)
class Draft:
    """A chat message on its way to the log: all but its id and time, which the log gives.
    `sender_id` is the connection that sent it, if any."""

    room: str
    user_id: str
    user_name: str
    text: str
    client_msg_id: str | None = None
    sender_id: str | None = None


# Presence frames kept for a member whose welcome is on its way (ConnectionStore): a welcome
# that never completes must not grow its record without bound.
DEFERRED_PRESENCE = 20

Stored = tuple[ChatMessage, bool] | StoreBusy  # what became of one draft: see MessageLog


class ConnectionStore(Protocol):
    def add(self, connection: Connection) -> int | None:
        """Register a connection. Returns its room's count with it, where registering
        tells the store that at no extra cost (memory, Redis); else None."""
        ...

    def get(self, connection_id: str) -> Connection | None: ...

    def refresh(self, connection_id: str, expires_at: float | None, rights: Rights) -> bool:
        """Set a connection's expiry and rights (an in-band refresh), leaving the rest of its
        record as it stands now: a welcome or a leave landing meanwhile must not be undone.
        False if the connection is gone; StoreBusy if its record stayed busy."""
        ...

    def remove(self, connection_id: str) -> Connection | None:
        """Forget a connection; return what was stored, or None if it was unknown."""
        ...

    def in_room(self, room: str) -> Sequence[Connection]: ...

    def count(self, room: str) -> int:
        """How many connections the room has, wherever they are."""
        ...

    def users(self, room: str, limit: int) -> Sequence[User]:
        """The distinct users with a connection in the room, wherever it is: all of them, or
        the first `limit` found (a store reads a big room in bounded pages), in no order."""
        ...

    def mark_welcomed(
        self, connection_id: str, room: str, through_id: int, force: bool = False
    ) -> bool:
        """Record that the connection has every message of `room` up to `through_id`, but only
        if that is still the room's latest id (unless `force`). False: the room moved on; send
        what is new and try again. (True when the connection is gone: nothing left to do.)"""
        ...

    def defer_presence(self, member: Connection, frame: str) -> bool:
        """Keep a presence `frame` for `member`, whose welcome is on its way, until its gate
        opens (`take_deferred`): the count in its welcome may predate the event, and the
        event must not come before the welcome. False if the gate is open already: send it
        now. At most DEFERRED_PRESENCE frames are kept; beyond them, and for a member that is
        gone, the frame is dropped (True)."""
        ...

    def take_deferred(self, connection: Connection) -> Sequence[str]:
        """The presence frames kept for `connection` while its gate was shut (after
        `mark_welcomed` returned True, none can be added)."""
        ...

    def next_presence_seq(self, room: str) -> int | None:
        """Number a join or leave of `room` that is already in the store (registered, or
        removed): the room's next presence sequence number, drawn atomically, for the frame
        that announces it and whose count is read after it. None where a room's presence
        reaches each member in the order it happened (memory's one event loop, Redis' one
        channel per room): nothing is drawn. On DynamoDB each `$connect` and `$disconnect`
        announces on its own, concurrently, so frames arrive in any order, and a client keeps
        the count of the highest number (docs/welcome-seam.md, "One at a time (Lambda)")."""
        ...

    def presence_seq(self, room: str) -> int | None:
        """The room's latest presence sequence number (0 before any), for a count read
        after it (a welcome's, a `members` reply's): that count includes every join and
        leave numbered up to it. None where `next_presence_seq` draws none."""
        ...


class MessageLog(Protocol):
    def append(self, draft: Draft) -> tuple[ChatMessage, bool]:
        """Store a message under the room's next id. Returns (message, created): a repeated
        `client_msg_id` from the same user returns the stored message with created=False.

        Ids are consecutive, and an id becomes the room's `latest_id` only together with its
        message: every id up to `latest_id` is stored (or has expired). Raises StoreBusy
        when the message could not be stored now. The draft's `sender_id` is the connection
        that sent it, if any: a log that also broadcasts (Redis) spares that text socket the
        copy."""
        ...

    def append_many(self, drafts: Sequence[Draft]) -> Sequence[Stored]:
        """Store drafts in order, as `append` would one after another, and say what became
        of each: (message, created), or the StoreBusy that one raised (the next is still
        tried). One round trip on Redis, where the chat core's frames arrived together."""
        ...

    def after(self, room: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        """Messages with id > after_id, oldest first, at most `limit`."""
        ...

    def recent(self, room: str, limit: int) -> Sequence[ChatMessage]:
        """The last `limit` messages, oldest first."""
        ...

    def before(self, room: str, before_id: int, limit: int) -> Sequence[ChatMessage]:
        """The last `limit` messages with id < before_id, oldest first (scrolling back)."""
        ...

    def latest_id(self, room: str) -> int: ...

    def head(self, room: str, since: int = 0, epoch: str = "") -> tuple[int, str]:
        """The room's latest id and its epoch, read together. The epoch says which history
        the room's ids belong to. It changes only when the history was lost and ids started
        over (an in-memory server restarted, a Redis without persistence), so a client
        resuming with an older epoch is told its `since` cannot be honoured.

        `since` under `epoch` is what the caller (a resuming client) has seen. A store that
        can lose acknowledged writes (Redis after a failover to a replica that lacked them)
        must not answer a latest id below it under that epoch: it starts the room over under
        a new one instead, so that no id the client holds is given again. One that cannot
        lose them (memory, DynamoDB) has nothing to check."""
        ...

    def opening(
        self, room: str, since: int | None, epoch: str, limit: int
    ) -> tuple[int, str, Sequence[ChatMessage]]:
        """What a welcome reads: `head(room, since or 0, epoch)`, and after it the page the
        welcome starts from: the `limit` most recent messages, or with `since` the first
        `limit` after it. Read together, so a store across a network answers in one round
        trip (`read_opening` is the plain way, one read after the other)."""
        ...


def read_opening(
    log: MessageLog, room: str, since: int | None, epoch: str, limit: int
) -> tuple[int, str, Sequence[ChatMessage]]:
    """`MessageLog.opening` as two reads, the head first."""
    latest, current = log.head(room, since or 0, epoch)
    page = log.recent(room, limit) if since is None else log.after(room, since, limit)
    return latest, current, page


class Delivery(Protocol):
    def send(self, connection_ids: Sequence[str], payload: str) -> Sequence[str]:
        """Queue `payload` for each connection without waiting on any of them.

        Returns the ids found to be gone, so the caller can forget them. A failure to reach
        one connection never prevents delivery to the others.
        """
        ...

    def close(self, connection_id: str, code: int, reason: str) -> None:
        """Close a connection after the frames already queued for it."""
        ...


class CredentialCheck(Protocol):
    def verify(self, token: str, done: Callable[[Principal | AuthError], None]) -> None:
        """Verify `token` as a bearer credential and call `done` with the principal, or the
        AuthError, on the thread the core runs on: at once, or later (a verification may
        block on a key fetch, which must not stall an event loop)."""
        ...


class ExpiryTimers(Protocol):
    """Where a transport can act at a given time (uvicorn), the core has it expire each
    connection when its credential runs out. Without one (Lambda, where nothing runs between
    events), a connection's next frame notices instead."""

    def expire_at(
        self, connection_id: str, at: float | None, due: Callable[[str], float | None]
    ) -> None:
        """At `at` (epoch seconds) call `due(connection_id)`, and if it answers a time, wait
        for that one. Replaces whatever time was set for the connection before, earlier or
        later (a refresh moves it either way); None: no time."""
        ...


class Timer(Protocol):
    """Where a transport can act later (uvicorn's event loop), the core sends presence in
    batches, one frame per room and interval (handler/chat/presence.py). Without one (Lambda,
    where nothing runs between events), each join and leave goes out as it happens."""

    def call_later(self, seconds: float, action: Callable[[], None]) -> None:
        """Call `action()` in `seconds`, where the core runs."""
        ...


class Broadcast(Protocol):
    """Carries what concerns a whole room to its members, once it is in the store. Where
    every member is reachable from here (memory, DynamoDB), the core delivers directly (and
    on Lambda, big rooms go in jobs through SQS). On Redis the store itself publishes: the
    script that stores a message or changes a room's membership also publishes it on the
    room's channel, so this port has only typing, which nothing stores, to publish there; and
    each worker's subscriber delivers to its own members through the core
    (infra/redis/broadcast.py)."""

    def message(self, message: ChatMessage, sender_id: str | None) -> None:
        """A stored message: to the room's members (the sender's text socket excepted)."""
        ...

    def presence(self, event: str, connection: Connection) -> None:
        """`connection` joined or left (it is already in, or already out of, the store)."""
        ...

    def typing(self, connection: Connection) -> None:
        """`connection`'s user is typing: to the room's members, at most once (it is not
        stored, so a member that misses it never gets it)."""
        ...


class Metrics(Protocol):
    """What the core reports about itself, for an operator (handler/local/metrics.py)."""

    def published(self, seconds: float) -> None:
        """A message was stored and handed to its room, in `seconds`."""
        ...

    def resumed(self, recovered: bool) -> None:
        """A JSON client came back with `since`: its gap could be filled, or not."""
        ...


class NoMetrics:
    """The default: nothing is counted."""

    def published(self, seconds: float) -> None:
        pass

    def resumed(self, recovered: bool) -> None:
        pass


def append_each(log: MessageLog, drafts: Sequence[Draft]) -> list[Stored]:
    """`append_many` for a log whose appends cost nothing to make one at a time."""
    stored: list[Stored] = []
    for draft in drafts:
        try:
            stored.append(log.append(draft))
        except StoreBusy as busy:
            stored.append(busy)
    return stored


def keep_presence(kept: dict[str, list[str]], stored: Connection | None, frame: str) -> bool:
    """`ConnectionStore.defer_presence` for a store that holds its members in this process:
    `stored` is the member's record there (None: gone), `kept` the frames kept by member."""
    if stored is None:
        return True
    if stored.welcomed_through is not None:
        return False
    frames = kept.setdefault(stored.id, [])
    if len(frames) < DEFERRED_PRESENCE:
        frames.append(frame)
    return True


def distinct_users(members: Iterable[User], limit: int) -> list[User]:
    """`ConnectionStore.users` over a room's members as a store reads them: each user once,
    until `limit` are found (the rest is never read)."""
    found: dict[str, User] = {}
    for user in members:
        if user.id not in found:
            if len(found) >= limit:
                break
            found[user.id] = user
    return list(found.values())
