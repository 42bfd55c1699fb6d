"""The Python client (handler/client/) against each topology: what the JavaScript client's
test checks (tests/contract/test_js_client.py), from asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from handler.client import Room, connect
from tests.contract.conftest import Transport
from tests.contract.test_rest import call

COUNT = 60
FAST: dict[str, Any] = {"min_delay": 0.05, "max_delay": 0.5}


async def until(what: str, check: Callable[[], bool], seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


def cut(room: Room) -> None:
    """The link drops without a close frame, as a network does."""
    if room._ws is not None:
        room._ws.transport.abort()


async def collect(room: Room, into: dict[str, list[Any]]) -> None:
    async for event in room:
        into.setdefault(event["type"], []).append(event)


async def test_the_python_client_loses_nothing_and_repeats_nothing(transport: Transport) -> None:
    servers = (transport.server, *transport.peers)
    base = "/local" if transport.name == "emulator" else ""
    room_name = f"py-{transport.name}"
    urls = [server.ws(base) for server in servers]
    seen: dict[str, dict[str, list[Any]]] = {"alice": {}, "bob": {}}
    async with (
        connect(urls[0], room_name, token="alice", **FAST) as alice,
        connect(urls[-1], room_name, token="bob", **FAST) as bob,
    ):
        readers = [
            asyncio.create_task(collect(r, seen[n])) for n, r in (("alice", alice), ("bob", bob))
        ]
        await alice.wait_open()
        await bob.wait_open()
        sends = []
        for n in range(COUNT):
            sends.append(asyncio.create_task(alice.send(f"m{n}")))
            await asyncio.sleep(0)  # each send queued in turn
            if n == COUNT // 3:
                cut(bob)
            if n == 2 * COUNT // 3:
                cut(alice)
        stored = await asyncio.gather(*sends)
        ids = [m["id"] for m in stored]
        received = {
            name: lambda name=name: [m["id"] for m in seen[name].get("message", [])]
            for name in seen
        }
        await until("bob has them all", lambda: len(received["bob"]()) >= COUNT)
        await until("alice has them all", lambda: len(received["alice"]()) >= COUNT)
        older = await bob.history(before=ids[5], limit=3)
        members = await bob.members()
        await alice.typing()
        await until("bob sees alice typing", lambda: bool(seen["bob"].get("typing")))
    for reader in readers:
        await reader
    assert [m["text"] for m in stored] == [f"m{n}" for n in range(COUNT)]
    assert len(set(ids)) == COUNT and sorted(ids) == ids
    assert received["alice"]() == ids and received["bob"]() == ids
    assert "reconnecting" in [s["state"] for s in seen["bob"]["state"]]
    assert "discontinuity" not in seen["alice"] and "discontinuity" not in seen["bob"]
    _, page = call(transport, "GET", f"/rooms/{room_name}/messages?limit=500")
    assert [m["text"] for m in page["messages"]] == [f"m{n}" for n in range(COUNT)]
    assert [m["id"] for m in older] == ids[2:5]
    assert members["count"] == 2 and len(members["members"]) == 2
    assert [t["user"]["name"] for t in seen["bob"]["typing"]] == [alice.user and alice.user["name"]]


async def test_wschat_chat_sends_lines_and_prints_the_room_safely(transport: Transport) -> None:
    """`wschat chat`: typed lines are stored once each; what others say is printed with
    terminal controls shown as escapes, never acted on."""
    import os
    import sys
    from pathlib import Path

    room_name = f"terminal-{transport.name}"
    url = transport.server.ws("/local" if transport.name == "emulator" else "")
    wschat = str(Path(sys.executable).parent / "wschat")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSCHAT_")}
    async with connect(url, room_name, token="watcher", **FAST) as watcher:
        await watcher.wait_open()
        assert watcher.user is not None
        me = watcher.user["id"]
        process = await asyncio.create_subprocess_exec(
            wschat,
            "chat",
            url,
            room_name,
            "--token",
            "typist",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert process.stdin is not None and process.stdout is not None
        async with asyncio.timeout(20):
            assert (await process.stdout.readline()).decode().strip() == "* connected"
            await watcher.send("\x1b]0;pwned\x07 hi \u202eevil")
            printed = (await process.stdout.readline()).decode()
            assert printed.endswith(": \\u001b]0;pwned\\u0007 hi \\u202eevil\n")
            process.stdin.write(b"one\ntwo\n")
            await process.stdin.drain()
            texts: list[str] = []
            async for event in watcher:
                if event["type"] == "message" and event["user"]["id"] != me:
                    texts.append(event["text"])
                if len(texts) == 2:
                    break
            process.stdin.close()
            assert await process.wait() == 0
    assert texts == ["one", "two"]
