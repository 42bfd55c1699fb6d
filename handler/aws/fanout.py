"""The fanout function: consumes the fan-out queue (infra/aws/fanout.py), one job per record.

It answers with `batchItemFailures` (the event source mapping's ReportBatchItemFailures), so
a record that fails is received again, alone, and the others of its batch are not; after the
queue's maxReceiveCount, the redrive policy moves it to the dead-letter queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from handler.aws.runtime import entry_point, runtime
from infra.aws.fanout import FanoutJob, FanoutWorker

log = logging.getLogger(__name__)


def make_handler(get_worker: Callable[[], FanoutWorker]) -> Callable[[Any, Any], dict[str, Any]]:
    def handle(event: Any, context: Any = None) -> dict[str, Any]:
        records = event.get("Records") if isinstance(event, dict) else None
        if not isinstance(records, list):
            log.error("not an SQS event; nothing done")
            return {"batchItemFailures": []}
        worker = get_worker()
        failures = []
        for record in records:
            message_id = record.get("messageId", "?") if isinstance(record, dict) else "?"
            try:
                job = FanoutJob.from_json(record["body"])
            except (ValueError, TypeError, KeyError):
                # Kept, not dropped: it goes on to the dead-letter queue, where it can be read.
                log.error("record %s is not a fan-out job", message_id)
                failures.append({"itemIdentifier": message_id})
                continue
            try:
                worker.run(job)
            except Exception:
                log.exception("fan-out job %s failed; SQS will deliver it again", message_id)
                failures.append({"itemIdentifier": message_id})
        return {"batchItemFailures": failures}

    return handle


handler = entry_point(make_handler(lambda: runtime().fanout_worker()))
