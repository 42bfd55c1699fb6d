"""The JSON dialect's room verbs on every topology: `history` with `before`, `members` and
`typing`, on the socket and (for the first two) over REST. On Redis a room's clients are
spread across two servers: the room is one room all the same."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from tests.contract.conftest import Transport
from tests.contract.test_rest import call
from tests.support.clients import recv, recv_json, until


async def ask(ws: Any, frame_type: str, **action: object) -> dict[str, Any]:
    await ws.send(json.dumps(action))
    return await until(ws, frame_type)


async def test_scrolling_back_on_the_socket_and_over_rest(transport: Transport) -> None:
    ids = [
        call(transport, "POST", "/rooms/scroll/messages", {"text": f"m{n}"})[1]["id"]
        for n in range(6)
    ]
    async with transport.connect("scroll", token="t", format="json") as ws:
        await until(ws, "welcome")
        page = await ask(ws, "history", action="history", before=ids[4], limit=3)
        assert [m["text"] for m in page["messages"]] == ["m1", "m2", "m3"]
        assert (page["before"], page["latest_id"], page["more"]) == (ids[4], ids[-1], False)
        older = await ask(ws, "history", action="history", before=ids[1], limit=3)
        assert [m["text"] for m in older["messages"]] == ["m0"]
        refused = await ask(ws, "error", action="history", before=ids[1], since=0)
        assert refused["code"] == "bad_request"
        await ws.send(json.dumps({"action": "ping"}))
        assert await recv_json(ws) == {"type": "pong"}  # the socket stays
    status, rest = call(transport, "GET", f"/rooms/scroll/messages?before={ids[4]}&limit=3")
    assert status == 200 and rest["before"] == ids[4]
    assert rest["messages"] == page["messages"]
    status, _ = call(transport, "GET", f"/rooms/scroll/messages?before={ids[4]}&since=1")
    assert status == 422


async def test_members_lists_each_user_once_wherever_they_are(transport: Transport) -> None:
    async with (
        transport.connect("who", token="ann", format="json") as ann,
        transport.connect("who", token="ann", format="json") as ann_again,
        transport.connect("who", token="bob") as bob,  # a text socket is a member too
        transport.connect("elsewhere", token="cy", format="json") as cy,
    ):
        welcomes = [await until(ws, "welcome") for ws in (ann, ann_again, cy)]
        await bob.send("here")
        await recv(bob)  # its echo: it is in the room
        reply = await ask(ann, "members", action="members")
        assert (reply["room"], reply["count"], reply["complete"], reply["more"]) == (
            "who",
            3,
            True,
            False,
        )
        listed = {member["name"] for member in reply["members"]}
        assert len(reply["members"]) == 2 and welcomes[0]["user"]["name"] in listed
        assert welcomes[2]["user"]["name"] not in listed
        status, rest = call(transport, "GET", "/rooms/who/members")
        assert status == 200
        assert rest == {"room": "who", "count": 3, "complete": True, "members": reply["members"]}


async def test_typing_reaches_the_others_once_and_is_not_stored(transport: Transport) -> None:
    async with (
        transport.connect("typing", token="ann", format="json") as ann,
        transport.connect("typing", token="bob", format="json") as bob,
    ):
        ann_welcome, _ = await until(ann, "welcome"), await until(bob, "welcome")
        # Typing reaches members open to live messages, which a welcome in flight is not
        # yet: a message that reached bob says its welcome is done.
        await ann.send(json.dumps({"action": "sendmessage", "text": "hello"}))
        await until(bob, "message")
        typing, rounds = None, 0
        while typing is None and rounds < 3:  # on Lambda, bob's gate may still be opening
            rounds += 1
            for _ in range(3):  # within 2 s: one goes through
                await ann.send(json.dumps({"action": "typing"}))
            with contextlib.suppress(TimeoutError):
                typing = await asyncio.wait_for(until(bob, "typing"), 2.5)
        assert typing is not None
        assert typing == {"type": "typing", "room": "typing", "user": ann_welcome["user"]}
        await ann.send(json.dumps({"action": "sendmessage", "text": "after typing"}))
        # Then the message: of each round's three typings, one at most went through.
        late = 0
        while (frame := await recv_json(bob))["type"] == "typing":
            late += 1
        assert frame["text"] == "after typing" and late < rounds
        await ann.send(json.dumps({"action": "ping"}))
        # Her two messages and the pong, and no typing of her own. On Redis her own copy of
        # a message comes through the subscription, and may come after the pong.
        answered: list[str] = []
        while answered.count("message") < 2 or "pong" not in answered:
            answered.append((await recv_json(ann))["type"])
        assert sorted(t for t in answered if t != "presence") == ["message", "message", "pong"]
    _, page = call(transport, "GET", "/rooms/typing/messages")
    assert [m["text"] for m in page["messages"]] == ["hello", "after typing"]
