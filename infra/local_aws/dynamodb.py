"""AWS services for local runs (`wschat emulate`, `serverless offline`): moto's servers on free
loopback ports: DynamoDB with the chat table, and SQS for big rooms."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from infra.local_aws import lean_moto
from infra.local_aws.sqs_source import queue_arn

# The stack serverless.yml deploys: local tables and queues are made from it, not restated.
RESOURCES = Path(__file__).resolve().parent.parent / "deploy" / "resources.yml"

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Any], list[bytes]]


def moto_server(service: Literal["dynamodb", "sqs"] = "dynamodb") -> tuple[str, Callable[[], None]]:
    """moto's server for `service` on a free loopback port (see `moto_app`)."""
    server = _serve(moto_app(service))
    return f"http://127.0.0.1:{server.server_address[1]}", _stopper(server)


def moto_app(service: Literal["dynamodb", "sqs"]) -> WSGIApp:
    """moto's backend for `service`, as a WSGI application.

    DynamoDB requests run one at a time. DynamoDB makes each request atomic, a transaction
    included; moto's backend does not when requests run in parallel threads, and the
    welcome's seam relies on it. A lock around each request restores the guarantee.
    SQS requests run side by side: a receive long-polls inside its request (moto wakes it
    when a message arrives), and a lock would hold every send for as long.
    moto is kept lean for hours of use (infra/local_aws/lean_moto.py).
    """
    import threading

    from moto.moto_server.werkzeug_app import create_backend_app

    lean_moto.install()
    app = create_backend_app(service)  # one service per server: no per-request lookup
    lock = threading.Lock() if service == "dynamodb" else contextlib.nullcontext()

    def serve(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            try:
                return list(app(environ, start_response))
            finally:
                lean_moto.forget_tracked_models()

    return serve


def _serve(app: WSGIApp) -> Any:
    import threading

    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per AWS call
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _stopper(server: Any) -> Callable[[], None]:
    def stop() -> None:
        server.shutdown()
        server.server_close()  # and free its port

    return stop


@dataclass
class LocalDynamoDB:
    """The DynamoDB a local run uses: its endpoint, how to stop what was started, and, when
    it is moto in this process, its WSGI application (see `send_in_process`)."""

    endpoint: str
    stop: Callable[[], None]
    app: WSGIApp | None = None


def start_dynamodb(endpoint: str | None, table: str) -> LocalDynamoDB:
    """Use `endpoint`, or start moto's server on a free loopback port; make sure the table
    exists."""
    import boto3

    if endpoint:
        local = LocalDynamoDB(endpoint, lambda: None)
    else:
        app = moto_app("dynamodb")
        server = _serve(app)
        local = LocalDynamoDB(f"http://127.0.0.1:{server.server_address[1]}", _stopper(server), app)
    client = boto3.client("dynamodb", endpoint_url=local.endpoint)
    if table not in client.list_tables().get("TableNames", []):
        create_chat_table(client, table)
    return local


def send_in_process(client: Any, dynamodb: LocalDynamoDB) -> None:
    """Hand `client`'s requests to moto's application in this process instead of over
    loopback HTTP: the same request, the same backend and the same lock, without a TCP
    connection, a thread and two HTTP parsers per call (werkzeug's server closes every
    connection). A connect makes eight DynamoDB calls, and their HTTP was a fifth of the
    emulator's CPU per connect (docs/performance.md, section 8). moto's own `mock_aws` works
    this way."""
    from urllib.parse import urlsplit

    from botocore.awsrequest import AWSResponse
    from moto.core.botocore_stubber import MockRawResponse
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    app = dynamodb.app
    if app is None:
        return  # not moto in this process: over HTTP, as on AWS
    server = urlsplit(dynamodb.endpoint).netloc

    def send(request: Any, **_: Any) -> AWSResponse | None:
        url = urlsplit(request.url)
        if url.netloc != server:
            return None
        environ = EnvironBuilder(
            path=url.path,
            base_url=dynamodb.endpoint,
            query_string=url.query,
            method=request.method,
            headers=[
                (k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()
            ],
            data=request.body,
        ).get_environ()
        try:
            body, status, headers = run_wsgi_app(app, environ, buffered=True)
        except Exception:  # what moto's server answers for a fault of moto's own
            log.exception("moto failed on a DynamoDB request")
            return AWSResponse(request.url, 500, {}, MockRawResponse(b""))
        raw = MockRawResponse(b"".join(body))
        return AWSResponse(request.url, int(status.split()[0]), dict(headers), raw)

    client.meta.events.register("before-send.dynamodb", send)


def create_fanout_queues(
    sqs: Any, name: str, visibility_timeout: int | None = None
) -> tuple[str, str]:
    """Create the fan-out queue and its dead-letter queue as infra/deploy/resources.yml (which
    serverless.yml deploys) defines them: the redrive policy's maxReceiveCount, the visibility
    timeout (unless given: a local run need not wait six minutes to see a failure again).
    Returns the two queue URLs."""
    import yaml

    resources = yaml.safe_load(RESOURCES.read_text())
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


def create_chat_table(client: Any, table: str) -> None:
    """Create the ChatTable exactly as infra/deploy/resources.yml (which serverless.yml deploys)
    defines it: keys, billing mode and TTL."""
    import yaml

    resources = yaml.safe_load(RESOURCES.read_text())
    properties = resources["Resources"]["ChatTable"]["Properties"]
    client.create_table(
        TableName=table,
        AttributeDefinitions=properties["AttributeDefinitions"],
        KeySchema=properties["KeySchema"],
        BillingMode=properties["BillingMode"],
    )
    client.get_waiter("table_exists").wait(TableName=table)
    ttl = properties["TimeToLiveSpecification"]
    client.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": ttl["Enabled"]},
    )
