"""The API Gateway emulator's own promises, driven with recording handlers through
Starlette's TestClient: event shapes, route selection, the Management API, limits."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from handler.emulate import authorizer_identity_sources
from handler.emulate.gateway import Emulator, EmulatorConfig, Handler


class Lambda:
    """Handlers that record their events; `$connect` answers what `reply` says."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.reply: dict[str, Any] = {"statusCode": 200}
        self._changed = threading.Condition()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        route = event["requestContext"]["routeKey"]
        return self.reply if route == "$connect" else {"statusCode": 200}

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.events) >= count, timeout=10)

    def routes(self) -> list[str]:
        return [e["requestContext"]["routeKey"] for e in self.events]


def emulator(handler: Lambda, authorizer_handler: Any = None, **config: Any) -> TestClient:
    routes: dict[str, Handler] = {
        "$connect": handler,
        "$default": handler,
        "$disconnect": handler,
        "sendmessage": handler,
    }
    app = Emulator(EmulatorConfig(**config), routes, authorizer_handler, {}, str).app()
    return TestClient(app)


def test_events_are_shaped_like_api_gateways() -> None:
    handler = Lambda()
    client = emulator(handler)
    with client.websocket_connect(
        "/local?room=r&token=t&token=u", headers={"X-Custom": "yes"}
    ) as ws:
        ws.send_text('{"action": "sendmessage", "text": "hi"}')
        ws.send_text('{"action": "history"}')
        ws.send_text("plain")
        handler.wait_for(4)
        ws.close(4000)
        handler.wait_for(5)
    connect, routed, defaulted, plain, disconnect = handler.events
    assert connect["requestContext"]["routeKey"] == "$connect"
    # A repeated parameter: every value in the multi-value map, the last in the single-value
    # one, as API Gateway builds them.
    assert connect["queryStringParameters"] == {"room": "r", "token": "u"}
    assert connect["multiValueQueryStringParameters"]["token"] == ["t", "u"]
    assert connect["headers"]["x-custom"] == "yes"
    context = connect["requestContext"]
    assert {"connectionId", "domainName", "stage", "apiId", "eventType"} <= set(context)
    assert (context["eventType"], context["stage"]) == ("CONNECT", "local")
    # Route selection on $request.body.action; headers and query on $connect only.
    assert routed["requestContext"]["routeKey"] == "sendmessage"
    assert defaulted["requestContext"]["routeKey"] == "$default"
    assert "headers" not in routed and "queryStringParameters" not in routed
    assert plain["body"] == "plain" and plain["isBase64Encoded"] is False
    assert disconnect["requestContext"]["disconnectStatusCode"] == 4000
    ids = {e["requestContext"]["connectionId"] for e in handler.events}
    assert len(ids) == 1


@pytest.mark.parametrize("status", [401, 403, 400])
def test_connect_refusal_becomes_the_handshake_status(status: int) -> None:
    handler = Lambda()
    handler.reply = {"statusCode": status, "body": "no"}
    with pytest.raises(WebSocketDisconnect), emulator(handler).websocket_connect("/local"):
        pass
    assert handler.routes() == ["$connect"]  # no $disconnect for a connection never opened


def test_management_api_post_get_delete_and_410() -> None:
    handler = Lambda()
    client = emulator(handler)
    with client.websocket_connect("/local?room=r", subprotocols=["wschat.json"]) as ws:
        cid = handler.events[0]["requestContext"]["connectionId"]
        path = f"/local/@connections/{cid}"
        assert client.post(path, content=b"hello").status_code == 200
        assert ws.receive_text() == "hello"
        info = client.get(path).json()
        assert {"ConnectedAt", "LastActiveAt", "Identity"} <= set(info)
        assert client.delete(path).status_code == 204
        with pytest.raises(WebSocketDisconnect):
            ws.receive_text()
    gone = client.post(f"/local/@connections/{cid}", content=b"late")
    assert gone.status_code == 410 and gone.headers["x-amzn-ErrorType"] == "GoneException"
    # Ids are base64 and may hold "/" and "+": they must still route.
    assert client.post("/local/@connections/ab/c+d=", content=b"x").status_code == 410


def test_subprotocol_from_the_connect_response() -> None:
    handler = Lambda()
    handler.reply = {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "wschat.json"}}
    with emulator(handler).websocket_connect("/local", subprotocols=["wschat.json"]) as ws:
        assert ws.accepted_subprotocol == "wschat.json"


def test_a_binary_frame_closes_with_1003_and_reaches_no_route() -> None:
    """As API Gateway: it takes no binary frame, and closes the connection with 1003."""
    handler = Lambda()
    with emulator(handler).websocket_connect("/local") as ws:
        ws.send_bytes(b"\x00\x01")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1003
        handler.wait_for(2)
    _, disconnect = handler.events
    assert handler.routes() == ["$connect", "$disconnect"]
    assert disconnect["requestContext"]["disconnectStatusCode"] == 1003


