"""The chat itself, independent of any transport.

A transport drives it with three calls, `connect`, `message` and `disconnect` (plus `expire`
when a credential runs out, and `receive` for frames that arrived together), and it answers
only through the ports it was given. It never waits on a client: delivery queues and returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from auth.errors import AuthError
from auth.principal import Principal, is_text
from auth.rooms import ALL, NOT_OPEN, OpenPolicy, Right, Rights, RoomPolicy
from handler.chat import wire
from handler.chat.ports import (
    Broadcast,
    ChatMessage,
    Connection,
    ConnectionStore,
    CredentialCheck,
    Delivery,
    Dialect,
    Draft,
    ExpiryTimers,
    MessageLog,
    Metrics,
    NoMetrics,
    StoreBusy,
    Timer,
    User,
)
from handler.chat.presence import PresenceBatches
from handler.chat.ratelimit import TokenBucket, TokenBuckets
from handler.chat.wire import CloseCode, ErrorCode, FrameError

log = logging.getLogger(__name__)


NOT_WRITABLE = "you may read this room, not post to it"
TEXT_REFRESH = (
    "a refresh request carries a credential, so it is not sent to the room; "
    "refresh needs the JSON dialect"
)


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 32 * 1024
    max_room_length: int = 128
    rate_per_second: float = 20.0
    rate_burst: int = 40
    rate_abuse_strikes: int = 20
    welcome_history: int = 20
    history_page: int = wire.HISTORY_PAGE
    welcome_attempts: int = 50
    # API Gateway answers 410 for a connection until its $connect has returned (up to its 29 s
    # integration timeout): a 410 for a younger connection does not mean it is gone.
    connect_grace_seconds: float = 30.0
    # A `members` reply lists this many distinct users at most (and says it is incomplete).
    members_listed: int = 1000
    # A user's `typing` reaches the room at most once per this many seconds; extras drop.
    typing_seconds: float = 2.0
    # Where the transport has a Timer: a room's joins and leaves go out together, in at most
    # one `presence` frame per this many seconds (handler/chat/presence.py); 0: each at once.
    presence_interval: float = 0.3
    # Above this many connections, a room's `presence` carries only its count.
    presence_occupancy: int = 200


@dataclass(frozen=True, slots=True)
class ConnectParams:
    dialect: Dialect = Dialect.TEXT
    q: int | None = None
    rights: Rights = ALL  # the room policy's answer for this principal and room


@dataclass(slots=True)
class _RateState:
    bucket: TokenBucket
    strikes: int = 0


class DirectBroadcast:
    """A room's members are all in the connection store, and delivery reaches each of them:
    memory and DynamoDB. (A Redis worker reaches only its own: infra/redis/broadcast.py.)"""

    def __init__(self, core: ChatCore) -> None:
        self._core = core

    def message(self, message: ChatMessage, sender_id: str | None) -> None:
        self._core.fan_out(message, sender_id, self._core.connections.in_room(message.room))

    def presence(self, event: str, connection: Connection) -> None:
        core, room = self._core, connection.room
        if core.batches_presence:  # its members are read when the batch goes out
            core.fan_out_presence(event, connection, core.connections.count(room), ())
            return
        # Numbered before the room is read (on DynamoDB; elsewhere frames come in order).
        seq = core.connections.next_presence_seq(room)
        members = core.connections.in_room(room)
        core.fan_out_presence(event, connection, len(members), members, seq)

    def typing(self, connection: Connection) -> None:
        self._core.fan_out_typing(connection, self._core.connections.in_room(connection.room))


class ChatCore:
    def __init__(
        self,
        connections: ConnectionStore,
        messages: MessageLog,
        delivery: Delivery,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        policy: RoomPolicy | None = None,
        credentials: CredentialCheck | None = None,
        broadcast: Callable[[ChatCore], Broadcast] | None = None,
        metrics: Metrics | None = None,
        timers: ExpiryTimers | None = None,
        timer: Timer | None = None,
    ) -> None:
        self.connections = connections
        self.messages = messages
        self.delivery = delivery
        self.limits = limits or Limits()
        self.policy = policy or OpenPolicy()
        self._credentials = credentials  # None: in-band refresh is not offered
        # How what concerns a whole room reaches its members: by default, straight from here.
        self.broadcast = broadcast(self) if broadcast is not None else DirectBroadcast(self)
        self.metrics = metrics or NoMetrics()
        self._timers = timers  # None: expiry is noticed at the next frame
        # None: each join and leave goes out as it happens (Lambda; or an interval of 0).
        self._presence = (
            PresenceBatches(
                connections,
                self._deliver,
                timer,
                self.limits.presence_interval,
                self.limits.presence_occupancy,
            )
            if timer is not None and self.limits.presence_interval > 0
            else None
        )
        # A JSON connection's room count as its join left it, until its welcome sends it.
        self._join_counts: dict[str, int] = {}
        self._clock = clock
        self._wall_clock = wall_clock
        # Rate state lives with the process: exact locally, per warm container on Lambda.
        self._rates: dict[str, _RateState] = {}
        self._publishers = TokenBuckets(self.limits.rate_per_second, self.limits.rate_burst, clock)
        self._typists = TokenBuckets(1 / self.limits.typing_seconds, 1, clock)

    # --- the three calls ------------------------------------------------------------------

    def connect(
        self, connection_id: str, room: str, principal: Principal, params: ConnectParams
    ) -> Connection:
        """Register an accepted connection and announce it to the room.

        The caller must then call `welcome` once the socket can receive frames: at once
        locally, after `$connect` has returned on API Gateway (which refuses sends before).
        """
        connection = Connection(
            id=connection_id,
            room=room,
            user_id=principal.id,
            user_name=principal.name,
            dialect=params.dialect,
            # Only the seed's first line shows it (under token auth, the credential itself):
            # a JSON connection's record never holds it.
            echo=principal.echo if params.dialect is Dialect.TEXT else "",
            q=params.q,
            expires_at=principal.expires_at,
            connected_at=self._wall_clock(),
            rights=params.rights,
        )
        # Where presence is batched, the welcome counts the room as this join left it: the
        # events heard before this point are in that count, those heard after it reach the
        # newcomer after its welcome (docs/welcome-seam.md). The store gives the count with
        # the join, where it can: one read fewer per join on Redis.
        batched = self._presence if params.dialect is Dialect.JSON else None
        if batched is not None:
            batched.counting(connection)
        count = self.connections.add(connection)
        if batched is not None and count is not None:
            self._join_counts[connection_id] = count
        self._expire_at(connection_id, connection.expires_at)
        self._announce("join", connection)
        return connection

    def welcome(
        self, connection_id: str, since: int | None = None, epoch: str | None = None
    ) -> None:
        """Send a JSON-dialect connection its `welcome`: who it is, who is here, and the recent
        history (or a page of what came after `since`), then open it to live messages.

        Live messages reach a JSON connection only above the id its catch-up went up to, and
        only once the store confirms nothing newer was written meanwhile: a message published
        while the history is read arrives exactly once, in order, on either transport
        (docs/welcome-seam.md). A client more than a page behind gets one page and then pages
        on with `history` requests. Text-dialect connections get nothing here: they are live
        from `connect`.
        """
        connection = self.connections.get(connection_id)
        if connection is None or connection.dialect is not Dialect.JSON:
            return
        room = connection.room
        # The latest id is read before the history: the store writes a message and its id
        # together, so every id up to `latest` that is not in the history has expired.
        # The client's resume point holds the store to what it was sent (a Redis failover
        # that lost it starts the room over under a new epoch: then not recovered).
        limit = self.limits.welcome_history if since is None else self.limits.history_page
        latest, current, page = self.messages.opening(room, since, epoch or "", limit)
        recovered: bool | None = None
        if since is None:
            history = list(page)
        else:
            # A `since` beyond the room's latest id: the room's history started over (an
            # in-memory server restarted), so all it holds now is new to the client.
            recovered = since <= latest and epoch in (None, current)
            self.metrics.resumed(recovered)
            history = wire.page(page) if recovered else self._page(room, 0)
        through = history[-1].id if history else latest  # what the client will have
        behind = through < latest  # more than a page after `since`
        presence_seq = self._presence_seq(room)  # before the count; None where batched
        count = self._join_counts.pop(connection_id, None)  # batched: the join's count
        if count is None:
            if self._presence is not None:
                self._presence.counting(connection)
            count = self.connections.count(room)
        frames = wire.welcome_frames(
            connection, count, history, max(latest, through), current, recovered, presence_seq
        )
        self._deliver_all([connection_id], frames)
        if behind:
            # The client pages on from here (its resume point is below `latest_id`), and live
            # messages start above `through`; whatever lies between is in the store.
            self._open(connection, through, force=True)
            return
        for _ in range(self.limits.welcome_attempts):
            if self._open(connection, through):
                return  # nothing was stored since: live from here
            # Stored while the welcome was sent: catch up, then confirm again.
            latest = self.messages.latest_id(room)
            missed = self._page(room, through)
            self._deliver_messages(connection_id, missed)
            # Ids up to `latest` that the page lacks have expired; past a full page, read on.
            through = missed[-1].id if missed else max(through, latest)
        # The room never stood still long enough. Open the connection anyway and send what
        # arrived since: a message may then come twice (clients drop repeated ids), never
        # not at all.
        log.warning("room %s is too busy to confirm %s's seam; opening it", room, connection_id)
        self._open(connection, through, force=True)
        self._deliver_messages(connection_id, self._page(room, through))

    def _open(self, connection: Connection, through: int, force: bool = False) -> bool:
        """Open a welcomed connection to live messages above `through` (unless the room moved
        on: False), and send it the presence events kept for it meanwhile."""
        if not self.connections.mark_welcomed(connection.id, connection.room, through, force):
            return False
        if self._presence is not None:
            self._presence.opened(connection)
        else:
            self._deliver_all([connection.id], self.connections.take_deferred(connection))
        return True

    def message(self, connection_id: str, frame: str | bytes) -> None:
        """Handle one inbound frame from a connected client."""
        connection = self.connections.get(connection_id)
        if connection is None:
            log.warning("frame from unknown connection %s; closing it", connection_id)
            self.delivery.close(connection_id, CloseCode.POLICY_VIOLATION, "unknown connection")
            return
        if isinstance(frame, str) and not is_text(frame):
            # Transports hand over decoded UTF-8, so only a broken one gets here; refuse it
            # rather than store what no socket could send back.
            self._refuse(connection, ErrorCode.BAD_REQUEST, "frame is not Unicode text")
            return
        if self._too_big(frame):
            self.delivery.close(
                connection_id,
                CloseCode.MESSAGE_TOO_BIG,
                f"message over {self.limits.max_message_bytes} bytes",
            )
            return
        if self._past_expiry(connection):
            self._expire(connection_id, connection)  # no timer fired (Lambda): this frame notices
            return
        if not self._within_rate(connection):
            return
        if isinstance(frame, bytes):
            self._refuse(
                connection,
                ErrorCode.BINARY_UNSUPPORTED,
                "binary frames are not supported; send text",
            )
        elif connection.dialect is Dialect.TEXT:
            self._text(connection, frame)
        else:
            self._json(connection, frame)

    def receive(self, connection_id: str, frames: Sequence[str | bytes]) -> int:
        """Handle frames that arrived together, in order, as `message` would one at a time;
        returns how many it handled. The chat messages at their head are stored together (on
        Redis, in one round trip); failing those, the first frame is handled alone. The
        transport calls again with the rest, unless the connection is closing by then."""
        connection = self.connections.get(connection_id)
        if connection is None:
            self.message(connection_id, frames[0])  # which closes it
            return 1
        drafts: list[Draft] = []
        for frame in frames:
            draft = self._draft(connection, frame)
            if draft is None:
                break
            drafts.append(draft)
        if not drafts:
            self.message(connection_id, frames[0])
            return 1
        started = self._clock()
        for draft, stored in zip(drafts, self.messages.append_many(drafts), strict=True):
            if connection.dialect is Dialect.TEXT:
                self._echo(connection, draft.text)  # the seed's lines, then what became of it
            if isinstance(stored, StoreBusy):
                self._busy(connection, draft.client_msg_id)
            else:
                self._stored(*stored, connection, started)
        return len(drafts)

    def disconnect(self, connection_id: str) -> None:
        """Forget a connection and tell the room. Safe to call twice."""
        self._rates.pop(connection_id, None)
        self._join_counts.pop(connection_id, None)
        self._expire_at(connection_id, None)
        connection = self.connections.remove(connection_id)
        if connection is not None:
            self._announce("leave", connection)

    def admit_publisher(self, principal: Principal) -> float:
        """For a publisher without a connection (REST): spend one of the principal's rate
        tokens, before the request's body is read. Returns 0.0 when it may publish now, else
        the seconds until it may. All of a principal's REST publishes share one bucket, with
        the rate and burst of a socket's, separate from its sockets' (each has its own)."""
        return self._publishers.take(principal.id)

    def rights(self, principal: Principal, room: str) -> Rights:
        """What the room policy lets `principal` do in `room`. A transport refuses the
        handshake (403) without `read`; REST refuses a read without `read` and a post without
        `write`."""
        return self.policy.rights(principal, room)

    def expire_if_due(self, connection_id: str) -> float | None:
        """For the expiry timers: expire the connection if its credential has run out, or
        return when it now runs out, for the timer to wait on."""
        connection = self.connections.get(connection_id)
        if connection is None or connection.expires_at is None:
            return None
        if self._wall_clock() < connection.expires_at:
            return connection.expires_at
        self.expire(connection_id)
        return None

    def expire(self, connection_id: str) -> None:
        """The connection's credential ran out: say so (JSON dialect) and close with 4401."""
        self._expire(connection_id, self.connections.get(connection_id))

    def _expire(self, connection_id: str, connection: Connection | None) -> None:
        if connection is not None and connection.dialect is Dialect.JSON:
            frame = wire.error_frame(ErrorCode.TOKEN_EXPIRED, "credential expired; reconnect")
            self._deliver([connection_id], frame)
        self.delivery.close(connection_id, CloseCode.TOKEN_EXPIRED, "token expired")

    def publish(
        self,
        room: str,
        user_id: str,
        user_name: str,
        text: str,
        client_msg_id: str | None = None,
        sender: Connection | None = None,
    ) -> tuple[ChatMessage, bool]:
        """Store a message and deliver it to the room (the sender's text-dialect socket
        excepted: it already got the seed's echo). A repeated `client_msg_id` is stored and
        delivered once; the repeat is acknowledged to the JSON sender only. Raises FrameError
        for text that is empty or too large, by itself or as a frame; nothing is stored."""
        self._check(room, user_id, user_name, text, client_msg_id)
        started = self._clock()
        sender_id = sender.id if sender is not None else None
        draft = Draft(room, user_id, user_name, text, client_msg_id, sender_id)
        message, created = self.messages.append(draft)
        self._stored(message, created, sender, started)
        return message, created

    def _check(
        self, room: str, user_id: str, user_name: str, text: str, client_msg_id: str | None
    ) -> None:
        """Raises FrameError for text that is empty or too large, by itself or as a frame."""
        if not text.strip():
            raise FrameError(ErrorCode.EMPTY_MESSAGE, "`text` must not be empty")
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            raise FrameError(ErrorCode.BAD_REQUEST, wire.NOT_TEXT.format(name="text")) from None
        limit = self.limits.max_message_bytes
        if size > limit:
            raise FrameError(ErrorCode.MESSAGE_TOO_LARGE, f"`text` is over {limit} bytes")
        if not wire.fits_in_a_frame(room, user_id, user_name, text, client_msg_id):
            raise FrameError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"message is over {wire.MAX_SEND_BYTES} bytes as a frame (JSON escapes it)",
            )

    def _stored(
        self, message: ChatMessage, created: bool, sender: Connection | None, started: float
    ) -> None:
        """Deliver a message the log took (`created`), or acknowledge a repeat to its JSON
        sender only."""
        if not created:
            if sender is not None and sender.dialect is Dialect.JSON:
                self._deliver([sender.id], wire.message_frame(message))
            return
        self.broadcast.message(message, sender.id if sender is not None else None)
        self.metrics.published(self._clock() - started)

    def fan_out(
        self, message: ChatMessage, sender_id: str | None, members: Sequence[Connection]
    ) -> None:
        """Deliver a stored message to `members` of its room: JSON connections above the id
        their welcome went up to (none before it), text connections but the sender's (it had
        the seed's echo). How a Broadcast reaches a room's members. A member whose credential
        has run out gets no more: it is expired instead (where no timer did it, on Lambda)."""
        text_ids: list[str] = []
        json_ids: list[str] = []
        now = self._wall_clock()
        for member in members:
            if member.expires_at is not None and now >= member.expires_at:
                self._expire(member.id, member)
            elif member.dialect is Dialect.JSON:
                if member.welcomed_through is not None and message.id > member.welcomed_through:
                    json_ids.append(member.id)
            elif member.id != sender_id:
                text_ids.append(member.id)
        # Each payload is encoded once, however many recipients it has.
        if text_ids:
            self._deliver(text_ids, wire.chat_line(message))
        if json_ids:
            self._deliver(json_ids, wire.message_frame(message))

    def fan_out_typing(self, connection: Connection, members: Sequence[Connection]) -> None:
        """Tell the JSON `members` open to live messages that `connection`'s user is typing
        (not the user's own connections: another tab of theirs need not see it). One whose
        welcome is on its way misses it: typing is only ever a hint."""
        to = [
            m.id
            for m in members
            if m.dialect is Dialect.JSON
            and m.welcomed_through is not None
            and m.user_id != connection.user_id
        ]
        if to:
            self._deliver(to, wire.typing_frame(connection))

    @property
    def batches_presence(self) -> bool:
        """Whether presence goes out in batches (a Timer was given): `fan_out_presence` then
        needs only the count."""
        return self._presence is not None

    def fan_out_presence(
        self,
        event: str,
        connection: Connection,
        count: int,
        members: Sequence[Connection],
        presence_seq: int | None = None,
    ) -> None:
        """Tell the room's JSON members (but `connection` itself) that it joined or left,
        and that the room has `count` connections now: with the room's next batch, where
        there is a Timer (`members` is then not read), else at once to `members`. Above
        `presence_occupancy`, only the count goes out. `presence_seq`: the number the store
        drew for this change before `count` was read (`ConnectionStore.next_presence_seq`)."""
        if self._presence is not None:
            self._presence.record(event, connection, count)
            return
        self._presence_now(event, connection, count, members, presence_seq)

    def _presence_now(
        self,
        event: str,
        connection: Connection,
        count: int,
        members: Sequence[Connection],
        presence_seq: int | None,
    ) -> None:
        """One frame for one event. A member still waiting for its welcome gets it after the
        welcome, once its gate opens: the welcome comes first, and its count may predate the
        event (`_open`)."""
        if count > self.limits.presence_occupancy:
            frame = wire.occupancy_frame(connection.room, count, presence_seq)
        else:
            user = [User(connection.user_id, connection.user_name)]
            joins, leaves = (user, []) if event == "join" else ([], user)
            frame = wire.presence_frame(connection.room, joins, leaves, count, presence_seq)
        now = []
        for m in members:
            if m.dialect is not Dialect.JSON or m.id == connection.id:
                continue
            if m.welcomed_through is not None or not self.connections.defer_presence(m, frame):
                now.append(m.id)
        if now:
            self._deliver(now, frame)

    def read(self, room: str, after_id: int, limit: int) -> tuple[list[ChatMessage], int]:
        """A page of the room's messages after `after_id` (at most `limit`), and the room's
        latest id, read first: ids up to it that the page lacks beyond its end are yet to be
        read, not lost."""
        latest = self.messages.latest_id(room)
        messages = wire.page(self.messages.after(room, after_id, limit))
        return messages, max([latest, *(m.id for m in messages[-1:])])

    def members(self, room: str) -> tuple[int, list[User], bool]:
        """Who is in the room: its count of connections, its distinct users by name (at most
        `members_listed`), and whether that is all of them."""
        listed = self.limits.members_listed
        users = list(self.connections.users(room, listed + 1))
        complete = len(users) <= listed
        users = sorted(users, key=lambda user: (user.name, user.id))[:listed]
        return self.connections.count(room), users, complete

    def read_before(self, room: str, before_id: int, limit: int) -> tuple[list[ChatMessage], int]:
        """The newest page of the room's messages below `before_id` (at most `limit`, oldest
        first), and the room's latest id. An empty page: nothing older is kept."""
        latest = self.messages.latest_id(room)
        return wire.page_back(self.messages.before(room, before_id, limit)), latest

    # --- dialects -------------------------------------------------------------------------

    def _text(self, connection: Connection, data: str) -> None:
        if wire.is_refresh_request(data):
            log.info("a refresh request on a text-dialect connection was not sent to its room")
            self._refuse(connection, ErrorCode.BAD_REQUEST, TEXT_REFRESH)
            return
        self._echo(connection, data)
        # An empty line gets the seed's echo but is not worth storing or broadcasting.
        if data.strip():
            self._publish_from(connection, data, None)

    def _echo(self, connection: Connection, data: str) -> None:
        for line in wire.seed_lines(connection, data):
            self._deliver([connection.id], line)

    def _json(self, connection: Connection, frame: str) -> None:
        try:
            action = wire.parse_action(frame)
        except FrameError as error:
            self._refuse(connection, error.code, error.detail)
            return
        if isinstance(action, wire.SendMessage):
            self._publish_from(connection, action.text, action.client_msg_id)
        elif isinstance(action, wire.Refresh):
            self._refresh(connection, action.token)
        elif isinstance(action, wire.HistoryRequest):
            self._history(connection, action)
        elif isinstance(action, wire.MembersRequest):
            self._deliver_all([connection.id], self._members(connection.room))
        elif isinstance(action, wire.Typing):
            self._typing(connection)
        else:
            self._deliver([connection.id], wire.pong_frame())

    def _history(self, connection: Connection, request: wire.HistoryRequest) -> None:
        room, limit = connection.room, min(request.limit, self.limits.history_page)
        if request.before is None:
            history, latest = self.read(room, request.since, limit)
        else:
            history, latest = self.read_before(room, request.before, limit)
        frames = wire.history_frames(room, history, latest, request.before)
        self._deliver_all([connection.id], frames)

    def _members(self, room: str) -> list[str]:
        presence_seq = self._presence_seq(room)
        return wire.members_frames(room, *self.members(room), presence_seq)

    def _presence_seq(self, room: str) -> int | None:
        """The room's presence number, for a count read after it (a welcome's, a `members`
        reply's): the count then includes every change numbered up to it, and the client
        drops an older frame's count (docs/welcome-seam.md). None where presence is batched
        (the batches go out in order)."""
        return None if self._presence is not None else self.connections.presence_seq(room)

    def _typing(self, connection: Connection) -> None:
        if Right.WRITE not in connection.rights:
            self._refuse(connection, ErrorCode.FORBIDDEN, NOT_WRITABLE)
            return
        # One bucket per user and room: a user typing in two tabs is still one typist.
        if self._typists.take(f"{connection.room}\n{connection.user_id}") == 0.0:
            self.broadcast.typing(connection)

    # --- refresh --------------------------------------------------------------------------

    def _refresh(self, connection: Connection, token: str) -> None:
        if self._credentials is None:
            self._refuse(connection, ErrorCode.REFRESH_FAILED, "refresh is not offered here")
            return
        connection_id = connection.id
        self._credentials.verify(token, lambda outcome: self._refreshed(connection_id, outcome))

    def _refreshed(self, connection_id: str, outcome: Principal | AuthError) -> None:
        """A refresh's verdict. The subject must not change; the room policy is asked again,
        and a connection that may no longer read its room is closed with 4403."""
        connection = self.connections.get(connection_id)
        if connection is None:
            return  # gone while its token was being verified
        if isinstance(outcome, AuthError):
            log.info("refresh refused for %s: %s", connection_id, outcome.reason)
            self._refuse(connection, ErrorCode.REFRESH_FAILED, outcome.reason)
            return
        if outcome.id != connection.user_id:
            self._refuse(connection, ErrorCode.REFRESH_FAILED, "the token is another user's")
            return
        rights = self.policy.rights(outcome, connection.room)
        if Right.READ not in rights:
            log.info("closing %s: its refreshed credential does not open its room", connection_id)
            self._refuse(connection, ErrorCode.FORBIDDEN, NOT_OPEN)
            self.delivery.close(connection_id, CloseCode.FORBIDDEN, "forbidden")
            return
        try:
            refreshed = self.connections.refresh(connection_id, outcome.expires_at, rights)
        except StoreBusy:
            self._refuse(connection, ErrorCode.REFRESH_FAILED, "the store is busy; send it again")
            return
        if refreshed:
            self._expire_at(connection_id, outcome.expires_at)  # sooner or later than before
            self._deliver([connection_id], wire.refreshed_frame(outcome.expires_at))

    # --- helpers --------------------------------------------------------------------------

    def _expire_at(self, connection_id: str, at: float | None) -> None:
        if self._timers is not None:
            self._timers.expire_at(connection_id, at, self.expire_if_due)

    def _publish_from(self, connection: Connection, text: str, client_msg_id: str | None) -> None:
        """A refusal names the `client_msg_id` it answers, for the client to settle that send."""
        if Right.WRITE not in connection.rights:
            self._refuse(connection, ErrorCode.FORBIDDEN, NOT_WRITABLE, client_msg_id)
            return
        try:
            self.publish(
                connection.room,
                connection.user_id,
                connection.user_name,
                text,
                client_msg_id,
                connection,
            )
        except FrameError as error:
            self._refuse(connection, error.code, error.detail, client_msg_id)
        except StoreBusy:
            self._busy(connection, client_msg_id)

    def _busy(self, connection: Connection, client_msg_id: str | None) -> None:
        log.warning("room %s is too busy to store a message now", connection.room)
        detail = "the room is busy; send it again"
        self._refuse(connection, ErrorCode.BUSY, detail, client_msg_id)

    def _draft(self, connection: Connection, frame: str | bytes) -> Draft | None:
        """`frame` as a message to store, if it is a plain one: a line of text, or a JSON
        `send`, within every limit, from a connection that may write, within its rate (a token
        is then taken). None, having changed nothing, for any other frame: `message` handles
        those."""
        if (
            not isinstance(frame, str)
            or Right.WRITE not in connection.rights
            or not is_text(frame)
            or self._too_big(frame)
            or self._past_expiry(connection)
        ):
            return None
        try:
            if connection.dialect is Dialect.TEXT:
                if wire.is_refresh_request(frame):
                    return None
                text, client_msg_id = frame, None
            else:
                action = wire.parse_action(frame)
                if not isinstance(action, wire.SendMessage):
                    return None
                text, client_msg_id = action.text, action.client_msg_id
            self._check(
                connection.room, connection.user_id, connection.user_name, text, client_msg_id
            )
        except FrameError:
            return None
        if not self._take_token(connection):
            return None
        return Draft(
            connection.room,
            connection.user_id,
            connection.user_name,
            text,
            client_msg_id,
            connection.id,
        )

    def _page(self, room: str, after_id: int) -> list[ChatMessage]:
        """A page of the messages after `after_id`: at most `history_page` of them, and at
        most wire.HISTORY_PAGE_BYTES of JSON."""
        return wire.page(self.messages.after(room, after_id, self.limits.history_page))

    def _deliver_messages(self, connection_id: str, messages: Sequence[ChatMessage]) -> None:
        # As live messages would arrive: for the client, the seam is invisible.
        for message in messages:
            self._deliver([connection_id], wire.message_frame(message))

    def _deliver_all(self, connection_ids: Sequence[str], frames: Sequence[str]) -> None:
        for frame in frames:
            self._deliver(connection_ids, frame)

    def _within_rate(self, connection: Connection) -> bool:
        if self._take_token(connection):
            return True
        state = self._rates[connection.id]
        state.strikes += 1
        if state.strikes >= self.limits.rate_abuse_strikes:
            log.warning("closing %s: sustained flood over the rate limit", connection.id)
            self.delivery.close(connection.id, CloseCode.POLICY_VIOLATION, "rate limit abuse")
        else:
            detail = f"over {self.limits.rate_per_second:g} messages/s; message dropped"
            self._refuse(connection, ErrorCode.RATE_LIMITED, detail)
        return False

    def _too_big(self, frame: str | bytes) -> bool:
        size = len(frame) if isinstance(frame, bytes) else len(frame.encode())
        return size > self.limits.max_message_bytes

    def _past_expiry(self, connection: Connection) -> bool:
        return connection.expires_at is not None and self._wall_clock() >= connection.expires_at

    def _take_token(self, connection: Connection) -> bool:
        """Spend one of the connection's rate tokens, if it has one."""
        state = self._rates.get(connection.id)
        if state is None:
            bucket = TokenBucket(self.limits.rate_per_second, self.limits.rate_burst, self._clock)
            state = self._rates[connection.id] = _RateState(bucket)
        if not state.bucket.take():
            return False
        # Strikes decay with good behaviour instead of resetting, so a flood that is only
        # partly over the rate (a slow transport refilling the bucket) still adds up.
        state.strikes = max(0, state.strikes - 1)
        return True

    def _refuse(
        self, connection: Connection, code: str, detail: str, client_msg_id: str | None = None
    ) -> None:
        if connection.dialect is Dialect.JSON:
            self._deliver([connection.id], wire.error_frame(code, detail, client_msg_id))
        else:
            self._deliver([connection.id], wire.error_line(detail))

    def _announce(self, event: str, connection: Connection) -> None:
        self.broadcast.presence(event, connection)

    def _deliver(self, connection_ids: Sequence[str], payload: str) -> None:
        checked = wire.writable(payload)
        if checked is not payload:
            log.warning("a frame had text UTF-8 cannot carry; sent with U+FFFD in its place")
        forgotten: list[Connection] = []
        try:
            for gone in self.delivery.send(connection_ids, checked):
                connection = self._forget_gone(gone)
                if connection is not None:
                    forgotten.append(connection)
        finally:
            # Announced here, since its disconnect (if one ever comes) will find it forgotten;
            # and only now, once every gone one is out of the room the announcement goes to.
            for connection in forgotten:
                self._announce("leave", connection)

    def _forget_gone(self, connection_id: str) -> Connection | None:
        """Forget a connection the delivery found gone; returns it, unless it was not here
        or is still completing its handshake."""
        connection = self.connections.get(connection_id)
        age = self._wall_clock() - connection.connected_at if connection else None
        if age is not None and age < self.limits.connect_grace_seconds:
            # Still completing its handshake; the welcome will bring it what it missed.
            log.info("connection %s is not open yet; not forgetting it", connection_id)
            return None
        log.info("connection %s is gone; forgetting it", connection_id)
        return self.connections.remove(connection_id)
