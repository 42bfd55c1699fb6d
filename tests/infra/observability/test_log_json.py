"""`WSCHAT_LOG_FORMAT=json`: every line one JSON object, uvicorn's included, with the
connection's fields where known, on `wschat serve` and in a Lambda invocation; never a
credential."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
import websockets

from infra.observability.log_json import JsonFormatter
from tests.support.servers import Server

SECRET = "sekrit-json-7c1e"


async def test_serve_logs_one_json_object_per_line(start_server: Any) -> None:
    server: Server = start_server(
        WSCHAT_LOG_FORMAT="json",
        WSCHAT_RATE_PER_SECOND="1",
        WSCHAT_RATE_BURST="1",
        WSCHAT_RATE_ABUSE_STRIKES="3",
    )
    server.get("/healthz")
    async with websockets.connect(server.ws(f"/items/loud/ws?token={SECRET}")) as ws:
        for i in range(10):  # a flood: the core logs the 1008 close, inside the socket's work
            await ws.send(f"flood {i}")
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
    await asyncio.sleep(0.3)
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["logger"] == "uvicorn.access" for line in lines)  # uvicorn's lines too
    (flood,) = [line for line in lines if "sustained flood" in line["message"]]
    assert flood["room"] == "loud" and flood["level"] == "WARNING"
    assert flood["connection_id"] and flood["user_id"] != SECRET
    assert SECRET not in server.log()


def test_a_lambda_invocation_logs_its_request_and_connection(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from handler.aws import websocket
    from tests.support.aws import event

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        context = SimpleNamespace(aws_request_id="req-123")
        assert websocket.default(event("message", connectionId="ghost", body="boo"), context) == {
            "statusCode": 200
        }
    finally:
        root.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    closing = [line for line in lines if line["message"].startswith("closing ghost")]
    assert closing and closing[0]["request_id"] == "req-123"
    assert closing[0]["connection_id"] == "ghost"


def test_a_line_break_a_client_sent_stays_inside_its_line() -> None:
    # JSON escapes the C0 controls itself; U+2028/U+2029 and the C1 controls (U+0085 is a
    # line break for str.splitlines()) it would write raw.
    from infra.observability.log_json import log_context

    hostile = "a\u2028b\u2029c\x85d\x1be\nf\u202eg\u2066h"
    record = logging.LogRecord("wschat", logging.INFO, __file__, 1, "said %s", (hostile,), None)
    with log_context(room=hostile):
        line = JsonFormatter().format(record)
    assert line.splitlines() == [line]
    assert not set(line) & set("\u2028\u2029\x85\x1b\n\u202e\u2066")
    entry = json.loads(line)
    assert (entry["message"], entry["room"]) == (f"said {hostile}", hostile)


async def test_a_room_name_cannot_split_a_json_line(start_server: Any) -> None:
    server: Server = start_server(WSCHAT_LOG_FORMAT="json")
    room = "lobby\u2028forged\u2029"
    async with websockets.connect(server.ws(f"/items/{quote(room)}/ws?token=t")) as ws:
        # A refresh request on a text connection is logged, in the room's context.
        await ws.send(json.dumps({"action": "refresh", "token": "t"}))
        await asyncio.wait_for(ws.recv(), 10)
    await asyncio.sleep(0.3)
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert any(line.get("room") == room for line in lines)
