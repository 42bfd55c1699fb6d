"""The HTTP surface both deployments share: the chat page, a health check and REST."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib.resources import files

from fastapi import FastAPI, Request, Response
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


CLIENT_PATH = "/client/wschat.js"
JS_TYPE = "text/javascript; charset=utf-8"


def client_js() -> tuple[bytes, str]:
    """The JavaScript client's bytes and their ETag."""
    body = files("handler.web").joinpath("wschat.mjs").read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def create_app(
    settings: Settings,
    rest: Callable[[], RestBackend],
    health: Callable[[], dict[str, object]],
) -> FastAPI:
    """The HTTP surface both deployments share: the page, `/healthz` and REST. The local
    deployment adds its WebSocket route (`handler.local.service`); on Lambda, WebSockets are
    API Gateway's job."""
    page = page_html(settings.socket_url)
    client, client_etag = client_js()
    app = FastAPI(title="wschat")
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get(CLIENT_PATH, include_in_schema=False)
    async def client_module(request: Request) -> Response:
        """The JavaScript client, as an ES module: revalidated on each use (`no-cache`), a
        304 while it is unchanged, so a page always runs the server's own client."""
        headers = {"ETag": client_etag, "Cache-Control": "no-cache"}
        asked = _etags(request.headers.get("if-none-match", ""))
        if client_etag in asked or "*" in asked:
            return Response(status_code=304, headers=headers)
        return Response(client, media_type=JS_TYPE, headers=headers)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        body = health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    app.include_router(rest_router(rest))
    return app


def _etags(header: str) -> set[str]:
    """The entity tags an If-None-Match header lists (weak ones as their strong form)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
