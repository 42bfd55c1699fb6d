"""Client-side helpers for tests that talk to a real server with the `websockets` client.
Every wait has a timeout; nothing sleeps and hopes."""

from __future__ import annotations

import asyncio
import json
import socket
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


class ResumePoint:
    """A JSON client's record of what it has, kept by the resume rule (docs/protocol.md):
    `resume` is the highest id such that every id up to it was received or is gone for good
    (expired). Reconnect with `since=resume`; when a reply ends below the room's `latest_id`,
    ask for `history` since `resume`."""

    def __init__(self, since: int = 0) -> None:
        self.resume = since
        self.texts: dict[int, str] = {}
        self.repeats = 0
        self._continuing = False  # the last frame said `more: true`

    def take(self, frame: dict[str, Any]) -> bool:
        """Record a frame; True when it ended a reply below the room's latest id, i.e. the
        client should now ask for `history` since `resume`."""
        kind = frame["type"]
        if kind == "message":
            self._record([frame])
            return False
        if kind not in ("welcome", "history"):
            return False
        messages = frame["history"] if kind == "welcome" else frame["messages"]
        if not self._continuing:  # a reply starts: ids between `resume` and it are gone
            if messages:
                self.resume = max(self.resume, messages[0]["id"] - 1)
            elif not frame.get("more"):
                self.resume = max(self.resume, frame["latest_id"])
        self._record(messages)
        self._continuing = bool(frame.get("more"))
        return not self._continuing and self.resume < frame["latest_id"]

    def _record(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if message["id"] in self.texts:
                self.repeats += 1
            self.texts[message["id"]] = message["text"]
        while self.resume + 1 in self.texts:
            self.resume += 1


def answer_to(base_url: str, head: list[str], body: bytes = b"") -> int | None:
    """Send a request's `head` lines (and `body`, perhaps less than the head announces) on a
    raw socket to `base_url` (http://host:port); the status the server answers with, or None
    when it still waits for more after 5 s."""
    host, port = base_url.removeprefix("http://").split(":")
    lines = [*head, f"Host: {host}", "Content-Type: application/json", "", ""]
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall("\r\n".join(lines).encode() + body)
        reply = b""
        try:
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                reply += chunk
        except TimeoutError:
            return None
    return int(reply.split()[1])
