"""The FastAPI application: the chat page, a health check and the WebSocket endpoint."""

from __future__ import annotations

import json
from importlib.resources import files

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse

from handler.local_socket import chat_socket
from handler.rest import rest_router, validation_error
from handler.service import build_local_chat
from infra.settings import Settings, get_settings


def page_html(socket_url: str = "") -> str:
    """The chat page; with `socket_url` (API Gateway's wss:// URL) it connects there."""
    page = files("handler").joinpath("page.html").read_text(encoding="utf-8")
    if not socket_url:
        return page
    config = f"<script>window.WSCHAT_SOCKET_URL = {json.dumps(socket_url)};</script>"
    return page.replace("</head>", f"    {config}\n  </head>", 1)


def create_app(settings: Settings | None = None, serverless: bool = False) -> FastAPI:
    """Build the app. `wschat serve` calls this as uvicorn's factory; the HTTP Lambda builds it
    with `serverless=True`, where WebSockets are API Gateway's job."""
    settings = settings or get_settings()
    page = page_html(settings.socket_url)
    app = FastAPI(title="wschat")
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    if serverless:
        from handler.serverless import rest_backend

        @app.get("/healthz")
        async def lambda_healthz() -> dict[str, object]:
            return {"status": "ok", "transport": "lambda"}

        app.include_router(rest_router(rest_backend))
        return app

    chat = build_local_chat(settings)
    app.state.chat = chat
    app.include_router(rest_router(lambda: chat))

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "transport": "local", "connections": len(chat.connections)}

    app.add_api_websocket_route("/items/{item_id}/ws", chat_socket)
    return app
