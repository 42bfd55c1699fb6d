"""Client-side helpers for tests that talk to a real server with the `websockets` client.
Every wait has a timeout; nothing sleeps and hopes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

TIMEOUT = 10


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> str:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(frame, str)
    return frame


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(await recv(ws, timeout))
    return body


async def until(ws: ClientConnection, frame_type: str) -> dict[str, Any]:
    """Read JSON frames until one of `frame_type` arrives; return it."""
    while True:
        frame = await recv_json(ws)
        if frame["type"] == frame_type:
            return frame


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes; return the close code it sent (None: no close frame)."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    return closed.value.rcvd.code if closed.value.rcvd else None


def raw_upgrade(target: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    """The bytes of a WebSocket upgrade request for `target`, written exactly as given (no
    percent-encoding), with `extra` header lines (each ending in CRLF)."""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode("latin-1")


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame (masked with a zero key) of up to 125 bytes."""
    assert len(payload) <= 125
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload
