"""The `$connect` REQUEST authorizer's Lambda entry point (serverless.yml: `authorizer`)."""

from __future__ import annotations

from typing import Any

from auth.lambda_authorizer import authorize


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    from handler.aws.runtime import runtime  # on first call: the import is the cold start

    return authorize(lambda: runtime().authenticator(), lambda: runtime().policy(), event)
