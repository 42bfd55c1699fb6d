"""`wschat chat URL ROOM [--token T]`: join a room from a terminal on the Python client.
Lines typed are sent; messages, presence and the connection's state are printed; the link
is kept as the client keeps it (reconnects, resume, the outbox). End of input leaves."""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any, TextIO

from handler.client.room import ClientError, Room, connect

# What a terminal would act on rather than show: C0 and C1 controls (an escape sequence
# could move the cursor, retitle the window or hide text) and the bidirectional controls
# (they reorder what follows). Each is shown as its \u escape.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    return _UNPRINTABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def presence_line(frame: dict[str, Any]) -> str:
    """A `presence` frame in words: "alice, bob joined; carol left (3 here)", or, for a room
    above the server's occupancy threshold (the count alone), "250 here"."""
    parts = [
        f"{', '.join(user['name'] for user in frame[key])} {verb}"
        for key, verb in (("joins", "joined"), ("leaves", "left"))
        if frame.get(key)
    ]
    return f"{'; '.join(parts)} ({frame['count']} here)" if parts else f"{frame['count']} here"


def line_for(event: dict[str, Any]) -> str | None:
    """What the terminal shows for an event, or None."""
    kind = event["type"]
    if kind == "message":
        return printable(f"{event['user']['name']}: {event['text']}")
    if kind == "presence":
        return printable(f"* {presence_line(event)}")
    if kind == "discontinuity":
        return "* some messages were lost while away; the chat goes on"
    if kind == "state" and event["state"] == "reconnecting" and "retry_in" in event:
        return f"* connection lost; retrying in {event['retry_in']:.1f} s"
    if kind == "state" and event["state"] == "open":
        return "* connected"
    if kind == "error":
        return printable(f"* error: {event.get('detail') or event.get('code')}")
    return None


async def chat(
    url: str,
    room_name: str,
    token: str,
    lines: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    **options: Any,
) -> int:
    async with connect(url, room_name, token=token, **options) as room:
        shown = asyncio.create_task(_show(room, out))
        failed = await _send_lines(room, lines, out)
        await room.close()
        await shown
    return 1 if failed or room.error is not None else 0


async def _show(room: Room, out: TextIO) -> None:
    async for event in room:
        line = line_for(event)
        if line is not None:
            print(line, file=out, flush=True)


async def _send_lines(room: Room, lines: TextIO, out: TextIO) -> bool:
    """Send each line as it is typed, in order, each stored once; True if one was refused
    for good. Sends do not wait for one another: a slow answer does not hold the next."""
    loop = asyncio.get_running_loop()
    sends: list[asyncio.Task[dict[str, Any]]] = []
    while room.state != "closed" and (line := await loop.run_in_executor(None, lines.readline)):
        text = line.rstrip("\n")
        if text.strip():
            sends.append(asyncio.create_task(room.send(text)))
    failed = False
    for outcome in await asyncio.gather(*sends, return_exceptions=True):
        if isinstance(outcome, ClientError):
            print(printable(f"* not sent: {outcome}"), file=out, flush=True)
            failed = True
    return failed
