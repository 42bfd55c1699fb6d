"""The chat against a real `wschat serve`, driven by the `websockets` client."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any
from urllib.parse import quote

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import Server

TIMEOUT = 10


async def recv(ws: ClientConnection) -> str:
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(frame, str)
    return frame


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(await recv(ws))
    return body


async def closed_code(ws: ClientConnection) -> int | None:
    """Read until the server closes; return its close code."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    return closed.value.rcvd.code if closed.value.rcvd else None


def connect(server: Server, room: str, token: str, close_timeout: float = 10, **query: str) -> Any:
    params = "&".join(f"{k}={quote(v)}" for k, v in {"token": token, **query}.items())
    uri = server.ws(f"/items/{quote(room, safe='')}/ws?{params}")
    return websockets.connect(uri, close_timeout=close_timeout)


async def test_three_clients_two_rooms(server: Server) -> None:
    async with (
        connect(server, "r1", "alice-token") as alice,
        connect(server, "r1", "bob-token", format="json") as bob,
        connect(server, "r2", "carol-token") as carol,
    ):
        welcome = await recv_json(bob)
        assert welcome["type"] == "welcome" and welcome["room"] == "r1"
        assert welcome["count"] == 2
        bob_name = welcome["user"]["name"]
        assert "bob-token" not in bob_name

        await alice.send("hello r1")
        await recv(alice)
        assert (await recv(alice)) == "Message text was: hello r1, for item ID: r1"
        message = await recv_json(bob)
        assert message["type"] == "message" and message["text"] == "hello r1"
        assert message["room"] == "r1" and message["id"] >= 1
        assert "alice-token" not in json.dumps(message)

        await bob.send(json.dumps({"action": "sendmessage", "text": "hi alice"}))
        assert (await recv(alice)) == f"{bob_name}: hi alice"
        assert (await recv_json(bob))["text"] == "hi alice"

        # carol, in r2, saw none of it: the next thing she gets is her own echo.
        await carol.send("only r2")
        assert (await recv(carol)).startswith("Session cookie or query token value is: carol")


async def test_presence_join_and_leave(server: Server) -> None:
    async with connect(server, "presence", "p1", format="json") as watcher:
        assert (await recv_json(watcher))["count"] == 1
        async with connect(server, "presence", "p2", format="json") as other:
            join = await recv_json(watcher)
            assert join["type"] == "presence" and join["event"] == "join" and join["count"] == 2
            name = (await recv_json(other))["user"]["name"]
            assert join["user"]["name"] == name
        leave = await recv_json(watcher)
        assert leave == {**join, "event": "leave", "count": 1}


