"""FastAPI's WebSocket example, byte for byte, through Starlette's TestClient and a real server."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from handler.local.service import create_local_app
from handler.local.socket import SocketsFirst
from infra.settings import Settings

SEED_PAGE_MARKERS = ['id="itemId"', 'id="token"', 'id="messageText"', "<title>Chat</title>"]


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_local_app(Settings()))


def test_page_is_served(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for marker in SEED_PAGE_MARKERS:
        assert marker in response.text


def test_token_and_q(client: TestClient) -> None:
    with client.websocket_connect("/items/foo/ws?token=some-key-token&q=7") as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "Session cookie or query token value is: some-key-token"
        assert ws.receive_text() == "Query parameter q is: 7"
        assert ws.receive_text() == "Message text was: hello, for item ID: foo"
        ws.send_text("again")
        assert ws.receive_text() == "Session cookie or query token value is: some-key-token"


def test_session_cookie_without_q(client: TestClient) -> None:
    client.cookies.set("session", "cookie-value")
    with client.websocket_connect("/items/bar/ws") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "Session cookie or query token value is: cookie-value"
        assert ws.receive_text() == "Message text was: hi, for item ID: bar"


def test_no_credential_is_a_policy_violation(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/items/foo/ws"):
        pass
    assert refused.value.code == 1008
    assert isinstance(client.app, SocketsFirst)
    chat = client.app.app.state.chat
    assert len(chat.delivery) == 0 and chat.core.connections.count("foo") == 0  # nothing kept


@pytest.mark.parametrize("q", ["abc", "1.5", ""])
def test_non_integer_q_is_refused(client: TestClient, q: str) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(f"/items/foo/ws?token=t&q={q}"),
    ):
        pass
    assert refused.value.code == 1008


# The same lines against real servers (uvicorn and the API Gateway emulator) are in
# tests/contract/test_chat.py.
