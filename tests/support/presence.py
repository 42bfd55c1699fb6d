"""Reading `presence` frames in tests: each as the joins and leaves it carries, in order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def events(frames: Iterable[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(`join` or `leave`, user id, the frame's count) for each entry of each presence
    frame, joins before leaves, as a client would apply them."""
    found: list[tuple[str, str, int]] = []
    for frame in frames:
        if frame["type"] != "presence":
            continue
        found += [("join", user["id"], frame["count"]) for user in frame.get("joins", ())]
        found += [("leave", user["id"], frame["count"]) for user in frame.get("leaves", ())]
    return found


def present(frames: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Who the presence frames say is in the room: user id to connections, as a client that
    applies them keeps it (from an empty room)."""
    here: dict[str, int] = {}
    for event, user, _ in events(frames):
        here[user] = here.get(user, 0) + (1 if event == "join" else -1)
    return {user: n for user, n in here.items() if n}
