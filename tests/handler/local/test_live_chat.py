"""What only the uvicorn transport can promise; the shared behaviour is in tests/contract/."""

from __future__ import annotations

import http.client
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.clients import recv_json, until
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
    # The newest rooms are kept; the least recently used went.
    assert len(_read(server, "room-09999")["messages"]) == 1
    assert _read(server, "room-00000")["messages"] == []


def _read(server: Server, room: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{server.http}/rooms/{room}/messages", headers={"Authorization": "Bearer reader"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body
