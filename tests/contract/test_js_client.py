"""The JavaScript client (handler/web/wschat.mjs) in Node against each topology: sends
stored exactly once and every message received once, in order, while both clients' sockets
are cut mid-stream; scrolling back, members and typing (tests/js/live_room.mjs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import Transport
from tests.contract.test_rest import call
from tests.support.tools import node_with_ws

ROOT = Path(__file__).resolve().parents[2]
COUNT = 60


@pytest.fixture(scope="module")
def node() -> str:
    return node_with_ws()


def run_room(node: str, urls: list[str], room: str) -> dict[str, Any]:
    config = json.dumps({"urls": urls, "room": room, "count": COUNT})
    done = subprocess.run(
        [node, "tests/js/live_room.mjs", config],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_js_client_loses_nothing_and_repeats_nothing(node: str, transport: Transport) -> None:
    servers = (transport.server, *transport.peers)
    base = "/local" if transport.name == "emulator" else ""
    room = f"js-{transport.name}"
    seen = run_room(node, [server.ws(base) for server in servers], room)
    acked = seen["acked"]
    assert seen["texts"] == [f"m{n}" for n in range(COUNT)]  # each send answered with its own
    assert len(set(acked)) == COUNT and sorted(acked) == acked  # sent in order: stored in order
    # Each side got every message once, in id order, through its cut.
    assert seen["alice"] == acked and seen["bob"] == acked
    assert seen["bobReconnected"] and seen["discontinuities"] == 0
    _, stored = call(transport, "GET", f"/rooms/{room}/messages?limit=500")
    assert [m["text"] for m in stored["messages"]] == [f"m{n}" for n in range(COUNT)]
    assert seen["older"] == acked[2:5]
    assert seen["count"] == 2 and len(seen["members"]) == 2
    assert seen["typing"] == [seen["aliceName"]]
