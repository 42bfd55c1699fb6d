"""In-memory adapters for the connection and message-log ports: the local default."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice

from handler.ports import ChatMessage, Connection


class MemoryConnections:
    """Connections indexed by id and by room; every operation is O(1) or O(room)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        self._rooms: dict[str, dict[str, Connection]] = {}

    def add(self, connection: Connection) -> None:
        self.remove(connection.id)
        self._by_id[connection.id] = connection
        self._rooms.setdefault(connection.room, {})[connection.id] = connection

    def get(self, connection_id: str) -> Connection | None:
        return self._by_id.get(connection_id)

    def remove(self, connection_id: str) -> Connection | None:
        connection = self._by_id.pop(connection_id, None)
        if connection is not None:
            members = self._rooms[connection.room]
            del members[connection.id]
            if not members:
                del self._rooms[connection.room]
        return connection

    def in_room(self, room: str) -> Sequence[Connection]:
        return list(self._rooms.get(room, {}).values())

    def mark_welcomed(
        self, connection_id: str, room: str, through_id: int, force: bool = False
    ) -> bool:
        # One event loop drives this store: nothing can be appended between the welcome's
        # history read and this call, so there is no condition to check.
        connection = self._by_id.get(connection_id)
        if connection is not None:
            self.add(replace(connection, welcomed_through=through_id))
        return True

    def __len__(self) -> int:
        return len(self._by_id)


@dataclass
class _Room:
    ring: deque[ChatMessage]
    last_id: int = 0
    # (user_id, client_msg_id) -> message, bounded like the ring, for retry de-duplication.
    seen: OrderedDict[tuple[str, str], ChatMessage] = field(default_factory=OrderedDict)


class MemoryMessageLog:
    """A bounded ring of messages per room, with a per-room counter for ids."""

    def __init__(self, size: int = 1000, clock: Callable[[], float] = time.time) -> None:
        self._size = size
        self._clock = clock
        self._rooms: dict[str, _Room] = {}

    def _room(self, room: str) -> _Room:
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(ring=deque(maxlen=self._size))
        return state

    def append(
        self, room: str, user_id: str, user_name: str, text: str, client_msg_id: str | None
    ) -> tuple[ChatMessage, bool]:
        state = self._room(room)
        key = (user_id, client_msg_id) if client_msg_id is not None else None
        if key is not None and key in state.seen:
            return state.seen[key], False
        state.last_id += 1
        message = ChatMessage(
            state.last_id, room, user_id, user_name, text, self._clock(), client_msg_id
        )
        state.ring.append(message)
        if key is not None:
            state.seen[key] = message
            if len(state.seen) > self._size:
                state.seen.popitem(last=False)
        return message, True

    def after(self, room: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        state = self._rooms.get(room)
        if state is None or not state.ring:
            return []
        # Ids in the ring are consecutive, so the start position is arithmetic.
        start = max(0, after_id - state.ring[0].id + 1)
        return list(islice(state.ring, start, start + limit))

    def recent(self, room: str, limit: int) -> Sequence[ChatMessage]:
        state = self._rooms.get(room)
        if state is None or limit <= 0:
            return []
        skip = max(0, len(state.ring) - limit)
        return list(islice(state.ring, skip, None))

    def latest_id(self, room: str) -> int:
        state = self._rooms.get(room)
        return state.last_id if state is not None else 0
