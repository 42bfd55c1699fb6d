"""The connection store on Redis: this worker's members in its feed, membership in Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from auth.rooms import Rights
from handler.chat.ports import Connection, User
from infra.redis.bridge import LoopBridge
from infra.redis.feed import RoomFeed


class RedisConnections:
    """The connection store: this worker's members in the feed, membership in Redis."""

    def __init__(self, feed: RoomFeed, bridge: LoopBridge) -> None:
        self._feed = feed
        self._bridge = bridge

    def add(self, connection: Connection) -> int:
        return self._bridge.run(self._feed.join(connection))

    def refresh(self, connection_id: str, expires_at: float | None, rights: Rights) -> bool:
        connection = self._feed.get(connection_id)
        if connection is not None:  # what Redis holds of a member does not change
            self._feed.update(replace(connection, expires_at=expires_at, rights=rights))
        return connection is not None

    def get(self, connection_id: str) -> Connection | None:
        return self._feed.get(connection_id)

    def remove(self, connection_id: str) -> Connection | None:
        connection = self._feed.forget(connection_id)
        if connection is not None:  # from the core, or from a fan-out finding it gone
            self._bridge.settle(self._feed.leave(connection))
        return connection

    def in_room(self, room: str) -> Sequence[Connection]:
        """This worker's members of the room (the others are other workers' to reach)."""
        return self._feed.local_members(room)

    def count(self, room: str) -> int:
        return self._bridge.run(self._feed.count(room))

    def users(self, room: str, limit: int) -> Sequence[User]:
        return self._bridge.run(self._feed.users(room, limit))

    def mark_welcomed(
        self, connection_id: str, room: str, through_id: int, force: bool = False
    ) -> bool:
        return self._feed.mark_welcomed(connection_id, through_id, force)

    def defer_presence(self, member: Connection, frame: str) -> bool:
        return self._feed.defer_presence(member, frame)

    def next_presence_seq(self, room: str) -> int | None:
        # A room's changes reach every worker in order, on its one channel: no number needed.
        return None

    def presence_seq(self, room: str) -> int | None:
        return None

    def take_deferred(self, connection: Connection) -> Sequence[str]:
        return self._feed.take_deferred(connection.id)
