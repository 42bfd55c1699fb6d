"""What only the uvicorn transport can promise; the shared behaviour is in tests/contract/."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.clients import raw_upgrade, recv_json, until
from tests.support.servers import Server


async def test_flood_abuse_closes_with_1008(server: Server) -> None:
    # API Gateway cannot send a close code of ours; uvicorn can.
    async with websockets.connect(server.ws("/items/flood/ws?token=f&format=json")) as flooder:
        await until(flooder, "welcome")
        for i in range(300):
            await flooder.send(json.dumps({"action": "sendmessage", "text": f"f{i}"}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv_json(flooder)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "rate limit abuse")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _publish_into_rooms(port: int, rooms: range, text: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"text": text})
    headers = {"Content-Type": "application/json", "Authorization": "Bearer filler"}
    for room in rooms:
        # Names of one length: rooms holding the same, to the byte, go least recently used first.
        connection.request("POST", f"/rooms/room-{room:05d}/messages", body, headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 201
    connection.close()


@pytest.mark.timeout(120)
def test_ten_thousand_rooms_stay_within_the_history_budget(start_server: Any) -> None:
    budget = 8 * 1024 * 1024
    server: Server = start_server(
        WSCHAT_HISTORY_MAX_BYTES=str(budget),
        WSCHAT_RATE_PER_SECOND="100000",  # one credential fills the rooms, as fast as it can
        WSCHAT_RATE_BURST="100000",
    )
    text = "x" * 8000  # 10,000 rooms of it: ten times the budget
    _publish_into_rooms(server.port, range(200), text)  # warm up
    before = _rss_bytes(server.process.pid)
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda k: _publish_into_rooms(server.port, range(k, 10_000, 4), text), range(4)
            )
        )
    grown = _rss_bytes(server.process.pid) - before
    assert grown < 1.5 * budget, (
        f"RSS grew {grown / 1e6:.1f} MB with a {budget / 1e6:.1f} MB budget"
    )
    # The newest room is kept; the least recently used went. (The room published last: the
    # four threads' last rooms can finish in any order, a thousand rooms apart on a busy
    # machine, which is the budget's whole reach.)
    _publish_into_rooms(server.port, range(10_000, 10_001), text)
    assert len(_read(server, "room-10000")["messages"]) == 1
    assert _read(server, "room-00000")["messages"] == []


def _read(server: Server, room: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{server.http}/rooms/{room}/messages", headers={"Authorization": "Bearer reader"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


async def _first_bytes_of_frames(reader: asyncio.StreamReader, count: int) -> list[int]:
    """The first byte (FIN, RSV1 to 3, opcode) of each of the next `count` server frames."""
    firsts = []
    for _ in range(count):
        first, size = await reader.readexactly(2)
        size &= 0x7F
        if size >= 126:
            size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8))
        await reader.readexactly(size)
        firsts.append(first)
    return firsts


async def test_deflate_and_plain_sockets_in_one_room_get_the_same_frames(start_server: Any) -> None:
    """A deflated socket cannot share a broadcast's encoded frame; it keeps the ASGI send,
    and gets its messages compressed, beside plain sockets that take the frame as it is."""
    server = start_server(WSCHAT_WS_PER_MESSAGE_DEFLATE="true")
    room = server.ws("/items/mixed/ws?format=json&token=")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        raw_upgrade(
            "/items/mixed/ws?token=raw", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"
        )
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" in head
    async with (
        websockets.connect(room + "deflated", compression="deflate") as deflated,
        websockets.connect(room + "plain", compression=None) as plain,
        websockets.connect(server.ws("/items/mixed/ws?token=sender")) as sender,
    ):
        assert [e.name for e in deflated.protocol.extensions] == ["permessage-deflate"]
        assert plain.protocol.extensions == []
        for ws in (deflated, plain):
            await until(ws, "welcome")
        texts = ["é" * 62, "x" * 126, "y" * 20_000, "\u2028 \U0001f600"]
        for text in texts:
            await sender.send(text)
        for ws in (deflated, plain):
            got: list[str] = []
            while len(got) < len(texts):
                frame = await recv_json(ws)
                if frame["type"] == "message":
                    got.append(frame["text"])
            assert got == texts
        # The raw text-dialect socket: each of its messages is one compressed text frame
        # (FIN, RSV1, opcode 1).
        firsts = await asyncio.wait_for(_first_bytes_of_frames(reader, len(texts)), 10)
        assert firsts == [0xC1] * len(texts)
    writer.close()


async def test_a_reader_that_stalls_then_reads_gets_every_frame_in_order(
    start_server: Any,
) -> None:
    """~7 MB for a client that is not reading: more than loopback's socket buffers (up to
    4 MB) take, so its transport pauses and the rest queues (under the queue's bound); once
    it reads, it gets every message, in order, and its socket stays open."""
    server = start_server(
        WSCHAT_SEND_QUEUE_FRAMES="1000", WSCHAT_RATE_PER_SECOND="100000", WSCHAT_RATE_BURST="100000"
    )
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    total, text = 240, "z" * 30_000
    url = server.ws("/items/stall/ws?format=json&token=")
    async with (
        websockets.connect(url + "slow", sock=sock, max_queue=4, ping_interval=None) as slow,
        websockets.connect(server.ws("/items/stall/ws?token=sender")) as sender,
    ):
        await until(slow, "welcome")
        for i in range(total):
            await sender.send(f"{i}:{text}")
            for _ in range(2):  # the echo, read in step so the sender is never the slow one
                await sender.recv()
        ids: list[int] = []
        while len(ids) < total:
            frame = await recv_json(slow)
            if frame["type"] == "message":
                assert frame["text"] == f"{len(ids)}:{text}"
                ids.append(frame["id"])
        assert ids == list(range(ids[0], ids[0] + total))
        await slow.ping()  # still open
