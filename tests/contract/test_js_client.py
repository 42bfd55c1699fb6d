"""The JavaScript client (handler/web/wschat.mjs) in Node against each topology: sends
stored exactly once and every message received once, in order, while both clients' sockets
are cut mid-stream; scrolling back, members and typing (tests/js/live_room.mjs)."""

from __future__ import annotations

import pytest

from tests.contract.conftest import Transport
from tests.contract.test_rest import call
from tests.support.js import live_room
from tests.support.tools import node_with_ws

COUNT = 60


@pytest.fixture(scope="module")
def node() -> str:
    return node_with_ws()


def test_the_js_client_loses_nothing_and_repeats_nothing(node: str, transport: Transport) -> None:
    servers = (transport.server, *transport.peers)
    base = "/local" if transport.name == "emulator" else ""
    room = f"js-{transport.name}"
    seen = live_room(node, [server.ws(base) for server in servers], room, COUNT)
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
