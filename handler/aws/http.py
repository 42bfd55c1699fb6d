"""The HTTP Lambda: the FastAPI app (page, health, REST) behind Mangum."""

from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any) -> Any:
    from handler.aws.runtime import runtime  # on first call: the import is the cold start

    return runtime().http_app()(event, context)
