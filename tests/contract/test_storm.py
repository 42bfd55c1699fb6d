"""A reconnect storm: clients joining one room at once each end with the room's count, as the
Python and the JavaScript clients keep it (issue 30: "a member present through the storm ends
with the right count"). On Lambda each join is announced by its own `$connect`, concurrently,
so a member gets the joins' `presence` frames in any order (docs/welcome-seam.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from handler.client import Room, connect
from tests.contract.conftest import Transport
from tests.support.servers import ROOT
from tests.support.tools import node_with_ws

# Python clients, and as many JavaScript ones, all in one room. Before presence was numbered,
# 30 joins on the emulator left some member with a wrong count in 5 runs of 6 (20: 2 of 6).
PER_CLIENT = 15
QUIET = 1.0  # seconds without a presence frame: the storm is over
FAST: dict[str, Any] = {"min_delay": 0.05, "max_delay": 0.5}


@pytest.fixture(scope="module")
def node() -> str:
    return node_with_ws()


class JsStorm:
    """tests/js/storm_room.mjs: PER_CLIENT JavaScript clients join a room at once, in Node."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls, node: str, urls: list[str], room: str) -> JsStorm:
        config = {"urls": urls, "room": room, "clients": PER_CLIENT, "quietMs": int(QUIET * 1000)}
        return cls(
            await asyncio.create_subprocess_exec(
                node,
                "tests/js/storm_room.mjs",
                json.dumps(config),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        )

    async def opened(self) -> None:
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        assert line == b"open\n", line + await self._failure()

    async def counts(self) -> list[int | None]:
        """Once the room has been quiet for QUIET seconds, each client's `count`."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"report\n")
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        assert line, await self._failure()
        counts: list[int | None] = json.loads(line)["counts"]
        await self._process.wait()
        return counts

    async def _failure(self) -> bytes:
        assert self._process.stderr is not None
        return await self._process.stderr.read()

    def kill(self) -> None:
        if self._process.returncode is None:
            self._process.kill()


async def quiet(heard: list[int]) -> None:
    """Until no presence frame has come for QUIET seconds."""
    while True:
        before = heard[0]
        await asyncio.sleep(QUIET)
        if heard[0] == before:
            return


async def test_every_client_ends_a_join_storm_with_the_room_s_count(
    node: str, transport: Transport
) -> None:
    servers = (transport.server, *transport.peers)
    base = "/local" if transport.name == "emulator" else ""
    urls = [server.ws(base) for server in servers]
    room_name = f"storm-{transport.name}"
    heard = [0]

    async def listen(room: Room) -> None:
        async for event in room:
            if event["type"] == "presence":
                heard[0] += 1

    js = await JsStorm.start(node, urls, room_name)
    rooms = [
        connect(urls[n % len(urls)], room_name, token=f"py{n}", **FAST) for n in range(PER_CLIENT)
    ]
    for room in rooms:
        room.start()  # all at once, as the JavaScript clients start
    listeners = [asyncio.create_task(listen(room)) for room in rooms]
    try:
        async with asyncio.timeout(45):
            await asyncio.gather(js.opened(), *(room.wait_open() for room in rooms))
            await quiet(heard)
            py = [room.count for room in rooms]
            js_counts = await js.counts()
    finally:
        js.kill()
        for room in rooms:
            await room.close()
        for listener in listeners:
            await listener
    everyone = 2 * PER_CLIENT
    assert {"python": py, "javascript": js_counts} == {
        "python": [everyone] * PER_CLIENT,
        "javascript": [everyone] * PER_CLIENT,
    }
