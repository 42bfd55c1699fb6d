"""The chat's behaviour, identical on both transports."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.contract.conftest import Transport, transport_with, transports_for
from tests.contract.test_rest import call
from tests.support.clients import TIMEOUT, close_code, recv, recv_json, until


async def send_json(ws: ClientConnection, **frame: object) -> None:
    await ws.send(json.dumps(frame))


# --- seed parity -----------------------------------------------------------------------------


async def test_seed_lines_with_token_and_q(transport: Transport) -> None:
    async with transport.connect("foo", token="some-key-token", q="3") as ws:
        await ws.send("hello")
        assert [await recv(ws) for _ in range(3)] == [
            "Session cookie or query token value is: some-key-token",
            "Query parameter q is: 3",
            "Message text was: hello, for item ID: foo",
        ]


async def test_seed_lines_with_session_cookie(transport: Transport) -> None:
    async with transport.connect("bar", headers={"Cookie": "session=cookie-value"}) as ws:
        await ws.send("hi")
        assert await recv(ws) == "Session cookie or query token value is: cookie-value"
        assert await recv(ws) == "Message text was: hi, for item ID: bar"


@pytest.mark.parametrize(
    "query",
    [{}, {"token": "t", "q": "nope"}, {"token": "t", "format": "xml"}],
    ids=["no credential", "non-integer q", "unknown format"],
)
async def test_refused_handshakes_are_403(transport: Transport, query: dict[str, str]) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with transport.connect("foo", **query):
            pass
    assert refused.value.response.status_code == 403


async def test_room_name_rules(transport: Transport) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with transport.connect("r" * 10_000, token="t"):
            pass
    assert refused.value.response.status_code == 403
    async with transport.connect("café ☕ 部屋", token="t") as ws:
        await ws.send("bonjour")
        lines = [await recv(ws) for _ in range(2)]
    assert lines[-1] == "Message text was: bonjour, for item ID: café ☕ 部屋"


@pytest.mark.parametrize("spelled", ["a/b", "a%2Fb", "/", "a%2fb"])
async def test_a_room_name_with_a_slash_is_refused_on_every_path(
    transport: Transport, spelled: str
) -> None:
    """One rule everywhere: a `/` in a room name, however it is spelled in a URL, is refused
    with the handshake's reason, never taken for another room or route."""
    if transport.name == "emulator":
        url = transport.server.ws(f"/local?room={spelled}&token=t")
    else:
        url = transport.server.ws(f"/items/{spelled}/ws?token=t")
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url):
            pass
    assert refused.value.response.status_code == 403
    request = urllib.request.Request(
        f"{transport.server.http}/rooms/{spelled}/messages",
        headers={"Authorization": "Bearer t"},
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=10)
    assert answer.value.code == 400 and "`/`" in json.loads(answer.value.read())["detail"]


# --- rooms, dialects, presence ---------------------------------------------------------------


async def test_three_clients_two_rooms(transport: Transport) -> None:
    async with (
        transport.connect("r1", token="alice-token") as alice,
        transport.connect("r1", token="bob-token", format="json") as bob,
        transport.connect("r2", token="carol-token") as carol,
    ):
        welcome = await until(bob, "welcome")
        assert welcome["room"] == "r1" and welcome["count"] == 2
        bob_name = welcome["user"]["name"]
        assert "bob-token" not in json.dumps(welcome)

        await alice.send("hello r1")
        assert [await recv(alice) for _ in range(2)][
            -1
        ] == "Message text was: hello r1, for item ID: r1"
        message = await until(bob, "message")
        assert (message["text"], message["room"]) == ("hello r1", "r1")
        assert "alice-token" not in json.dumps(message)

        await send_json(bob, action="sendmessage", text="hi alice")
        assert await recv(alice) == f"{bob_name}: hi alice"
        assert (await until(bob, "message"))["text"] == "hi alice"

        await carol.send("only r2")  # carol saw nothing: her next frame is her own echo
        assert (await recv(carol)).startswith("Session cookie or query token value is: carol")


async def test_presence_join_and_leave(transport: Transport) -> None:
    async with transport.connect("presence", token="p1", format="json") as watcher:
        assert (await until(watcher, "welcome"))["count"] == 1
        async with transport.connect("presence", token="p2", format="json") as other:
            join = await until(watcher, "presence")
            (user,) = join["joins"]
            assert (join["leaves"], join["count"]) == ([], 2)
            assert user == (await until(other, "welcome"))["user"]
        leave = await until(watcher, "presence")
        # Numbered where frames can arrive out of order (Lambda), each after the last.
        numbers = join.pop("presence_seq", None), leave.pop("presence_seq", None)
        assert leave == {**join, "joins": [], "leaves": [user], "count": 1}
        assert numbers == ((2, 3) if transport.name == "emulator" else (None, None))


