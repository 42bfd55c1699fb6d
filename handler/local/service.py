"""The local chat service: the core wired to in-memory stores and per-connection outboxes, and
the app `wschat serve` runs (uvicorn's factory: `handler.local.service:create_local_app`)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Response

from auth.base import Authenticator
from auth.factory import build_authenticator
from auth.refresh import ThreadedCheck
from auth.rooms import RoomPolicy, build_room_policy
from handler.chat.core import ChatCore
from handler.chat.wire import CloseCode
from handler.local import greenbridge
from handler.local.delivery import LocalDelivery
from handler.local.expiry import LoopExpiryTimers
from handler.local.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from handler.local.metrics import ChatMetrics
from handler.local.protocols import DRAIN
from handler.local.socket import SocketsFirst
from handler.local.timer import LoopTimer
from handler.web.app import create_app
from infra.memory.connections import MemoryConnections
from infra.memory.message_log import MemoryMessageLog
from infra.redis.bridge import LoopBridge
from infra.redis.broadcast import RedisBroadcast
from infra.redis.connections import RedisConnections
from infra.redis.endpoint import Endpoint
from infra.redis.feed import RoomFeed
from infra.redis.history import RedisHistory
from infra.redis.liveness import RedisLink
from infra.redis.message_log import RedisMessageLog
from infra.redis.shards import ClusterShards
from infra.settings import Settings, get_settings

T = TypeVar("T")
# The youngest generation is collected once this many more container objects were made than
# freed (CPython's default: 700). A worker taking a reconnect storm grows by thousands of
# connections' objects, so at 700 it collected every few connects. At 10,000 the storm
# costs 6 to 10 % less CPU per connect, with paced p99 and the memory of an idle connection
# unchanged (docs/performance.md, section 11).
GC_YOUNG = 10_000


@dataclass
class LocalChat:
    settings: Settings
    core: ChatCore
    delivery: LocalDelivery
    authenticator: Authenticator
    # In memory the core never waits, so it is called directly. On Redis it waits on the
    # network, so it runs in a greenlet that the loop's task resumes (handler/local/greenbridge.py).
    greenlets: greenbridge.Greenlets | None = None
    engine: RedisEngine | None = None
    metrics: ChatMetrics = field(default_factory=ChatMetrics)

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run a core call where the core runs."""
        if self.greenlets is not None:
            return await self.greenlets.call(function, *args)
        return function(*args)

    def drain(self) -> None:
        """The server is stopping: each socket gets what is queued for it, then 1012, and its
        client reconnects (a JSON one resumes with `since`, losing nothing)."""
        self.delivery.close_all(CloseCode.SERVICE_RESTART, "server restarting")

    def health(self) -> dict[str, object]:
        health: dict[str, object] = {
            "status": "ok",
            "transport": "local",
            "connections": len(self.delivery),
        }
        if self.engine is not None:
            health["redis"] = self.engine.link()
            if health["redis"] != "linked":
                health["status"] = "degraded"
            health["redis_node"] = self.engine.node
            health["redis_resubscribes"] = self.engine.feed.subscription.resubscribes
            health["redis_epoch_restarts"] = self.engine.feed.subscription.restarts
        return health


@dataclass
class RedisEngine:
    """The Redis side of a worker: started with the app, on its event loop."""

    endpoint: Endpoint
    feed: RoomFeed

    @property
    def client(self) -> Any:
        return self.endpoint.client

    async def start(self) -> None:
        await self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()
        await self.client.aclose()

    @property
    def node(self) -> str:
        """The Redis this worker talks to: `host:port`, or on a cluster the nodes it
        subscribes on, comma-separated."""
        if self.endpoint.kind == "cluster":
            return ",".join(self.feed.subscription.nodes)
        return self.endpoint.node

    def link(self) -> str:
        """`linked`, `deaf` (subscribed, but its canary stopped arriving) or `unreachable`."""
        if not self.feed.linked:
            return "unreachable"
        return "deaf" if self.feed.deaf else "linked"


def build_local_chat(settings: Settings) -> LocalChat:
    metrics = ChatMetrics()
    delivery = LocalDelivery(metrics.messages_delivered.inc)
    authenticator = build_authenticator(settings.auth_config())
    policy = build_room_policy(settings.room_policy, settings)
    if settings.redis_url:
        return _on_redis(settings, delivery, authenticator, policy, metrics)
    messages = MemoryMessageLog(
        size=settings.history_size,
        max_bytes=settings.history_max_bytes,
        ttl_seconds=settings.history_ttl_seconds,
    )
    core = ChatCore(
        MemoryConnections(),
        messages,
        delivery,
        settings.limits(),
        policy=policy,
        credentials=ThreadedCheck(authenticator),
        metrics=metrics,
        timers=LoopExpiryTimers(),
        timer=LoopTimer(),
    )
    return LocalChat(settings, core, delivery, authenticator, metrics=metrics)


def _on_redis(
    settings: Settings,
    delivery: LocalDelivery,
    authenticator: Authenticator,
    policy: RoomPolicy,
    metrics: ChatMetrics,
) -> LocalChat:
    link = RedisLink()
    endpoint = Endpoint(settings.redis_url, link)
    client = endpoint.client
    history = RedisHistory(client, settings.history_size, settings.history_ttl_seconds)
    bridge = LoopBridge(greenbridge)
    shards = ClusterShards(endpoint.cluster) if endpoint.cluster is not None else None
    feed = RoomFeed(client, history, link, metrics.redis, shards)
    core = ChatCore(
        RedisConnections(feed, bridge),
        RedisMessageLog(history, bridge),
        delivery,
        settings.limits(),
        policy=policy,
        credentials=ThreadedCheck(authenticator),
        broadcast=lambda core: RedisBroadcast(feed, core, bridge),
        metrics=metrics,
        timers=LoopExpiryTimers(),
        timer=LoopTimer(),
    )
    engine = RedisEngine(endpoint, feed)
    greenlets = greenbridge.Greenlets()
    return LocalChat(
        settings, core, delivery, authenticator, greenlets=greenlets, engine=engine, metrics=metrics
    )


def create_local_app(settings: Settings | None = None) -> SocketsFirst:
    """The chat under uvicorn: the shared app plus the seed's WebSocket endpoint."""
    settings = settings or get_settings()
    chat = build_local_chat(settings)
    app = create_app(settings, rest=lambda: chat, health=chat.health)
    app.state.chat = chat

    async def metrics() -> Response:
        """Prometheus' scrape: every worker's figures when there are several."""
        if chat.engine is not None:
            chat.metrics.talks_to(chat.engine.endpoint.kind, chat.engine.node.split(","))
        return Response(chat.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    engine = chat.engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if engine is not None:
            await engine.start()
        # What the worker holds once started (modules, the app) lives as long as it does:
        # frozen out of the collector's sight, each full collection walks only what came
        # since. A reconnect storm's CPU per connect drops by a fifth (docs/performance.md).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        try:
            yield {DRAIN: chat.drain}
        finally:
            if engine is not None:
                await engine.stop()

    app.router.lifespan_context = lifespan
    return SocketsFirst(app)
