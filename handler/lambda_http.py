"""The HTTP Lambda: the FastAPI app (page, health, REST) behind Mangum."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _adapter() -> Any:
    from mangum import Mangum

    from handler.app import create_app

    # API Gateway invokes per request: no lifespan to run.
    return Mangum(create_app(serverless=True), lifespan="off")


def handler(event: Any, context: Any) -> Any:
    return _adapter()(event, context)
