"""The FastAPI application: the chat page, a health check and the WebSocket endpoint."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from handler.local_socket import chat_socket
from handler.service import build_local_chat
from infra.settings import Settings, get_settings


def page_html() -> str:
    return files("handler").joinpath("page.html").read_text(encoding="utf-8")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. `wschat serve` calls this as uvicorn's factory."""
    settings = settings or get_settings()
    chat = build_local_chat(settings)
    page = page_html()

    app = FastAPI(title="wschat")
    app.state.chat = chat

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "connections": len(chat.connections)}

    app.add_api_websocket_route("/items/{item_id}/ws", chat_socket)
    return app
