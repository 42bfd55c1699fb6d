"""The local chat service: the core wired to in-memory stores and per-connection outboxes, and
the app `wschat serve` runs (uvicorn's factory: `handler.local.service:create_local_app`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI

from auth.base import Authenticator
from auth.errors import AuthError
from auth.factory import build_authenticator
from auth.handshake import Handshake
from auth.principal import Principal
from auth.rooms import build_room_policy
from handler.chat.core import ChatCore
from handler.local.socket import chat_socket
from handler.web.app import create_app
from infra.local_delivery import LocalDelivery
from infra.memory import MemoryConnections, MemoryMessageLog
from infra.settings import Settings, get_settings

log = logging.getLogger(__name__)


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
    authenticator = build_authenticator(settings)
    core = ChatCore(
        connections,
        messages,
        delivery,
        settings.limits(),
        policy=build_room_policy(settings.room_policy, settings),
        credentials=ThreadedCheck(authenticator),
    )
    return LocalChat(settings, core, delivery, connections, authenticator)


class ThreadedCheck:
    """In-band refresh under uvicorn: the token is verified in a worker thread (a JWKS fetch
    may block), and the verdict handed back to the core on the event loop."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def verify(self, token: str, done: Callable[[Principal | AuthError], None]) -> None:
        verifying = asyncio.get_running_loop().run_in_executor(
            None, self._verdict, Handshake.bearer(token)
        )
        verifying.add_done_callback(lambda future: done(future.result()))

    def _verdict(self, handshake: Handshake) -> Principal | AuthError:
        try:
            return self._authenticator.authenticate(handshake)
        except AuthError as error:
            return error
        except Exception:  # a backend's bug must not leave the refresh unanswered
            log.exception("verifying a refreshed token failed")
            return AuthError("the token could not be verified")


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
