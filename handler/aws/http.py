"""The HTTP Lambda: the FastAPI app (page, health, REST) behind Mangum."""

from __future__ import annotations

from typing import Any

from handler.aws.runtime import runtime


def handler(event: Any, context: Any) -> Any:
    return runtime().http_app()(event, context)
