"""The event source mapping of local runs (infra/local_aws/sqs_source.py) on moto's SQS server, as
`wschat emulate` runs them (infra/local_aws/dynamodb.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from infra.local_aws.dynamodb import create_fanout_queues, moto_server
from infra.local_aws.sqs_source import SqsEventSource


def client(endpoint: str) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
def sqs_server() -> Iterator[str]:
    endpoint, stop = moto_server("sqs")
    yield endpoint
    stop()


def test_an_idle_queue_is_long_polled_and_a_job_starts_as_soon_as_it_is_sent(
    sqs_server: str,
) -> None:
    """Short polls cost the emulator a request every tenth of a second, idle or not (about
    6% of a core); a long poll costs one per wait, and a send wakes it at once, never held
    behind it."""
    sqs = client(sqs_server)
    queue_url, _ = create_fanout_queues(sqs, "poll", visibility_timeout=5)
    receives: list[float] = []
    sqs.meta.events.register(
        "before-call.sqs.ReceiveMessage", lambda **_: receives.append(time.monotonic())
    )
    handled: list[tuple[float, str]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        handled.extend((time.monotonic(), r["body"]) for r in event["Records"])
        return {"batchItemFailures": []}

    stop = threading.Event()
    source = SqsEventSource(sqs, queue_url, handler)
    poller = threading.Thread(target=source.run, args=(stop,), daemon=True)
    poller.start()
    try:
        time.sleep(2)
        assert len(receives) <= 1, f"{len(receives)} receives in 2 s of an idle queue"
        sender = client(sqs_server)
        started = time.monotonic()
        sender.send_message(QueueUrl=queue_url, MessageBody="job")
        sent = time.monotonic()
        deadline = sent + 5
        while not handled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [body for _, body in handled] == ["job"]
        assert sent - started < 1, "the send waited behind the long poll"
        assert handled[0][0] - sent < 1, "the job waited for the next poll"
    finally:
        stop.set()
