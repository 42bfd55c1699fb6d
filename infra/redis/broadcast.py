"""The broadcast port on Redis, where the store publishes."""

from __future__ import annotations

from handler.chat.core import ChatCore
from handler.chat.ports import ChatMessage, Connection
from infra.redis.bridge import LoopBridge
from infra.redis.feed import RoomFeed


class RedisBroadcast:
    """On Redis the store publishes: one script stores a message and publishes it on its
    room's channel (MessageLog.append), and the script that changes a room's membership
    announces it. Only typing, which is not stored, is published from here. What arrives on
    a channel reaches this worker's members through the feed, which delivers through the
    core that built this broadcast (RoomFeed.serve)."""

    def __init__(self, feed: RoomFeed, core: ChatCore, bridge: LoopBridge) -> None:
        feed.serve(core)
        self._feed = feed
        self._bridge = bridge

    def message(self, message: ChatMessage, sender_id: str | None) -> None:
        """Nothing to do: the publish script that stored the message published it."""

    def presence(self, event: str, connection: Connection) -> None:
        """Nothing to do: the script that made the change in Redis (JOIN, LEAVE, or a
        reaper's REMOVE) announced it, once, with the room's count."""

    def typing(self, connection: Connection) -> None:
        self._bridge.run(self._feed.typing(connection))