async def test_json_subprotocol_and_ping(transport: Transport) -> None:
    async with transport.connect("sp", token="t", subprotocols=["wschat.json"]) as ws:
        assert ws.subprotocol == "wschat.json"
        await until(ws, "welcome")
        await send_json(ws, action="ping")
        assert await recv_json(ws) == {"type": "pong"}


async def test_bearer_header_and_subprotocol_pair(transport: Transport) -> None:
    async with (
        transport.connect("auth-a", headers={"Authorization": "Bearer header-token"}) as a,
        transport.connect("auth-b", subprotocols=["bearer", "pair-token"]) as b,
    ):
        assert b.subprotocol == "bearer"
        assert "pair-token" not in str(b.response.headers)
        await a.send("x")
        assert await recv(a) == "Session cookie or query token value is: header-token"
        await b.send("y")
        assert await recv(b) == "Session cookie or query token value is: pair-token"


async def test_bad_frames_keep_the_connection(transport: Transport) -> None:
    async with transport.connect("bad", token="t", format="json") as ws:
        await until(ws, "welcome")
        for frame, code in [
            ("{not json", "invalid_json"),
            ('{"action":"sendmessage","text":["x"]}', "bad_request"),
            ('{"action":"fly"}', "unknown_action"),
            ('{"action":"sendmessage","text":""}', "empty_message"),
        ]:
            await ws.send(frame)
            assert await recv_json(ws) == {
                "type": "error",
                "code": code,
                "detail": (await _detail(code)),
            }
        await send_json(ws, action="ping")
        assert await recv_json(ws) == {"type": "pong"}


async def _detail(code: str) -> str:
    return {
        "invalid_json": "frame is not valid JSON",
        "bad_request": "`text` must be a string",
        "unknown_action": "`action` must be one of: "
        "sendmessage, history, members, typing, ping, refresh",
        "empty_message": "`text` must not be empty",
    }[code]


@pytest.mark.parametrize("dialect", ["text", "json"])
async def test_a_binary_frame(transport: Transport, dialect: str) -> None:
    """`wschat serve` answers a binary frame with an error and keeps the connection; API
    Gateway closes it with 1003 before any function runs, and the emulator does as it does
    (docs/protocol.md, docs/serverless.md)."""
    async with transport.connect("bin", token="t", format=dialect) as ws:
        if dialect == "json":
            await until(ws, "welcome")
        await ws.send(b"\xff\xfe")
        if transport.name == "emulator":
            assert await close_code(ws) == 1003
        elif dialect == "json":
            assert (await recv_json(ws))["code"] == "binary_unsupported"
            await send_json(ws, action="ping")
            assert await recv_json(ws) == {"type": "pong"}
        else:
            assert await recv(ws) == "Error: binary frames are not supported; send text"
            await ws.send("still here")
            assert [await recv(ws) for _ in range(2)][-1].startswith("Message text was: still")


async def test_empty_message_is_echoed_not_broadcast(transport: Transport) -> None:
    async with (
        transport.connect("empty", token="a") as a,
        transport.connect("empty", token="b") as b,
    ):
        await a.send("")
        assert [await recv(a) for _ in range(2)][-1] == "Message text was: , for item ID: empty"
        await a.send("after")
        [await recv(a) for _ in range(2)]
        assert (await recv(b)).endswith(": after")


# --- limits ----------------------------------------------------------------------------------


async def test_oversize_message_closes_1009_others_untouched(transport: Transport) -> None:
    async with transport.connect("big", token="a") as a, transport.connect("big", token="b") as b:
        await a.send("x" * (32 * 1024 - 10))
        [await recv(a) for _ in range(2)]
        assert (await recv(b)).endswith("x" * 100)
        await a.send("x" * (32 * 1024 + 1))
        assert await close_code(a) == 1009
        await b.send("still fine")
        assert (await recv(b)).startswith("Session cookie")


