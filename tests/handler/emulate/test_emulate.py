"""`wschat emulate` over a dev loop: its memory stays flat (bench/emulator_soak.py measures
the same at full size, with its speed, against moto as it is)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.support.management_api import running_management_api
from tests.support.servers import Server, running_server

FAST = {"WSCHAT_RATE_PER_SECOND": "100000", "WSCHAT_RATE_BURST": "100000"}


def rss_mb(server: Server) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def welcomed(ws: Any) -> None:
    while json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] != "welcome":
        pass


async def echoed(ws: Any, text: str) -> None:
    await ws.send(json.dumps({"action": "sendmessage", "text": text}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame["type"] == "message" and frame["text"] == text:
            return


@pytest.mark.timeout(240)
async def test_the_emulator_stays_flat_over_a_dev_loop(tmp_path: Path) -> None:
    with running_server(tmp_path, FAST, "emulate") as server:
        await dev_loop(server)


async def dev_loop(server: Server) -> None:
    url = server.ws("/local?room={room}&token={token}&format=json")
    sender = await websockets.connect(url.format(room="loop", token="sender"))
    await welcomed(sender)
    for i in range(30):  # warm-up
        await echoed(sender, f"warm {i}")
    warm = rss_mb(server)
    held = []
    for i in range(120):  # members in the table, ten to a room
        ws = await websockets.connect(url.format(room=f"room-{i % 12}", token=f"m{i}"))
        await welcomed(ws)
        held.append(ws)
    big = "x" * 30_000
    for i in range(300):
        await echoed(sender, f"{i}:{big}" if i % 5 == 0 else f"message {i}")
    grown = rss_mb(server) / warm
    for ws in [*held, sender]:
        await ws.close()
    # moto as it is kept every copy of every item it ever made: 7x here (bench/emulator_soak.py).
    assert grown < 1.5, f"RSS grew {grown:.2f}x over the loop"


async def test_a_room_above_the_inline_size_gets_its_messages_through_the_queue(
    tmp_path: Path,
) -> None:
    # Three members per fan-out job, rooms of more than two through the queue: seven real
    # sockets, text and JSON, and every message reaches each once, through the fanout
    # handler that the emulator feeds from its SQS queue.
    env = {**FAST, "WSCHAT_FANOUT_INLINE_MAX": "2", "WSCHAT_FANOUT_CHUNK": "3"}
    with running_server(tmp_path, env, "emulate") as server:
        url = server.ws("/local?room=big&token={token}{query}")
        members = []
        for i in range(7):
            query = "&format=json" if i % 2 else ""
            ws = await websockets.connect(url.format(token=f"m{i}", query=query))
            if query:
                await welcomed(ws)
            members.append(ws)
        sender = members[1]
        for text in ("one", "two"):
            await sender.send(json.dumps({"action": "sendmessage", "text": text}))
        for i, ws in enumerate(members):
            if i % 2:
                texts: list[str] = []
                while len(texts) < 2:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame["type"] == "message":  # (not a presence frame)
                        texts.append(frame["text"])
                assert texts == ["one", "two"]
            else:
                lines = [str(await asyncio.wait_for(ws.recv(), 30)) for _ in range(2)]
                assert [line.split(": ", 1)[1] for line in lines] == ["one", "two"]
        log = server.log()
        assert "fan-out job(s)" in log
        # The handlers' own calls to the emulator are plumbing, not the developer's requests
        # (uvicorn writes the path percent-encoded: `%40connections`).
        assert "connections/" not in log and "/functions/" not in log
        for ws in members:
            await ws.close()


async def test_an_invoke_from_outside_reaches_no_function(tmp_path: Path) -> None:
    # The attack: an unauthenticated invoke of the welcome function, for a member's
    # connection, naming an endpoint of the attacker's: the room's welcome, history included,
    # would be posted there.
    with (
        running_server(tmp_path, FAST, "emulate") as server,
        running_management_api() as elsewhere,
    ):
        url = server.ws("/local?room=private&token={token}&format=json")
        async with websockets.connect(url.format(token="member")) as member:
            welcome = json.loads(await asyncio.wait_for(member.recv(), 30))
            assert welcome["type"] == "welcome"  # the handlers' own invoke still works
            await echoed(member, "for members only")
            invoke = urllib.request.Request(
                server.http + "/2015-03-31/functions/welcome/invocations",
                data=json.dumps(
                    {"connectionId": welcome["connection_id"], "endpoint": elsewhere.endpoint}
                ).encode(),
                headers={"X-Amz-Invocation-Type": "Event"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(invoke, timeout=10)
            refused.value.close()
            assert refused.value.code == 404
            await member.send(json.dumps({"action": "ping"}))  # a turn for the room to settle
            frame = json.loads(await asyncio.wait_for(member.recv(), 30))
            assert frame["type"] == "pong"  # and no second welcome before it
        assert not elsewhere.attempts


async def test_a_debug_log_never_shows_the_invoke_apis_secret_path(tmp_path: Path) -> None:
    # At debug, uvicorn's access log and botocore's own lines would both show the path that
    # is the Invoke API's only guard.
    with running_server(tmp_path, {**FAST, "WSCHAT_LOG_LEVEL": "debug"}, "emulate") as server:
        url = server.ws("/local?room=debug&token=member&format=json")
        async with websockets.connect(url) as member:
            await welcomed(member)  # the welcome function was invoked
            await echoed(member, "hello")
        log = server.log()
    assert "DEBUG:" in log and "connections/" in log  # the level took; posts are kept
    assert "/functions/" not in log
