"""Prometheus metrics for `wschat serve`, named after Centrifugo's.

No label carries a room, a user or a connection id, nor a value a client chose (a close code is
one of the server's own, or `other`): each would make a time series per value (unbounded
cardinality). With `wschat serve --workers N`, each worker writes its values to
files under PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, which the CLI
sets up before the workers start) and any worker's `/metrics` adds up all of them.
"""

from __future__ import annotations

import os
from collections import Counter as Tally

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from handler.chat.wire import close_code_label

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR))


class ChatMetrics:
    """One process's metrics; the core's Metrics port, and what the transport counts."""

    def __init__(self) -> None:
        # Multiprocess mode keeps values in files, not a registry: scrapes collect the files.
        self.registry = None if multiprocess() else CollectorRegistry()
        registry = self.registry
        self.connections = Gauge(
            "wschat_connections",
            "Open WebSocket connections.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rooms = Gauge(
            "wschat_rooms",
            "Rooms with members connected to this server (summed over workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.messages_received = Counter(
            "wschat_messages_received", "Messages stored from clients and REST.", registry=registry
        )
        self.messages_delivered = Counter(
            "wschat_messages_delivered",
            "Frames queued to sockets (one per recipient).",
            registry=registry,
        )
        self.disconnects = Counter(
            "wschat_disconnects",
            "Connections ended, by close code (the server's own codes, else `other`).",
            ["code"],
            registry=registry,
        )
        self.handshakes_refused = Counter(
            "wschat_handshakes_refused",
            "Handshakes refused, by HTTP status.",
            ["status"],
            registry=registry,
        )
        self.slow_consumer_closes = Counter(
            "wschat_slow_consumer_closes",
            "Connections closed with 1013 because their send queue was full.",
            registry=registry,
        )
        self.publish_duration = Histogram(
            "wschat_publish_duration_seconds",
            "Time to store a message and hand it to its room.",
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.pubsub_lag = Histogram(
            "wschat_pubsub_lag_seconds",
            "With Redis: from a message's publication to its delivery by this worker.",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
        )
        self.resume = Counter(
            "wschat_resume",
            "JSON clients resuming with `since`, by whether their gap could be filled.",
            ["recovered"],
            registry=registry,
        )
        self._members: Tally[str] = Tally()  # this process's connections per room
        self.redis = RedisMetrics(registry, self.pubsub_lag)

    # --- the core's Metrics port --------------------------------------------------------------

    def published(self, seconds: float) -> None:
        self.messages_received.inc()
        self.publish_duration.observe(seconds)

    def resumed(self, recovered: bool) -> None:
        self.resume.labels(recovered=str(recovered).lower()).inc()

    # --- the transport's ----------------------------------------------------------------------

    def joined(self, room: str) -> None:
        self._members[room] += 1
        self.connections.inc()
        self.rooms.set(len(self._members))

    def left(self, room: str, code: int) -> None:
        self._members[room] -= 1
        if self._members[room] <= 0:
            del self._members[room]
        self.connections.dec()
        self.rooms.set(len(self._members))
        self.disconnects.labels(code=close_code_label(code)).inc()

    def refused(self, status: int) -> None:
        self.handshakes_refused.labels(status=str(status)).inc()

    def talks_to(self, kind: str, nodes: list[str]) -> None:
        """Which Redis nodes this worker talks to now (asked at each scrape)."""
        self.redis.talks_to(kind, nodes)

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format: this process's, or every worker's."""
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


class RedisMetrics:
    """With Redis: what a worker's subscription sees (infra/redis/subscription.py,
    FeedMetrics), and which node it talks to. The node is a label, but a bounded one: the
    few addresses of one deployment's Redis nodes."""

    def __init__(self, registry: CollectorRegistry | None, lag: Histogram) -> None:
        self._lag = lag
        self.resubscribes = Counter(
            "wschat_redis_resubscribes",
            "Fresh subscriptions after a lost or deaf one (each room then caught up).",
            registry=registry,
        )
        self.epoch_restarts = Counter(
            "wschat_redis_epoch_restarts",
            "Rooms heard to start over under a new epoch (history lost, or a failover that "
            "lost writes); their JSON members here were closed with 1012 to resume.",
            registry=registry,
        )
        self.node = Gauge(
            "wschat_redis_node",
            "1 for each Redis node (host:port) this worker talks to (on a cluster, subscribes "
            "on), by how it finds it.",
            ["kind", "node"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self._nodes: set[tuple[str, str]] = set()

    def lag(self, seconds: float) -> None:
        self._lag.observe(seconds)

    def resubscribed(self) -> None:
        self.resubscribes.inc()

    def restarted(self) -> None:
        self.epoch_restarts.inc()

    def talks_to(self, kind: str, nodes: list[str]) -> None:
        """A series per node: one, or on a cluster each node the worker subscribes on."""
        now = {(kind, node) for node in nodes}
        for gone in self._nodes - now:
            self.node.remove(*gone)
        for kind_, node in now - self._nodes:
            self.node.labels(kind=kind_, node=node).set(1)
        self._nodes = now
