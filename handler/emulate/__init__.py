"""`wschat emulate`'s wiring: the project's Lambda handlers and HTTP function behind the
generic API Gateway emulator (handler/emulate/gateway.py), on a local DynamoDB, with big rooms
fanned out through a local SQS queue to the fanout handler, as an event source mapping would."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import boto3

from handler.emulate.gateway import Emulator, EmulatorConfig
from infra.local_aws.dynamodb import (
    create_fanout_queues,
    moto_server,
    send_in_process,
    start_dynamodb,
)
from infra.local_aws.sqs_source import SqsEventSource

# The deployable: the emulated authorizer reads its identity sources from it, not a copy.
SERVERLESS_YML = Path(__file__).resolve().parents[2] / "serverless.yml"

# How long a failed fan-out job stays invisible before it is received again: seconds here,
# not the deployed six minutes, so a developer sees a retry while watching.
FANOUT_VISIBILITY_SECONDS = 5


def authorizer_identity_sources() -> tuple[str, ...]:
    """The identity sources of the REQUEST authorizer serverless.yml attaches to `$connect`
    when a stage sets `connectAuth: authorizer`."""
    import yaml

    if not SERVERLESS_YML.exists():
        raise FileNotFoundError(f"--authorizer reads its identity sources from {SERVERLESS_YML}")
    service = yaml.safe_load(SERVERLESS_YML.read_text())
    return tuple(service["custom"]["connectAuthorizers"]["authorizer"]["identitySource"])


def build_emulator(
    config: EmulatorConfig, host: str, port: int, dynamodb_endpoint: str | None
) -> tuple[Emulator, Callable[[], None]]:
    """Point the handlers at this emulator and at DynamoDB, then build it. Returns the
    emulator and a function that stops the DynamoDB it started."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "emulator",
        "AWS_SECRET_ACCESS_KEY": "emulator",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    base = f"http://{host}:{port}"
    table = os.environ.setdefault("WSCHAT_TABLE", "wschat-emulator")
    dynamodb = start_dynamodb(dynamodb_endpoint, table)
    sqs_endpoint, stop_sqs = moto_server("sqs")
    sqs = boto3.client("sqs", endpoint_url=sqs_endpoint)
    queue_url, _ = create_fanout_queues(sqs, f"{table}-fanout", FANOUT_VISIBILITY_SECONDS)
    os.environ.update(
        {
            "WSCHAT_DYNAMODB_ENDPOINT": dynamodb.endpoint,
            "WSCHAT_APIGW_ENDPOINT": f"{base}/{config.stage}",
            "WSCHAT_LAMBDA_ENDPOINT": base + config.lambda_path,
            "WSCHAT_WELCOME_FUNCTION": "welcome",
            "WSCHAT_SQS_ENDPOINT": sqs_endpoint,
            "WSCHAT_FANOUT_QUEUE_URL": queue_url,
        }
    )
    from handler.aws import authorizer, fanout, websocket
    from handler.aws.runtime import reset_runtime, runtime
    from handler.web.app import page_html

    reset_runtime()  # the environment changed: read it afresh
    send_in_process(runtime().dynamodb(), dynamodb)
    # The fanout function, fed by the queue in a thread of its own, as Lambda's poller would.
    polling = threading.Event()
    source = SqsEventSource(sqs, queue_url, fanout.handler, batch_size=2)
    threading.Thread(target=source.run, args=(polling,), name="fanout", daemon=True).start()

    def stop() -> None:
        polling.set()
        stop_sqs()
        dynamodb.stop()

    emulator = Emulator(
        config,
        routes={
            "$connect": websocket.connect,
            "$default": websocket.default,
            "$disconnect": websocket.disconnect,
        },
        authorizer=authorizer.handler,
        functions={"welcome": websocket.welcome},
        page=page_html,
        http=runtime().web_app(),
    )
    return emulator, stop
