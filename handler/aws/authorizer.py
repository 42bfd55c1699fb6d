"""The `$connect` REQUEST authorizer's Lambda entry point (serverless.yml: `authorizer`)."""

from __future__ import annotations

from typing import Any

from auth.lambda_authorizer import authorize
from handler.aws.runtime import runtime


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    return authorize(lambda: runtime().authenticator(), event)
