"""A stopping `wschat serve` (SIGTERM) closes each socket with 1012 after what was queued for
it, within WSCHAT_SHUTDOWN_TIMEOUT, and exits."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.clients import recv, until
from tests.support.servers import Server

TOTAL, TEXT = 200, "z" * 30_000  # ~6 MB: far more than loopback's socket buffers hold


@pytest.mark.timeout(90)
async def test_sigterm_flushes_what_was_queued_then_closes_with_1012(start_server: Any) -> None:
    server: Server = start_server(
        WSCHAT_RATE_PER_SECOND="100000",
        WSCHAT_RATE_BURST="100000",
        WSCHAT_SEND_QUEUE_FRAMES="1000",
        WSCHAT_SHUTDOWN_TIMEOUT="20",
    )
    # A reader that takes nothing until the server is stopping: its frames queue up.
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    url = server.ws("/items/drain/ws?token={}")
    async with (
        websockets.connect(
            url.format("reader") + "&format=json", sock=sock, max_queue=4, ping_interval=None
        ) as reader,
        websockets.connect(url.format("sender")) as sender,
    ):
        for i in range(TOTAL):
            await sender.send(f"{i}:{TEXT}")
            for _ in range(2):  # the seed's echo, read in step
                await recv(sender)
        server.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        await asyncio.sleep(0.5)  # the server is stopping before the reader takes anything
        texts: list[str] = []
        with pytest.raises(ConnectionClosed) as closed:
            await until(reader, "welcome")
            while True:
                frame = json.loads(await asyncio.wait_for(reader.recv(), 20))
                if frame["type"] == "message":
                    texts.append(frame["text"])
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert [t.split(":", 1)[0] for t in texts] == [str(i) for i in range(TOTAL)]
    server.process.wait(25)
    assert time.monotonic() - stopped < 25
