"""Per-room rights and in-band token refresh, on both transports (WSCHAT_ROOM_POLICY=claims)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.auth.keys import SECRET
from tests.contract.conftest import Transport, transport_with, transports_for
from tests.support.clients import TIMEOUT, answer_to, recv_json, until

ENV = {
    "WSCHAT_AUTH": "jwt",
    "WSCHAT_JWT_SECRET": SECRET,
    "WSCHAT_JWT_ALGORITHMS": "HS256",
    "WSCHAT_ROOM_POLICY": "claims",
    "WSCHAT_RATE_PER_SECOND": "1000",
    "WSCHAT_RATE_BURST": "1000",
}
RW = ["read", "write"]


def token(sub: str, rooms: dict[str, list[str]], ttl: float = 600, secret: str = SECRET) -> str:
    now = time.time()
    claims = {"sub": sub, "iat": int(now), "exp": now + ttl, "rooms": rooms}
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.fixture(scope="module", params=transports_for(__name__))
def rooms(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Transport]:
    with transport_with(request, tmp_path_factory, ENV) as transport:
        yield transport


def send(ws: Any, **frame: object) -> Any:
    return ws.send(json.dumps(frame))


async def test_no_read_right_is_refused_with_403(rooms: Transport) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with rooms.connect("private", token=token("eve", {"public-*": RW})):
            pass
    assert refused.value.response.status_code == 403


async def test_a_reader_receives_but_cannot_post_a_writer_does_both(rooms: Transport) -> None:
    grants = {"support-*": RW, "support-archive-*": ["read"]}  # the archive is read-only
    async with (
        rooms.connect("support-1", token=token("alice", grants), format="json") as writer,
        rooms.connect(
            "support-1", token=token("bob", {"support-1": ["read"]}), format="json"
        ) as reader,
        rooms.connect("support-archive-1", token=token("alice", grants), format="json") as archived,
    ):
        for ws in (writer, reader, archived):
            await until(ws, "welcome")
        await send(reader, action="sendmessage", text="may I?")
        assert (await until(reader, "error"))["code"] == "forbidden"
        await send(writer, action="sendmessage", text="yes you may read")
        assert (await until(reader, "message"))["text"] == "yes you may read"
        await send(archived, action="sendmessage", text="into the archive")
        assert (await until(archived, "error"))["code"] == "forbidden"
        await send(reader, action="typing")  # typing needs `write` too
        assert (await until(reader, "error"))["code"] == "forbidden"
        await send(reader, action="history", since=0)
        history = await until(reader, "history")
        assert [m["text"] for m in history["messages"]] == ["yes you may read"]


def rest(transport: Transport, method: str, room: str, bearer: str, what: str = "messages") -> int:
    body = json.dumps({"text": "over REST"}).encode() if method == "POST" else None
    request = urllib.request.Request(
        f"{transport.server.http}/rooms/{room}/{what}",
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def test_rest_needs_read_to_read_and_write_to_post(rooms: Transport) -> None:
    reader = token("rita", {"rest-room": ["read"]})
    writer = token("will", {"rest-room": ["write"]})
    assert rest(rooms, "GET", "rest-room", reader) == 200
    assert rest(rooms, "POST", "rest-room", reader) == 403
    assert rest(rooms, "POST", "rest-room", writer) == 201
    assert rest(rooms, "GET", "rest-room", writer) == 403
    assert rest(rooms, "GET", "rest-room", reader, "members") == 200
    assert rest(rooms, "GET", "rest-room", writer, "members") == 403


def test_a_post_without_write_is_refused_before_its_body(rooms: Transport) -> None:
    reader = token("rita", {"rest-room": ["read"]})
    head = [
        "POST /rooms/rest-room/messages HTTP/1.1",
        f"Authorization: Bearer {reader}",
        f"Content-Length: {32 * 1024 * 1024}",
    ]
    assert answer_to(rooms.server.http, head) == 403


async def test_a_refreshed_connection_outlives_its_first_token(rooms: Transport) -> None:
    short = token("carol", {"refresh": RW}, ttl=2)
    async with rooms.connect("refresh", token=short, format="json") as ws:
        await until(ws, "welcome")
        longer = token("carol", {"refresh": RW}, ttl=600)
        await send(ws, action="refresh", token=longer)
        refreshed = await until(ws, "refreshed")
        assert refreshed["expires_at"] > time.time() + 500
        await asyncio.sleep(3)  # past the first token's expiry
        await send(ws, action="sendmessage", text="still here")
        assert (await until(ws, "message"))["text"] == "still here"


@pytest.mark.parametrize(
    "new_token",
    [
        lambda: token("mallory", {"refused": RW}),  # another subject
        lambda: token("dave", {"refused": RW}, ttl=-10),  # expired
        lambda: token("dave", {"refused": RW}, secret="not-the-secret-" * 3),  # forged
    ],
    ids=["another subject", "expired", "forged"],
)
async def test_a_refused_refresh_keeps_the_connection(rooms: Transport, new_token: Any) -> None:
    async with rooms.connect("refused", token=token("dave", {"refused": RW}), format="json") as ws:
        await until(ws, "welcome")
        await send(ws, action="refresh", token=new_token())
        assert (await until(ws, "error"))["code"] == "refresh_failed"
        await send(ws, action="ping")
        assert (await until(ws, "pong")) == {"type": "pong"}


async def test_a_refresh_that_loses_the_room_closes_the_connection(rooms: Transport) -> None:
    async with rooms.connect("lost", token=token("erin", {"lost": RW}), format="json") as ws:
        await until(ws, "welcome")
        await send(ws, action="refresh", token=token("erin", {"elsewhere": RW}))
        assert (await until(ws, "error"))["code"] == "forbidden"
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv_json(ws, TIMEOUT)
        if rooms.name != "emulator":  # API Gateway closes with a code of its own
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_a_refresh_to_a_shorter_token_expires_at_its_exp(rooms: Transport) -> None:
    """The connection runs out at the current token's `exp`, sooner than the first one's:
    it is told and closed, and gets nothing the room says after that."""
    grants = {"shorter": RW}
    async with (
        rooms.connect("shorter", token=token("frank", grants), format="json") as ws,
        rooms.connect("shorter", token=token("grace", grants), format="json") as other,
    ):
        await until(ws, "welcome")
        await until(other, "welcome")
        await send(ws, action="refresh", token=token("frank", grants, ttl=1.5))
        await until(ws, "refreshed")
        await asyncio.sleep(2)  # past the new token's expiry, long before the first one's
        await send(other, action="sendmessage", text="after the expiry")
        assert (await until(other, "message"))["text"] == "after the expiry"
        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(await recv_json(ws, TIMEOUT))
        assert [f.get("code", f["type"]) for f in frames if f["type"] != "presence"] == [
            "token_expired"
        ]
        if rooms.name != "emulator":  # API Gateway closes with a code of its own
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
