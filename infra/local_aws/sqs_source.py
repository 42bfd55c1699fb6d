"""An SQS event source mapping, as Lambda runs one, for local runs and tests.

Lambda's poller receives a batch, invokes the function with it, and deletes the records the
function did not list in `batchItemFailures` (ReportBatchItemFailures). A failed record
becomes visible again after the queue's visibility timeout; the queue's redrive policy moves
one received `maxReceiveCount` times to the dead-letter queue. This does the same against any
SQS endpoint (moto's, in `wschat emulate` and the tests), so the fanout handler runs exactly
as deployed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SqsHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def queue_arn(sqs: Any, queue_url: str) -> str:
    arn: str = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    return arn


class SqsEventSource:
    def __init__(self, sqs: Any, queue_url: str, handler: SqsHandler, batch_size: int = 5) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._handler = handler
        self._batch_size = batch_size
        self._arn = queue_arn(sqs, queue_url)

    def poll(self, wait_seconds: int = 0) -> int:
        """Receive one batch and hand it to the handler. Returns how many records it had."""
        received = self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not received:
            return 0
        event = {"Records": [self._record(message) for message in received]}
        try:
            failed = {f["itemIdentifier"] for f in self._handler(event, None)["batchItemFailures"]}
        except Exception:
            # As Lambda does when the function itself fails: the whole batch comes back.
            log.exception("the fanout handler failed; its batch will be received again")
            return len(received)
        done = [m for m in received if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            self._sqs.delete_message_batch(
                QueueUrl=self._url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(done[start : start + 10])
                ],
            )
        return len(received)

    def run(self, stop: threading.Event, wait_seconds: int = 20) -> None:
        """Poll until `stop` is set, with long polls as Lambda's poller makes: an idle queue
        costs a request every `wait_seconds`, and a job starts as soon as it is sent."""
        while not stop.is_set():
            try:
                self.poll(wait_seconds)
            except Exception:
                log.exception("polling the fan-out queue failed; trying again")
                stop.wait(1)

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": {},
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self._arn,
        }
