"""The local chat service: the core wired to in-memory stores and per-connection outboxes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from auth.base import Authenticator
from handler.core import ChatCore, Limits
from infra.memory import MemoryConnections, MemoryMessageLog
from infra.settings import Settings

if TYPE_CHECKING:
    from infra.local_delivery import LocalDelivery


@dataclass
class LocalChat:
    settings: Settings
    core: ChatCore
    delivery: LocalDelivery
    connections: MemoryConnections
    authenticator: Authenticator
    blocking = False  # in-memory stores: call the core on the event loop


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_message_bytes=settings.max_message_bytes,
        max_room_length=settings.max_room_length,
        rate_per_second=settings.rate_per_second,
        rate_burst=settings.rate_burst,
        rate_abuse_strikes=settings.rate_abuse_strikes,
        welcome_history=settings.welcome_history,
    )


def build_local_chat(settings: Settings) -> LocalChat:
    # Imported here: the Lambda path imports this module for `limits_from`, and a cold start
    # should load neither the local outboxes (asyncio) nor the auth backends.
    from auth.factory import build_authenticator
    from infra.local_delivery import LocalDelivery

    connections = MemoryConnections()
    delivery = LocalDelivery()
    messages = MemoryMessageLog(
        size=settings.history_size,
        max_bytes=settings.history_max_bytes,
        ttl_seconds=settings.history_ttl_seconds,
    )
    core = ChatCore(connections, messages, delivery, limits_from(settings))
    return LocalChat(settings, core, delivery, connections, build_authenticator(settings))
