"""REST on both transports: history reads and server-side publishing, behind the same auth."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.contract.conftest import Transport
from tests.support.clients import answer_to, recv, until


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


# --- hostile bodies: refused by what the request says, before the body is read ----------

HUGE = 32 * 1024 * 1024


@pytest.mark.parametrize(
    "credential",
    [[], ["Authorization: Bearer"], ["Cookie: other=1"]],
    ids=["none", "empty-bearer", "no-session-cookie"],
)
def test_a_request_without_a_credential_is_refused_before_its_body(
    transport: Transport, credential: list[str]
) -> None:
    head = ["POST /rooms/unread/messages HTTP/1.1", *credential, f"Content-Length: {HUGE}"]
    assert answer_to(transport.server.http, head) == 401


@pytest.mark.parametrize(
    "framing",
    [[f"Content-Length: {HUGE}"], ["Transfer-Encoding: chunked"]],
    ids=["content-length", "chunked"],
)
def test_a_body_over_the_largest_publish_is_refused_with_413_unread(
    transport: Transport, framing: list[str]
) -> None:
    from handler.web.rest import largest_publish_body

    head = ["POST /rooms/oversize/messages HTTP/1.1", "Authorization: Bearer big", *framing]
    # Chunked: one byte over, with no last chunk: the answer must not wait for the end.
    over = largest_publish_body(32 * 1024) + 1
    body = f"{over:x}\r\n".encode() + b" " * over + b"\r\n" if framing[0][0] == "T" else b""
    assert answer_to(transport.server.http, head, body) == 413
    assert call(transport, "GET", "/rooms/oversize/messages")[1]["messages"] == []


def test_the_largest_valid_publish_is_taken_one_byte_more_is_413(transport: Transport) -> None:
    from handler.web.rest import largest_publish_body

    limit = largest_publish_body(32 * 1024)
    # Every byte of a full text escaped (no escape is longer per UTF-8 byte), and a full
    # client_msg_id of characters each escaped as a surrogate pair.
    text = "\\u0041" * (32 * 1024)
    client_msg_id = "\\ud83d\\ude00" * 128
    body = f'{{"text": "{text}", "client_msg_id": "{client_msg_id}"}}'.encode()
    assert len(body) <= limit
    status, stored = post_raw(transport, "/rooms/largest/messages", body.ljust(limit))
    assert status == 201 and stored["text"] == "A" * 32 * 1024
    assert stored["client_msg_id"] == "\U0001f600" * 128
    assert post_raw(transport, "/rooms/largest/messages", body.ljust(limit + 1))[0] == 413
    assert len(call(transport, "GET", "/rooms/largest/messages")[1]["messages"]) == 1


def test_json_nesting_is_capped(transport: Transport) -> None:
    from handler.web.rest import MAX_BODY_DEPTH

    def nested(depth: int) -> bytes:  # the object itself is one level
        inner = "[" * (depth - 1) + "]" * (depth - 1)
        return f'{{"text": "nested {depth}", "extra": {inner}}}'.encode()

    assert post_raw(transport, "/rooms/nested/messages", nested(MAX_BODY_DEPTH))[0] == 201
    status, refused = post_raw(transport, "/rooms/nested/messages", nested(MAX_BODY_DEPTH + 1))
    assert status == 422 and "nested" in json.dumps(refused)
    # Brackets inside strings are text, not nesting, escaped quotes and backslashes or not.
    deep_text = {"text": 'a "quote", a \\ and \\"' + "[" * 1000 + "{" * 1000}
    assert call(transport, "POST", "/rooms/nested/messages", deep_text)[0] == 201
    texts = [m["text"] for m in call(transport, "GET", "/rooms/nested/messages")[1]["messages"]]
    assert texts == [f"nested {MAX_BODY_DEPTH}", deep_text["text"]]


def post_raw(transport: Transport, path: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        transport.server.http + path,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer big"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


# --- the publish rate ---------------------------------------------------------------------


async def test_rest_publishes_are_rate_limited_per_principal(
    start_transport: Callable[..., Transport],
) -> None:
    transport = start_transport(WSCHAT_RATE_PER_SECOND="0.05", WSCHAT_RATE_BURST="3")
    path = "/rooms/rate/messages"
    statuses = [call(transport, "POST", path, {"text": f"m{i}"}, token="bot")[0] for i in range(3)]
    assert statuses == [201, 201, 201]
    request = urllib.request.Request(
        transport.server.http + path,
        data=b'{"text": "one too many"}',
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer bot"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 429
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 20  # a token comes every 20 s
    # Another principal has its own budget; the principal's sockets have theirs.
    assert call(transport, "POST", path, {"text": "other"}, token="someone-else")[0] == 201
    async with transport.connect("rate", token="bot", format="json") as socket_of_bot:
        await until(socket_of_bot, "welcome")
        await socket_of_bot.send(json.dumps({"action": "sendmessage", "text": "by socket"}))
        assert (await until(socket_of_bot, "message"))["text"] == "by socket"
    texts = [m["text"] for m in call(transport, "GET", path)[1]["messages"]]
    assert texts == ["m0", "m1", "m2", "other", "by socket"]