def test_idle_timeout_closes_going_away() -> None:
    handler = Lambda()
    with emulator(handler, idle_timeout=0.2).websocket_connect("/local") as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1001
        handler.wait_for(2)
    assert handler.routes() == ["$connect", "$disconnect"]


def test_max_duration_closes_going_away() -> None:
    handler = Lambda()
    with emulator(handler, max_duration=0.2).websocket_connect("/local") as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1001


def test_authorizer_runs_with_identity_source() -> None:
    handler = Lambda()
    calls: list[dict[str, Any]] = []

    def authorizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(event)
        if event["queryStringParameters"]["token"] != "good":
            raise Exception("Unauthorized")
        return {
            "principalId": "p1",
            "policyDocument": {"Statement": [{"Effect": "Allow"}]},
            "context": {"name": "Pat"},
        }

    sources = ("route.request.querystring.token", "route.request.header.X-Tenant")
    client = emulator(handler, authorizer, authorizer=True, identity_sources=sources)
    tenant = {"X-Tenant": "t1"}
    for query, headers in [
        ("", tenant),
        ("?token=", tenant),
        ("?token=good", {}),
        ("?token=bad", tenant),
    ]:
        with (
            pytest.raises(WebSocketDisconnect),
            client.websocket_connect(f"/local{query}", headers=headers),
        ):
            pass
    # A source missing or empty, no invocation: API Gateway answers 401 itself.
    assert len(calls) == 1
    with client.websocket_connect("/local?token=good", headers=tenant):
        pass
    assert handler.events[0]["requestContext"]["authorizer"] == {"principalId": "p1", "name": "Pat"}
    assert calls[-1]["methodArn"].endswith("/local/$connect")


def test_behind_serverless_ymls_authorizer_only_the_query_token_gets_in() -> None:
    """`--authorizer` puts serverless.yml's authorizer in front, with its identity sources:
    a header, a cookie or the subprotocol pair is refused with 401, never reaching it."""
    calls: list[dict[str, Any]] = []

    def authorizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(event)
        return {"principalId": "p1", "policyDocument": {"Statement": [{"Effect": "Allow"}]}}

    sources = authorizer_identity_sources()
    client = emulator(Lambda(), authorizer, authorizer=True, identity_sources=sources)
    for headers, subprotocols in [
        ({"Authorization": "Bearer good"}, []),
        ({"Cookie": "session=good"}, []),
        ({}, ["bearer", "good"]),
    ]:
        with (
            pytest.raises(WebSocketDisconnect),
            client.websocket_connect("/local", headers=headers, subprotocols=subprotocols),
        ):
            pass
    assert calls == []
    with client.websocket_connect("/local?token=good"):
        pass
    assert len(calls) == 1


def test_handler_crash_sends_api_gateways_error_frame() -> None:
    def crash(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event["requestContext"]["routeKey"] == "$default":
            raise RuntimeError("bug")
        return {"statusCode": 200}

    app = Emulator(
        EmulatorConfig(),
        {"$connect": crash, "$default": crash, "$disconnect": crash},
        None,
        {},
        str,
    ).app()
    with TestClient(app).websocket_connect("/local") as ws:
        ws.send_text("x")
        assert json.loads(ws.receive_text())["message"] == "Internal server error"


def test_the_invoke_api_answers_only_at_this_runs_secret_path() -> None:
    """The Invoke API shares the WebSocket API's port, which a web page in the developer's
    browser (or the LAN, with --host 0.0.0.0) can reach: only a caller told this run's path,
    the handlers, may invoke."""
    invoked: list[Any] = []

    def welcome(event: Any, context: Any) -> dict[str, Any]:
        invoked.append(event)
        return {"statusCode": 200}

    config, another_run = EmulatorConfig(), EmulatorConfig()
    assert config.lambda_path != another_run.lambda_path
    app = Emulator(config, {"$default": Lambda()}, None, {"welcome": welcome}, str).app()
    client = TestClient(app)
    for prefix in ("", another_run.lambda_path):
        path = f"{prefix}/2015-03-31/functions/welcome/invocations"
        for kind in ("Event", "RequestResponse"):
            refused = client.post(
                path, json={"connectionId": "c"}, headers={"X-Amz-Invocation-Type": kind}
            )
            assert refused.status_code == 404
    assert invoked == []
    path = f"{config.lambda_path}/2015-03-31/functions/welcome/invocations"
    assert client.post(path, json={"connectionId": "c"}).json() == {"statusCode": 200}
    assert invoked == [{"connectionId": "c"}]
    assert client.post(path, content=b"{not json").status_code == 400
