"""Presence in batches: per room, at most one `presence` frame per interval, carrying the joins
and leaves since the previous one and the room's count; above a room size, only the count.

A reconnect storm into a room of N is N joins: sent one frame each, to every member, that is
N² frames. Batched, it is one frame per member per interval. How a newcomer's first frame
meets its welcome, with no gap and no repeat: docs/welcome-seam.md, "Presence across the seam".
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from handler.chat import wire
from handler.chat.ports import Connection, ConnectionStore, Dialect, Timer, User

log = logging.getLogger(__name__)

# Events a room keeps for members whose welcome has counted the room but whose gate is not
# open yet (a welcome on Redis waits on round trips). A welcome that never completes must not
# keep them without bound: past this many, the oldest go, and such a newcomer's first frame
# may lack a join or a leave (its count is still the room's).
KEPT_EVENTS = 4096


@dataclass(frozen=True, slots=True)
class _Event:
    seq: int
    joined: bool  # else left
    connection_id: str
    user: User


@dataclass(slots=True)
class _Room:
    """A room's presence in this process. Sequence numbers count the events heard here; they
    mean nothing to a client and start over whenever the room is quiet."""

    seq: int = 0  # the latest event's
    sent: int = 0  # events up to here went out to the room's open members
    count: int = 0  # the room's count, as its latest event said
    sent_count: int | None = None  # in the latest frame sent
    events: deque[_Event] = field(default_factory=deque)
    # Members whose welcome has counted the room (through the event seq noted), gate shut.
    counted: dict[str, int] = field(default_factory=dict)
    # Members whose gate opened since the latest frame, with the seq their welcome counted
    # through: the next frame leaves out what that count already says.
    opened: dict[str, int] = field(default_factory=dict)
    due: bool = False  # a frame is scheduled


class PresenceBatches:
    """The core's presence where a transport can act later (uvicorn's loop: the Timer port).
    `deliver` is the core's own delivery (it forgets the connections found gone)."""

    def __init__(
        self,
        connections: ConnectionStore,
        deliver: Callable[[Sequence[str], str], None],
        timer: Timer,
        interval: float,
        occupancy: int,
    ) -> None:
        self._connections = connections
        self._deliver = deliver
        self._timer = timer
        self._interval = interval
        self._occupancy = occupancy
        self._rooms: dict[str, _Room] = {}

    def record(self, event: str, connection: Connection, count: int) -> None:
        """`connection` joined or left its room, which has `count` connections since: it goes
        out with the room's next frame. No per-member work here."""
        room = self._room(connection.room)
        room.seq += 1
        room.count = count
        user = User(connection.user_id, connection.user_name)
        room.events.append(_Event(room.seq, event == "join", connection.id, user))
        if event != "join":
            room.counted.pop(connection.id, None)
            room.opened.pop(connection.id, None)
        if not room.due:
            room.due = True
            self._timer.call_later(self._interval, lambda: self._send(connection.room))

    def counting(self, connection: Connection) -> None:
        """A welcome is about to count the room for `connection`: the events heard so far are
        in that count (or on their way into it), and must not reach it again."""
        room = self._room(connection.room)
        room.counted[connection.id] = room.seq

    def opened(self, connection: Connection) -> None:
        """`connection`'s welcome is out and its gate open. What went to the room's members
        between its count and now goes to it at once, in one frame; the rest with the next."""
        room = self._rooms.get(connection.room)
        if room is None:
            return
        through = room.counted.pop(connection.id, None)
        if through is None:
            return
        if through < room.sent and room.sent_count is not None:
            if room.sent_count > self._occupancy:
                frame: str | None = wire.occupancy_frame(connection.room, room.sent_count)
            else:
                frame = self._diff(
                    connection.room, room, through, room.sent, connection.id, room.sent_count
                )
            if frame is not None:
                self._deliver([connection.id], frame)
            through = room.sent
        if through > room.sent:
            room.opened[connection.id] = through
        self._forget_if_quiet(connection.room, room)

    def _send(self, name: str) -> None:
        room = self._rooms.get(name)
        if room is None:
            return
        room.due = False
        try:
            self._send_room(name, room)
        except Exception:  # a timer's callback: the loop would only log it, with less
            log.exception("presence for room %s not sent", name)

    def _send_room(self, name: str, room: _Room) -> None:
        through, count = room.seq, room.count
        members = self._connections.in_room(name)
        # A member whose gate is still shut gets nothing: its welcome counts the room.
        open_ = [
            m.id for m in members if m.dialect is Dialect.JSON and m.welcomed_through is not None
        ]
        opened, room.opened = room.opened, {}
        # A newcomer's own join, heard late (on Redis) or within its welcome's interval, is
        # no news to it, nor is what its welcome counted: it gets a frame of its own.
        own = {e.connection_id: e.seq for e in room.events if e.seq > room.sent and e.joined}
        plain: list[str] = []
        if count > self._occupancy:
            if count != room.sent_count:
                for member_id in open_:
                    after = max(opened.get(member_id, room.sent), room.sent)
                    # Events since its welcome's count, but its own join: seqs are consecutive.
                    news = through - after - (own.get(member_id, 0) > after)
                    if news > 0:
                        plain.append(member_id)
                if plain:
                    self._deliver(plain, wire.occupancy_frame(name, count))
        else:
            shared = self._diff(name, room, room.sent, through, None, count)
            for member_id in open_:
                if member_id in opened or member_id in own:
                    after = max(opened.get(member_id, room.sent), room.sent)
                    frame = self._diff(name, room, after, through, member_id, count)
                    if frame is not None:
                        self._deliver([member_id], frame)
                else:
                    plain.append(member_id)
            if plain and shared is not None:
                self._deliver(plain, shared)
        room.sent, room.sent_count = through, count
        self._trim(room)
        if not members:
            room.counted.clear()  # none of them is here any more
        self._forget_if_quiet(name, room)

    def _diff(
        self,
        name: str,
        room: _Room,
        after: int,
        through: int,
        leaving_out: str | None,
        count: int,
    ) -> str | None:
        """The frame for the events in (after, through], but `leaving_out`'s own; None when
        there are none, or they cancel out (a connection that joined and left within them is
        in neither list, and the count is as it was)."""
        joins: dict[str, User] = {}
        leaves: dict[str, User] = {}
        for event in room.events:
            if event.seq <= after or event.seq > through or event.connection_id == leaving_out:
                continue
            if event.joined:
                joins[event.connection_id] = event.user
            elif joins.pop(event.connection_id, None) is None:
                leaves[event.connection_id] = event.user
        if not joins and not leaves:
            return None
        return wire.presence_frame(name, list(joins.values()), list(leaves.values()), count)

    def _room(self, name: str) -> _Room:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = _Room()
        return room

    def _trim(self, room: _Room) -> None:
        keep_after = min([room.sent, *room.counted.values()])
        events = room.events
        while events and (events[0].seq <= keep_after or len(events) > KEPT_EVENTS):
            events.popleft()

    def _forget_if_quiet(self, name: str, room: _Room) -> None:
        """A room with nothing pending, and no welcome counting on it, holds nothing here:
        an idle room costs no memory (its sequence starts over, as nothing refers to it). A
        big room keeps the count it last sent, to send the next only if it differs."""
        if room.due or room.counted or room.opened or room.seq != room.sent:
            return
        if room.sent_count is None or room.sent_count <= self._occupancy:
            del self._rooms[name]

    def __len__(self) -> int:
        return len(self._rooms)
