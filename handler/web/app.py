"""The HTTP surface both deployments share: the chat page, a health check and REST."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.resources import files

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from handler.web.rest import RestBackend, rest_router, validation_error
from infra.settings import Settings


def page_html(socket_url: str = "") -> str:
    """The chat page; with `socket_url` (API Gateway's wss:// URL) it connects there."""
    page = files("handler.web").joinpath("page.html").read_text(encoding="utf-8")
    if not socket_url:
        return page
    config = f"<script>window.WSCHAT_SOCKET_URL = {json.dumps(socket_url)};</script>"
    return page.replace("</head>", f"    {config}\n  </head>", 1)


def create_app(
    settings: Settings,
    rest: Callable[[], RestBackend],
    health: Callable[[], dict[str, object]],
) -> FastAPI:
    """The HTTP surface both deployments share: the page, `/healthz` and REST. The local
    deployment adds its WebSocket route (`handler.local.service`); on Lambda, WebSockets are
    API Gateway's job."""
    page = page_html(settings.socket_url)
    app = FastAPI(title="wschat")
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        body = health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    app.include_router(rest_router(rest))
    return app