async def test_flood_is_rate_limited_then_closed(
    start_transport: Callable[..., Transport],
) -> None:
    # A low rate, so that even the slower transport receives a real flood.
    transport = start_transport(WSCHAT_RATE_PER_SECOND="2", WSCHAT_RATE_BURST="10")
    async with (
        transport.connect("flood", token="f", format="json") as flooder,
        transport.connect("flood", token="calm", format="json") as calm,
    ):
        await until(flooder, "welcome")
        await until(calm, "welcome")
        for i in range(150):
            await send_json(flooder, action="sendmessage", text=f"f{i}")
        kinds: list[str] = []
        delivered: list[int] = []
        with pytest.raises(ConnectionClosed):
            while True:
                frame = await recv_json(flooder)
                kinds.append(frame.get("code", frame["type"]))
                if frame["type"] == "message":
                    delivered.append(frame["id"])
        assert "rate_limited" in kinds
        # calm got what was stored: the burst got through, the flood did not; then it still
        # answers.
        await send_json(calm, action="ping")
        seen: list[int] = []
        while (frame := await recv_json(calm))["type"] != "pong":
            if frame["type"] == "message":
                seen.append(frame["id"])
        assert 10 <= len(seen) < 40
        # The flooder's own copies end where its close cut them, in order, none skipped. On
        # Redis they come back through pub/sub after their batch is stored, while the rest of
        # the flood is read and refused, so the abuse close can overtake any of them (they
        # are stored: a client that reconnects resumes with `since`).
        assert delivered == seen[: len(delivered)]
        if not transport.on_redis:
            assert len(delivered) >= len(seen) - 5


