"""What `wschat chat` prints for the events of a room (handler/client/terminal.py)."""

from __future__ import annotations

from handler.client.terminal import line_for


def test_a_presence_batch_and_a_big_rooms_count_are_printed() -> None:
    alice, bob, carol = ({"id": n, "name": n} for n in ("alice", "bob", "carol"))
    batch = {"type": "presence", "room": "r", "joins": [alice, bob], "leaves": [carol]}
    assert line_for({**batch, "count": 3}) == "* alice, bob joined; carol left (3 here)"
    assert line_for({**batch, "leaves": [], "count": 4}) == "* alice, bob joined (4 here)"
    assert line_for({"type": "presence", "room": "r", "count": 250}) == "* 250 here"
    hostile = {"type": "presence", "joins": [{"id": "x", "name": "\x1b[2J"}], "leaves": []}
    assert line_for({**hostile, "count": 2}) == "* \\u001b[2J joined (2 here)"
