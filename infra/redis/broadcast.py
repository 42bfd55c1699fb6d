"""The broadcast port on Redis, where the store publishes."""

from __future__ import annotations

from handler.chat.core import ChatCore
from handler.chat.ports import ChatMessage, Connection
from infra.redis.feed import RoomFeed


class RedisBroadcast:
    """On Redis the store publishes: one script stores a message and publishes it on its
    room's channel (MessageLog.append), and the script that changes a room's membership
    announces it. So there is nothing left to send here. What arrives on a channel reaches
    this worker's members through the feed, which delivers through the core that built this
    broadcast (RoomFeed.serve)."""

    def __init__(self, feed: RoomFeed, core: ChatCore) -> None:
        feed.serve(core)

    def message(self, message: ChatMessage, sender_id: str | None) -> None:
        """Nothing to do: the publish script that stored the message published it."""

    def presence(self, event: str, connection: Connection) -> None:
        """Nothing to do: the script that made the change in Redis (JOIN, LEAVE, or a
        reaper's REMOVE) announced it, once, with the room's count."""
