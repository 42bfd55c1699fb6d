"""AWS services for local runs (`wschat emulate`, `serverless offline`): moto's servers on free
loopback ports: DynamoDB with the chat table, and SQS for big rooms."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from infra import lean_moto
from infra.dynamodb import create_chat_table
from infra.sqs_source import queue_arn


def moto_server(service: Literal["dynamodb", "sqs"] = "dynamodb") -> tuple[str, Callable[[], None]]:
    """moto's server for `service` on a free loopback port.

    DynamoDB requests run one at a time. DynamoDB makes each request atomic, a transaction
    included; moto's backend does not when requests run in parallel threads, and the
    welcome's seam relies on it. A lock around each request restores the guarantee.
    SQS requests run side by side: a receive long-polls inside its request (moto wakes it
    when a message arrives), and a lock would hold every send for as long.
    moto is kept lean for hours of use (infra/lean_moto.py).
    """
    import threading

    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per AWS call
    lean_moto.install()
    app = create_backend_app(service)  # one service per server: no per-request lookup
    lock = threading.Lock() if service == "dynamodb" else contextlib.nullcontext()

    def serve(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            try:
                return list(app(environ, start_response))
            finally:
                lean_moto.forget_tracked_models()

    server = make_server("127.0.0.1", 0, serve, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server.shutdown


def start_dynamodb(endpoint: str | None, table: str) -> tuple[str, Callable[[], None]]:
    """Use `endpoint`, or start moto's server on a free loopback port; make sure the table
    exists. Returns the endpoint and a function that stops what was started."""
    import boto3

    stop: Callable[[], None] = lambda: None  # noqa: E731
    if not endpoint:
        endpoint, stop = moto_server()
    client = boto3.client("dynamodb", endpoint_url=endpoint)
    if table not in client.list_tables().get("TableNames", []):
        create_chat_table(client, table)
    return endpoint, stop


def create_fanout_queues(
    sqs: Any, name: str, visibility_timeout: int | None = None
) -> tuple[str, str]:
    """Create the fan-out queue and its dead-letter queue as infra/resources.yml (which
    serverless.yml deploys) defines them: the redrive policy's maxReceiveCount, the visibility
    timeout (unless given: a local run need not wait six minutes to see a failure again).
    Returns the two queue URLs."""
    import yaml

    resources = yaml.safe_load((Path(__file__).parent / "resources.yml").read_text())
    queue = resources["Resources"]["FanoutQueue"]["Properties"]
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    redrive = {
        "deadLetterTargetArn": queue_arn(sqs, dlq_url),
        "maxReceiveCount": queue["RedrivePolicy"]["maxReceiveCount"],
    }
    timeout = queue["VisibilityTimeout"] if visibility_timeout is None else visibility_timeout
    url = sqs.create_queue(
        QueueName=name,
        Attributes={"VisibilityTimeout": str(timeout), "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    return url, dlq_url
