"""`/metrics` on `wschat serve`: Prometheus' text format, Centrifugo's names, and no label that
names a room, a user or a connection."""

from __future__ import annotations

import asyncio
from typing import Any

import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import recv, recv_json, until
from tests.support.servers import Server

ALLOWED_LABELS = {"code", "status", "recovered", "le"}


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's /metrics, by name and labels."""
    text = server.get("/metrics").decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_what_happened_and_name_nobody(start_server: Any) -> None:
    server: Server = start_server()
    before = scrape(server)
    # A refused handshake: no credential (403).
    try:
        async with websockets.connect(server.ws("/items/m/ws")):
            pass
    except websockets.InvalidStatus as refused:
        assert refused.response.status_code == 403
    async with (
        websockets.connect(server.ws("/items/secret-room/ws?token=alice-token")) as alice,
        websockets.connect(server.ws("/items/secret-room/ws?token=bob&format=json&since=0")) as bob,
    ):
        await until(bob, "welcome")
        await alice.send("hello")
        await recv(alice)
        await recv(alice)  # the seed's two echo lines
        assert (await recv_json(bob))["text"] == "hello"
        during = scrape(server)
    await asyncio.sleep(0.2)  # the server notices both closes
    after = scrape(server)

    assert value(during, "wschat_connections") == value(before, "wschat_connections") + 2
    assert value(during, "wschat_rooms") == 1
    assert value(after, "wschat_connections") == value(before, "wschat_connections")
    assert value(after, "wschat_rooms") == 0
    assert value(after, "wschat_messages_received_total") == 1
    assert value(after, "wschat_publish_duration_seconds_count") == 1
    assert value(after, "wschat_messages_delivered_total") >= 1  # to bob (alice had her echo)
    assert value(after, "wschat_handshakes_refused_total", status="403") == 1
    assert value(after, "wschat_disconnects_total", code="1000") == 2
    assert value(after, "wschat_resume_total", recovered="true") == 1
    # Cardinality: no label is a room, a user or a connection.
    labels = {name for _, pairs in after for name, _ in pairs}
    assert labels <= ALLOWED_LABELS
    text = server.get("/metrics").decode()
    assert "secret-room" not in text and "alice" not in text and "bob" not in text


async def test_clients_cannot_choose_the_close_code_labels(start_server: Any) -> None:
    # Each client closes with a code of its own choosing (3000-4999 are free for
    # applications): labelled as they came, they would make a series each.
    server: Server = start_server()
    for code in range(3000, 3030):
        async with websockets.connect(server.ws("/items/codes/ws?token=t")) as ws:
            await ws.close(code)
    async with websockets.connect(server.ws("/items/codes/ws?token=t")) as ws:
        await ws.close(1001)  # a code the server knows keeps its own label
    await asyncio.sleep(0.3)  # the server notices the closes
    after = scrape(server)
    codes = {
        dict(pairs)["code"]: count
        for (name, pairs), count in after.items()
        if name == "wschat_disconnects_total"
    }
    assert codes == {"other": 30, "1001": 1}
