"""REST on both transports: history reads and server-side publishing, behind the same auth."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.clients import recv, until
from tests.contract.conftest import Transport


def call(
    transport: Transport,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = "svc-token",
    cookie: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"session={cookie}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        transport.server.http + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


async def test_publish_reaches_the_room_like_a_chat_message(transport: Transport) -> None:
    async with (
        transport.connect("rest-room", token="viewer", format="json") as viewer,
        transport.connect("rest-room", token="reader") as reader,
    ):
        await until(viewer, "welcome")
        status, body = call(transport, "POST", "/rooms/rest-room/messages", {"text": "deploy done"})
        assert status == 201
        assert (body["type"], body["text"], body["room"]) == ("message", "deploy done", "rest-room")
        assert body["user"]["name"].startswith("user-") and "svc-token" not in json.dumps(body)
        assert await until(viewer, "message") == body
        assert await recv(reader) == f"{body['user']['name']}: deploy done"


async def test_retried_publish_is_stored_and_delivered_once(transport: Transport) -> None:
    async with transport.connect("rest-retry", token="viewer", format="json") as viewer:
        await until(viewer, "welcome")
        first = call(
            transport,
            "POST",
            "/rooms/rest-retry/messages",
            {"text": "once", "client_msg_id": "job-42"},
        )
        again = call(
            transport,
            "POST",
            "/rooms/rest-retry/messages",
            {"text": "once", "client_msg_id": "job-42"},
        )
        assert (first[0], again[0]) == (201, 200) and first[1] == again[1]
        call(transport, "POST", "/rooms/rest-retry/messages", {"text": "marker"})
        texts = [(await until(viewer, "message"))["text"] for _ in range(2)]
        assert texts == ["once", "marker"]


def test_history_reads_with_since_and_limit(transport: Transport) -> None:
    ids = [
        call(transport, "POST", "/rooms/rest-history/messages", {"text": f"m{i}"})[1]["id"]
        for i in range(5)
    ]
    status, page = call(transport, "GET", f"/rooms/rest-history/messages?since={ids[1]}&limit=2")
    assert status == 200
    assert [m["text"] for m in page["messages"]] == ["m2", "m3"]
    assert page["latest_id"] == ids[-1]
    _, cookie_page = call(
        transport, "GET", "/rooms/rest-history/messages", token=None, cookie="browser-session"
    )
    assert [m["id"] for m in cookie_page["messages"]] == ids


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/rooms/r/messages", None, 401),
        ("POST", "/rooms/r/messages", {"text": "x"}, 401),
        ("GET", "/rooms/r/messages?token=in-the-url", None, 401),  # never a query token
    ],
)
def test_unauthenticated_calls_are_rejected(
    transport: Transport, method: str, path: str, body: Any, status: int
) -> None:
    assert call(transport, method, path, body, token=None)[0] == status


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/rooms/" + "r" * 200 + "/messages", {"text": "x"}, 400),
        ("/rooms/r/messages", {"text": ""}, 422),
        ("/rooms/r/messages", {"text": "   "}, 422),
        ("/rooms/r/messages", {"text": 5}, 422),
        ("/rooms/r/messages", {"nope": 1}, 422),
        ("/rooms/r/messages", {"text": "x" * (32 * 1024 + 1)}, 413),
    ],
)
def test_bad_publishes_are_refused(transport: Transport, path: str, body: Any, status: int) -> None:
    assert call(transport, "POST", path, body)[0] == status


@pytest.mark.parametrize(
    "body",
    ['{"text": "x\\ud800y"}', '{"text": "ok", "client_msg_id": "\\udfff"}'],
    ids=["text", "client_msg_id"],
)
def test_publish_refuses_a_lone_surrogate_with_422(transport: Transport, body: str) -> None:
    request = urllib.request.Request(
        transport.server.http + "/rooms/rest-surrogate/messages",
        data=body.encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer svc-token"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 422
    assert call(transport, "GET", "/rooms/rest-surrogate/messages")[1]["messages"] == []