async def test_json_subprotocol_selects_the_dialect(server: Server) -> None:
    uri = server.ws("/items/sp/ws?token=t")
    async with websockets.connect(uri, subprotocols=["wschat.json"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "wschat.json"
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send('{"action":"ping"}')
        assert await recv_json(ws) == {"type": "pong"}


async def test_bad_json_keeps_the_connection(server: Server) -> None:
    async with connect(server, "bad", "t", format="json") as ws:
        await recv_json(ws)
        for frame, code in [
            ("{not json", "invalid_json"),
            ('{"action":"sendmessage","text":["x"]}', "bad_request"),
            ('{"action":"fly"}', "unknown_action"),
            ('{"action":"sendmessage","text":""}', "empty_message"),
        ]:
            await ws.send(frame)
            error = await recv_json(ws)
            assert (error["type"], error["code"]) == ("error", code)
        await ws.send(b"\x00binary")
        assert (await recv_json(ws))["code"] == "binary_unsupported"
        await ws.send('{"action":"ping"}')
        assert await recv_json(ws) == {"type": "pong"}


async def test_binary_frame_in_text_dialect(server: Server) -> None:
    async with connect(server, "bin", "t") as ws:
        await ws.send(b"\xff\xfe")
        assert await recv(ws) == "Error: binary frames are not supported; send text"
        await ws.send("still here")
        assert "still here" in [await recv(ws) for _ in range(2)][-1]


async def test_empty_message_is_echoed_not_broadcast(server: Server) -> None:
    async with connect(server, "empty", "a") as a, connect(server, "empty", "b") as b:
        await a.send("")
        assert [await recv(a) for _ in range(2)][-1] == "Message text was: , for item ID: empty"
        await a.send("after")
        [await recv(a) for _ in range(2)]
        assert (await recv(b)).endswith(": after")  # the empty one never arrived


async def test_oversize_frame_closes_1009_and_the_limit_itself_is_fine(server: Server) -> None:
    async with connect(server, "big", "a") as a, connect(server, "big", "b") as b:
        await a.send("x" * (32 * 1024 - 10))
        [await recv(a) for _ in range(2)]
        assert (await recv(b)).endswith("x" * 100)
        await a.send("x" * (32 * 1024 + 1))
        assert await closed_code(a) == 1009
        # b is untouched and can still talk.
        await b.send("still fine")
        assert (await recv(b)).startswith("Session cookie")


async def test_long_room_name_is_refused_and_unicode_room_works(server: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server, "r" * 10_000, "t"):
            pass
    assert refused.value.response.status_code == 403
    async with connect(server, "café ☕ 部屋", "t") as ws:
        await ws.send("bonjour")
        lines = [await recv(ws) for _ in range(2)]
    assert lines[-1] == "Message text was: bonjour, for item ID: café ☕ 部屋"


async def test_flood_is_rate_limited_then_closed_1008_others_unaffected(server: Server) -> None:
    async with (
        connect(server, "flood", "f", format="json") as flooder,
        connect(server, "flood", "calm", format="json") as calm,
    ):
        await recv_json(flooder)
        await recv_json(calm)
        await recv_json(flooder)  # calm's join
        for i in range(300):
            await flooder.send(json.dumps({"action": "sendmessage", "text": f"f{i}"}))
        kinds: list[str] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                kinds.append((await recv_json(flooder)).get("code", "message"))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "rate_limited" in kinds
        delivered = kinds.count("message")
        assert 40 <= delivered < 300  # the burst got through, the flood did not
        seen = 0
        while seen < delivered:
            frame = await recv_json(calm)
            seen += frame["type"] == "message"
        await calm.send('{"action":"ping"}')
        while (await recv_json(calm))["type"] != "pong":
            pass


async def test_slow_consumer_is_closed_1013_and_never_delays_others(
    start_server: Any,
) -> None:
    server = start_server(
        WSCHAT_SEND_QUEUE_FRAMES="32", WSCHAT_RATE_PER_SECOND="100000", WSCHAT_RATE_BURST="100000"
    )
    # A slow client: a tiny receive buffer, and it never calls recv() until the end.
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow_uri = server.ws("/items/slow/ws?token=slow&format=json")
    total = 600
    text = "y" * 16_000  # enough to overrun loopback's socket buffers (MBs) as well
    async with (
        websockets.connect(slow_uri, sock=sock, max_queue=4, ping_interval=None) as slow,
        connect(server, "slow", "fast1", format="json") as fast1,
        connect(server, "slow", "fast2", format="json") as fast2,
        connect(server, "slow", "sender") as sender,
    ):
        for ws in (fast1, fast2):
            while (await recv_json(ws))["type"] != "welcome":
                pass

        async def count_messages(ws: ClientConnection) -> int:
            seen = 0
            while seen < total:
                seen += (await recv_json(ws))["type"] == "message"
            return seen

        counters = [asyncio.create_task(count_messages(ws)) for ws in (fast1, fast2)]
        for i in range(total):
            await sender.send(f"{i}:{text}")
            for _ in range(2):  # the seed's echo, read in step so the sender is never slow
                await recv(sender)
        assert await asyncio.wait_for(asyncio.gather(*counters), 30) == [total, total]

        got = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frame = await asyncio.wait_for(slow.recv(), TIMEOUT)
                got += json.loads(frame)["type"] == "message"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert got < total


async def test_client_killed_mid_broadcast_leaves_the_rest_intact(start_server: Any) -> None:
    server = start_server(WSCHAT_RATE_PER_SECOND="100000", WSCHAT_RATE_BURST="100000")
    total = 400
    async with (
        connect(server, "kill", "victim", close_timeout=0.1, format="json") as victim,
        connect(server, "kill", "keeper", format="json") as keeper,
        connect(server, "kill", "sender", format="json") as sender,
    ):
        for ws in (victim, keeper, sender):
            while (await recv_json(ws))["type"] != "welcome":
                pass

        async def publish() -> None:
            for i in range(total):
                await sender.send(json.dumps({"action": "sendmessage", "text": str(i)}))

        async def drain_own_messages() -> None:
            while True:
                await sender.recv()

        publishing = asyncio.create_task(publish())
        draining = asyncio.create_task(drain_own_messages())
        while (await recv_json(victim)).get("text") != "50":
            pass
        victim.transport.abort()  # vanish without a close frame
        texts: list[str] = []
        while len(texts) < total:
            frame = await recv_json(keeper)
            if frame["type"] == "message":
                texts.append(frame["text"])
        await publishing
        draining.cancel()
        assert texts == [str(i) for i in range(total)]
        health = json.loads(server.get("/healthz"))
        assert health["connections"] in (2, 3)  # the victim is forgotten once its socket closes