@pytest.mark.timeout(180)  # the emulator runs every message through the Lambda handlers
async def test_slow_consumer_is_closed_1013_and_never_delays_others(
    start_transport: Callable[..., Transport],
) -> None:
    transport = start_transport(
        WSCHAT_SEND_QUEUE_FRAMES="32", WSCHAT_RATE_PER_SECOND="100000", WSCHAT_RATE_BURST="100000"
    )
    # The slow client: a small receive buffer, and it does not read until the end.
    sock = socket.create_connection(("127.0.0.1", transport.server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    # ~7 MB: enough to overrun loopback's socket buffers (up to 4 MB) as well as the queue.
    total, text = 240, "y" * 30_000
    async with (
        transport.connect(
            "slow", token="slow", format="json", sock=sock, max_queue=4, ping_interval=None
        ) as slow,
        transport.connect("slow", token="fast1", format="json") as fast1,
        transport.connect("slow", token="fast2", format="json") as fast2,
        transport.connect("slow", token="sender") as sender,
    ):
        for ws in (fast1, fast2):
            await until(ws, "welcome")

        async def count(ws: ClientConnection) -> int:
            seen = 0
            while seen < total:
                seen += (await recv_json(ws))["type"] == "message"
            return seen

        counters = [asyncio.create_task(count(ws)) for ws in (fast1, fast2)]
        for i in range(total):
            await sender.send(f"{i}:{text}")
            for _ in range(2):  # the echo, read in step so the sender is never the slow one
                await recv(sender)
        assert await asyncio.wait_for(asyncio.gather(*counters), 60) == [total, total]

        got = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got += json.loads(await asyncio.wait_for(slow.recv(), TIMEOUT))["type"] == "message"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert got < total
    if transport.name != "emulator":  # `wschat serve` counts it (API Gateway has no /metrics)
        from tests.handler.local.test_metrics import scrape, value

        servers = (transport.server, *transport.peers)
        closes = sum(value(scrape(s), "wschat_slow_consumer_closes_total") for s in servers)
        assert closes == 1


async def test_client_killed_mid_broadcast_leaves_the_rest_intact(
    start_transport: Callable[..., Transport],
) -> None:
    transport = start_transport(WSCHAT_RATE_PER_SECOND="100000", WSCHAT_RATE_BURST="100000")
    total = 200
    async with (
        transport.connect("kill", token="victim", format="json", close_timeout=0.1) as victim,
        transport.connect("kill", token="keeper", format="json") as keeper,
        transport.connect("kill", token="sender", format="json") as sender,
    ):
        for ws in (victim, keeper, sender):
            await until(ws, "welcome")

        async def publish() -> None:
            for i in range(total):
                await send_json(sender, action="sendmessage", text=str(i))

        async def drain() -> None:
            while True:
                await sender.recv()

        publishing, draining = asyncio.create_task(publish()), asyncio.create_task(drain())
        while (await recv_json(victim)).get("text") != "20":
            pass
        victim.transport.abort()  # vanish without a close frame
        texts: list[str] = []
        while len(texts) < total:
            frame = await recv_json(keeper)
            if frame["type"] == "message":
                texts.append(frame["text"])
        await publishing
        draining.cancel()
        assert texts == [str(i) for i in range(total)]


# --- reconnect -------------------------------------------------------------------------------


async def test_reconnect_resumes_with_since(transport: Transport) -> None:
    async with transport.connect("resume", token="writer", format="json") as writer:
        await until(writer, "welcome")
        async with transport.connect("resume", token="reader", format="json") as reader:
            await until(reader, "welcome")
            await send_json(writer, action="sendmessage", text="one")
            last_seen = (await until(reader, "message"))["id"]
        for text in ("two", "three"):  # sent while the reader is away
            await send_json(writer, action="sendmessage", text=text)
            # Its own copy says it is stored (the copy of `one` is still unread: skip it).
            while (await until(writer, "message"))["text"] != text:
                pass
        async with transport.connect(
            "resume", token="reader", format="json", since=str(last_seen)
        ) as reader:
            welcome = await until(reader, "welcome")
            assert [m["text"] for m in welcome["history"]] == ["two", "three"]
            assert welcome["latest_id"] == last_seen + 2
            await send_json(reader, action="history", since=last_seen + 1)
            assert [m["text"] for m in (await until(reader, "history"))["messages"]] == ["three"]


# --- repeated names: the last one counts, on both transports (as in API Gateway's events) ------


@pytest.fixture(scope="module", params=transports_for(__name__))
def allow_list(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Transport]:
    with transport_with(request, tmp_path_factory, {"WSCHAT_TOKENS": "alice:GOOD"}) as transport:
        yield transport


@pytest.mark.parametrize(
    ("headers", "query", "accepted"),
    [
        ([("Cookie", "session=BAD"), ("Cookie", "session=GOOD")], {}, True),
        ([("Cookie", "session=GOOD"), ("Cookie", "session=BAD")], {}, False),
        ([("Cookie", "session=BAD; session=GOOD")], {}, True),
        ([("Cookie", "session=GOOD; session=BAD")], {}, False),
        ([], {"token": ["BAD", "GOOD"]}, True),
        ([], {"token": ["GOOD", "BAD"]}, False),
    ],
    ids=[
        "two cookie headers, good last",
        "two cookie headers, bad last",
        "one header, good last",
        "one header, bad last",
        "two tokens, good last",
        "two tokens, bad last",
    ],
)
async def test_a_repeated_credential_the_last_one_counts(
    allow_list: Transport,
    headers: list[tuple[str, str]],
    query: dict[str, list[str]],
    accepted: bool,
) -> None:
    base = allow_list.url(f"dup-{secrets.token_hex(4)}")  # a room of its own: the server is shared
    url = base + ("&" if "?" in base else "?") + urlencode(query, doseq=True) if query else base
    if accepted:
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.send("hi")
            assert await recv(ws) == "Session cookie or query token value is: GOOD"
    else:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401


async def test_a_member_gets_what_is_said_right_after_its_handshake(transport: Transport) -> None:
    # The bug this catches: on Redis, `wschat serve` accepted the socket before the member had
    # joined the room (a few round trips), and a message sent at once by a member on another
    # worker reached nobody on this one. The text dialect has no history to make up for it.
    for round_ in range(5):
        room = f"at-once-{round_}"
        async with transport.connect(room, token="a") as a, transport.connect(room, token="b") as b:
            await a.send("right away")
            [await recv(a) for _ in range(2)]
            assert (await recv(b)).endswith(": right away")


async def test_a_retry_is_answered_while_its_message_is_in_history(
    start_transport: Callable[..., Transport],
) -> None:
    """A resent `client_msg_id` gets the message it was first stored as, for as long as that
    message is in the room's history; after that it is a new message (keeping every retry key
    for days grew Redis with the posts, not with the history: issue 25). The history is
    capped at 3 messages in memory and on Redis; DynamoDB keeps messages by age alone."""
    transport = start_transport(WSCHAT_HISTORY_SIZE="3")
    async with transport.connect("retried", token="sender", format="json") as ws:
        await until(ws, "welcome")

        async def send(text: str, key: str | None = None) -> dict[str, object]:
            retry = {"client_msg_id": key} if key else {}
            await send_json(ws, action="sendmessage", text=text, **retry)
            return await until(ws, "message")

        first = await send("one", "k1")
        await send("two")
        await send("three")
        assert await send("one", "k1") == first
        await send("four")
        _, page = call(transport, "GET", "/rooms/retried/messages")
        kept = first["id"] in [message["id"] for message in page["messages"]]
        assert kept == (transport.name == "emulator")
        again = await send("one", "k1")
        assert again == first if kept else again["id"] == page["latest_id"] + 1
