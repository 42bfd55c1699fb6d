"""What only the uvicorn transport can promise; the shared behaviour is in tests/contract/."""

from __future__ import annotations

import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.clients import recv_json, until
from tests.servers import Server


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
