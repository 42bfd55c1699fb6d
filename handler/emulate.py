"""`wschat emulate`'s wiring: the project's Lambda handlers and HTTP function behind the
generic API Gateway emulator (infra/emulator.py), on a local DynamoDB."""

from __future__ import annotations

import os
from collections.abc import Callable

from infra.emulator import Emulator, EmulatorConfig
from infra.local_dynamodb import start_dynamodb


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
    endpoint, stop = start_dynamodb(dynamodb_endpoint, table)
    os.environ.update(
        {
            "WSCHAT_DYNAMODB_ENDPOINT": endpoint,
            "WSCHAT_APIGW_ENDPOINT": f"{base}/{config.stage}",
            "WSCHAT_LAMBDA_ENDPOINT": base,
            "WSCHAT_WELCOME_FUNCTION": "welcome",
        }
    )
    from handler.aws import authorizer, websocket
    from handler.aws.runtime import reset_runtime, runtime
    from handler.web.app import page_html

    reset_runtime()  # the environment changed: read it afresh
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
