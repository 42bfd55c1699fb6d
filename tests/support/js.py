"""The JavaScript client's Node scripts (tests/js/), run from the Python tests."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.support.servers import ROOT


def live_room(
    node: str,
    urls: list[str],
    room: str,
    count: int,
    options: dict[str, Any] | None = None,
    waits: float = 20,
    seconds: float = 60,
) -> dict[str, Any]:
    """tests/js/live_room.mjs: two clients in `room` (the first at urls[0], the second at the
    last), `count` sends with both sockets cut mid-stream; what each side saw. Each of its
    waits lasts at most `waits` seconds, and the whole run `seconds`."""
    config = {
        "urls": urls,
        "room": room,
        "count": count,
        "options": options or {},
        "timeoutMs": int(waits * 1000),
    }
    done = subprocess.run(
        [node, "tests/js/live_room.mjs", json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result
