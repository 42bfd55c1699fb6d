"""The HTTP function (Mangum and the FastAPI app) under moto, driven by HTTP API events:
API Gateway hands it the whole body, so every refusal must come from what the request says,
before the body is parsed."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from handler.aws import http
from tests.support.aws import event, reset_caches

pytestmark = pytest.mark.usefixtures("aws")


@pytest.fixture(autouse=True)
def event_loop() -> Iterator[None]:
    """Mangum runs the app on the thread's current event loop, which on Lambda lives as long
    as the container; each test here gets its own, closed after it."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def post(body: str | bytes, token: str | None = "svc", room: str = "lobby") -> dict[str, Any]:
    request = event("http", rawPath=f"/rooms/{room}/messages")
    request["requestContext"]["http"]["path"] = request["rawPath"]
    if token is not None:
        request["headers"]["authorization"] = f"Bearer {token}"
    data = body.encode() if isinstance(body, str) else body
    request["headers"]["content-length"] = str(len(data))
    request["body"], request["isBase64Encoded"] = base64.b64encode(data).decode(), True
    response: dict[str, Any] = http.handler(request, None)
    return response


def history(room: str = "lobby") -> list[str]:
    request = event("http", rawPath=f"/rooms/{room}/messages", body=None)
    request["requestContext"]["http"].update(method="GET", path=request["rawPath"])
    request["headers"]["authorization"] = "Bearer svc"
    response = http.handler(request, None)
    assert response["statusCode"] == 200
    return [m["text"] for m in json.loads(response["body"])["messages"]]


def test_a_publish_is_stored() -> None:
    response = post('{"text": "deploy done"}')
    assert response["statusCode"] == 201
    assert json.loads(response["body"])["text"] == "deploy done"
    assert history() == ["deploy done"]


def test_no_credential_is_401_whatever_the_body() -> None:
    # 6 MB of `[],[],...`: before the fix it was parsed (and refused as bad JSON) first.
    response = post("[]," * 2_000_000, token=None)
    assert response["statusCode"] == 401
    assert response["headers"]["www-authenticate"] == "Bearer"


def test_a_body_over_the_largest_publish_is_413() -> None:
    from handler.web.rest import largest_publish_body

    body = b'{"text": "padded"}'
    limit = largest_publish_body(32 * 1024)
    assert post(body.ljust(limit))["statusCode"] == 201
    assert post(body.ljust(limit + 1))["statusCode"] == 413
    assert history() == ["padded"]


def test_json_nesting_is_capped() -> None:
    from handler.web.rest import MAX_BODY_DEPTH

    inner = "[" * MAX_BODY_DEPTH + "]" * MAX_BODY_DEPTH  # the object is one level more
    response = post(f'{{"text": "too deep", "extra": {inner}}}')
    assert response["statusCode"] == 422
    assert "nested" in response["body"]
    assert history() == []


def test_publishes_are_rate_limited_per_principal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_RATE_PER_SECOND", "0.05")
    monkeypatch.setenv("WSCHAT_RATE_BURST", "2")
    reset_caches()
    assert [post(f'{{"text": "m{i}"}}')["statusCode"] for i in range(2)] == [201, 201]
    refused = post('{"text": "one too many"}')
    assert refused["statusCode"] == 429
    assert 1 <= int(refused["headers"]["retry-after"]) <= 20
    assert post('{"text": "another principal"}', token="other")["statusCode"] == 201
    assert history() == ["m0", "m1", "another principal"]
