"""The local chat service: the core wired to in-memory stores and per-connection outboxes, and
the app `wschat serve` runs (uvicorn's factory: `handler.local.service:create_local_app`)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from auth.base import Authenticator
from auth.factory import build_authenticator
from handler.chat.core import ChatCore
from handler.local.socket import chat_socket
from handler.web.app import create_app
from infra.local_delivery import LocalDelivery
from infra.memory import MemoryConnections, MemoryMessageLog
from infra.settings import Settings, get_settings


@dataclass
class LocalChat:
    settings: Settings
    core: ChatCore
    delivery: LocalDelivery
    connections: MemoryConnections
    authenticator: Authenticator
    blocking = False  # in-memory stores: call the core on the event loop


def build_local_chat(settings: Settings) -> LocalChat:
    connections = MemoryConnections()
    delivery = LocalDelivery()
    messages = MemoryMessageLog(
        size=settings.history_size,
        max_bytes=settings.history_max_bytes,
        ttl_seconds=settings.history_ttl_seconds,
    )
    core = ChatCore(connections, messages, delivery, settings.limits())
    return LocalChat(settings, core, delivery, connections, build_authenticator(settings))


def create_local_app(settings: Settings | None = None) -> FastAPI:
    """The chat under uvicorn: the shared app plus the seed's WebSocket endpoint."""
    settings = settings or get_settings()
    chat = build_local_chat(settings)
    app = create_app(
        settings,
        rest=lambda: chat,
        health=lambda: {"status": "ok", "transport": "local", "connections": len(chat.connections)},
    )
    app.state.chat = chat
    app.add_api_websocket_route("/items/{item_id}/ws", chat_socket)
    return app
