"""The connection store in memory: connections by id and by room."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from auth.rooms import Rights
from handler.chat.ports import Connection, User, distinct_users, keep_presence


class MemoryConnections:
    """Connections indexed by id and by room; every operation is O(1) or O(room)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        self._rooms: dict[str, dict[str, Connection]] = {}
        self._deferred: dict[str, list[str]] = {}

    def add(self, connection: Connection) -> int:
        self._unindex(connection.id)  # a welcome's mark: presence kept for it stays
        self._by_id[connection.id] = connection
        members = self._rooms.setdefault(connection.room, {})
        members[connection.id] = connection
        return len(members)

    def get(self, connection_id: str) -> Connection | None:
        return self._by_id.get(connection_id)

    def refresh(self, connection_id: str, expires_at: float | None, rights: Rights) -> bool:
        connection = self._by_id.get(connection_id)
        if connection is not None:
            self.add(replace(connection, expires_at=expires_at, rights=rights))
        return connection is not None

    def remove(self, connection_id: str) -> Connection | None:
        self._deferred.pop(connection_id, None)
        return self._unindex(connection_id)

    def _unindex(self, connection_id: str) -> Connection | None:
        connection = self._by_id.pop(connection_id, None)
        if connection is not None:
            members = self._rooms[connection.room]
            del members[connection.id]
            if not members:
                del self._rooms[connection.room]
        return connection

    def in_room(self, room: str) -> Sequence[Connection]:
        return list(self._rooms.get(room, {}).values())

    def count(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    def users(self, room: str, limit: int) -> Sequence[User]:
        members = self._rooms.get(room, {}).values()
        return distinct_users((User(m.user_id, m.user_name) for m in members), limit)

    def mark_welcomed(
        self, connection_id: str, room: str, through_id: int, force: bool = False
    ) -> bool:
        # One event loop drives this store: nothing can be appended between the welcome's
        # history read and this call, so there is no condition to check.
        connection = self._by_id.get(connection_id)
        if connection is not None:
            self.add(replace(connection, welcomed_through=through_id))
        return True

    def defer_presence(self, member: Connection, frame: str) -> bool:
        return keep_presence(self._deferred, self._by_id.get(member.id), frame)

    def next_presence_seq(self, room: str) -> int | None:
        return None  # one event loop announces each change in turn: no number needed

    def presence_seq(self, room: str) -> int | None:
        return None

    def take_deferred(self, connection: Connection) -> Sequence[str]:
        return self._deferred.pop(connection.id, [])

    def __len__(self) -> int:
        return len(self._by_id)
