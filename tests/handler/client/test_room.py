"""The Python client's room (handler/client/room.py), fed frames directly, without a socket.
What it does against real servers is in tests/contract/ and tests/chaos/."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from handler.client import Room


def welcome(**fields: Any) -> str:
    frame = {
        "type": "welcome",
        "connection_id": "c0",
        "room": "r",
        "user": {"id": "id-me", "name": "me"},
        "count": 1,
        "latest_id": 0,
        "epoch": "1",
        "more": False,
        "history": [],
        **fields,
    }
    return json.dumps(frame)


def join(n: int, count: int) -> str:
    user = {"id": f"u{n}", "name": f"u{n}"}
    frame = {"type": "presence", "room": "r", "joins": [user], "leaves": [], "count": count}
    return json.dumps({**frame, "presence_seq": n})


def events(room: Room, kind: str) -> list[dict[str, Any]]:
    queued = []
    while not room._events.empty():
        event = room._events.get_nowait()
        if event is not None and event["type"] == kind:
            queued.append(event)
    return queued


async def test_on_lambda_frames_out_of_order_leave_the_count_with_the_highest_number() -> None:
    """Concurrent `$connect`s announce their joins at once, so a member gets them in any
    order, each count numbered by the change it was read after (measured on the emulator:
    welcome 5, then 4, 3, 5, 2, and the room said "2 here" until the next event)."""
    room = Room("ws://chat.test", "r", token="tok")
    room._on_frame(welcome(count=5, presence_seq=5))
    for n, count in [(4, 4), (3, 3), (7, 7), (2, 2), (6, 6)]:
        room._on_frame(join(n, count))
    assert room.count == 7
    # Every join reaches the app, each with the room's count as the client keeps it.
    heard = [(p["joins"][0]["name"], p["count"]) for p in events(room, "presence")]
    assert heard == [("u4", 5), ("u3", 5), ("u7", 7), ("u2", 7), ("u6", 7)]
    room._on_frame(json.dumps({"type": "presence", "room": "r", "count": 6, "presence_seq": 6}))
    assert room.count == 7  # an older occupancy frame
    reply = {"type": "members", "room": "r", "complete": True, "more": False, "members": []}
    who = asyncio.ensure_future(room.members())
    await asyncio.sleep(0)
    room._on_frame(json.dumps({**reply, "count": 6, "presence_seq": 7}))
    assert ((await who)["count"], room.count) == (6, 7)  # the reply as it came; the newest kept
    who = asyncio.ensure_future(room.members())
    await asyncio.sleep(0)
    room._on_frame(json.dumps({**reply, "count": 8, "presence_seq": 8}))
    assert ((await who)["count"], room.count) == (8, 8)
    # A new connection's welcome starts over; a count without a number (memory, Redis, where
    # frames come in order) is always kept.
    room._on_frame(welcome(count=3, presence_seq=2))
    assert room.count == 3
    leave = {"type": "presence", "room": "r", "joins": [], "leaves": [{"id": "u", "name": "u"}]}
    room._on_frame(json.dumps({**leave, "count": 2}))
    assert room.count == 2
