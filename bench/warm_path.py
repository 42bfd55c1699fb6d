"""Lambda warm path: the handler's CPU per `$default` invocation once the container is warm,
with the stores in-process (no AWS I/O), against the chat core called directly (what the
uvicorn endpoint does), and again on moto's in-process DynamoDB and Management API.

    .venv/bin/python bench/warm_path.py

A room of 10 text-dialect connections; each invocation stores a message and delivers it to
the other 9. Target (issue 7): at most 1 ms of handler CPU per invocation, in-process.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).resolve().parent.parent / "tests" / "events"
MEMBERS = 10
os.environ.update(
    {
        "WSCHAT_RATE_PER_SECOND": "1000000",  # one connection sends every message here
        "WSCHAT_RATE_BURST": "1000000",
        "WSCHAT_TABLE": "bench",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)

from wsload import publish  # noqa: E402

from handler.aws.runtime import AwsRuntime, reset_runtime  # noqa: E402  (after the environment)
from handler.aws.websocket import WebSocketHandlers  # noqa: E402
from handler.chat.core import ChatCore  # noqa: E402
from infra.memory.connections import MemoryConnections  # noqa: E402
from infra.memory.message_log import MemoryMessageLog  # noqa: E402
from infra.settings import get_settings  # noqa: E402


class CountingDelivery:
    """In-process delivery: counts frames instead of posting them."""

    def __init__(self) -> None:
        self.frames = 0

    def send(self, connection_ids: Sequence[str], payload: str) -> Sequence[str]:
        self.frames += len(connection_ids)
        return []

    def close(self, connection_id: str, code: int, reason: str) -> None:
        pass


def event(name: str, connection_id: str, body: str | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = copy.deepcopy(json.loads((EVENTS / f"{name}.json").read_text()))
    raw["requestContext"]["connectionId"] = connection_id
    if body is not None:
        raw["body"] = body
    return raw


def cpu_us(call: Callable[[], object], calls: int) -> float:
    """Median over 5 batches of the process CPU time per call, in microseconds."""
    batches = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(calls):
            call()
        batches.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(batches)


def join_room(handlers: WebSocketHandlers) -> list[str]:
    ids = [f"member-{i}" for i in range(MEMBERS)]
    for connection_id in ids:
        assert handlers.connect(event("connect", connection_id))["statusCode"] == 200
    return ids


def in_process() -> tuple[float, float, int]:
    delivery = CountingDelivery()
    settings = get_settings()
    core = ChatCore(MemoryConnections(), MemoryMessageLog(), delivery, settings.limits())
    # The runtime's seam: every endpoint gets the in-process core.
    runtime = AwsRuntime(settings, build_core=lambda runtime, endpoint, welcome: core)
    handlers = WebSocketHandlers(lambda: runtime)
    sender = join_room(handlers)[0]
    message = event("message", sender, "hello room")
    assert handlers.default(message) == {"statusCode": 200}
    handler = cpu_us(lambda: handlers.default(message), 2000)
    direct = cpu_us(lambda: core.message(sender, "hello room"), 2000)
    return handler, direct, delivery.frames


def on_moto() -> float:
    import boto3
    from moto import mock_aws

    from handler.aws.runtime import runtime
    from infra.local_aws.dynamodb import create_chat_table

    with mock_aws():
        reset_runtime()
        create_chat_table(boto3.client("dynamodb"), "bench")
        handlers = WebSocketHandlers(runtime)
        sender = join_room(handlers)[0]
        message = event("message", sender, "hello room")
        assert handlers.default(message) == {"statusCode": 200}
        return cpu_us(lambda: handlers.default(message), 40)


def main() -> int:
    handler, direct, frames = in_process()
    assert frames > 0
    moto = on_moto()
    rows: list[dict[str, Any]] = [
        {"path": "chat core called directly (baseline: what uvicorn runs)", "us": direct},
        {"path": "$default handler, stores in-process", "us": handler},
        {"path": "$default handler on moto (DynamoDB + Management API emulated)", "us": moto},
    ]
    lines = [
        f"| per message to a room of {MEMBERS} | CPU per invocation | vs core alone |",
        "|---|---|---|",
    ]
    for row in rows:
        row["vs_core"] = row["us"] / direct
        lines.append(f"| {row['path']} | {row['us']:.0f} µs | {row['vs_core']:.2f}x |")
    return publish("warm_path", lines, rows)


if __name__ == "__main__":
    raise SystemExit(main())
