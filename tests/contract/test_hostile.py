"""Hostile clients, on both transports: what they send is refused, logged once and briefly,
never with a credential, and nobody else notices."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from websockets.exceptions import InvalidStatus

from tests.auth.keys import SECRET
from tests.contract.conftest import Transport
from tests.contract.test_rest import call
from tests.support.clients import masked_frame, raw_upgrade, recv, until


def _target(transport: Transport, query: str) -> str:
    if transport.name == "emulator":
        return f"/local?room=hostile&{query}"
    return f"/items/hostile/ws?{query}"


def _exchange(port: int, request: bytes, then: bytes = b"", linger: float = 5) -> bytes:
    """Send a raw request and read its response head (waiting up to 10 s); then send `then`
    and read until the server closes, or for `linger` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received and (chunk := sock.recv(4096)):
            received += chunk
        if then:
            sock.sendall(then)
        sock.settimeout(linger)
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except TimeoutError:
            pass
    return received


@pytest.mark.parametrize(
    "query",
    ["%74oken=SECRET-1a", 'token=x"SECRET-1b', "q=1&tok%65n=SECRET-1c", "token=x'SECRET-1d"],
)
async def test_the_log_never_shows_a_query_credential(transport: Transport, query: str) -> None:
    secret = query.rpartition("SECRET")[1] + query.rpartition("SECRET")[2]
    reply = await asyncio.to_thread(
        _exchange, transport.server.port, raw_upgrade(_target(transport, query)), linger=0.2
    )
    assert reply.startswith(b"HTTP/1.1 101")  # accepted: the server did read a credential
    await asyncio.sleep(0.2)
    log = transport.server.log()
    assert "[redacted]" in log
    assert secret not in log


async def test_invalid_utf8_closes_1007_with_one_short_line(transport: Transport) -> None:
    before = transport.server.log()
    async with transport.connect("hostile", token="bystander") as bystander:
        reply = await asyncio.to_thread(
            _exchange,
            transport.server.port,
            raw_upgrade(_target(transport, "token=t")),
            masked_frame(0x1, b"ok \xff\xfe"),
        )
        # The close frame: opcode 8, then the code 1007.
        assert b"\x88" in reply and b"\x03\xef" in reply.partition(b"\x88")[2][:3]
        await bystander.send("still here")
        assert (await recv(bystander)).startswith("Session cookie")
    await asyncio.sleep(0.2)
    added = transport.server.log()[len(before) :]
    assert "not UTF-8" in added
    assert "Traceback" not in added and "ERROR" not in added


async def test_a_refused_handshake_logs_no_error(
    start_transport: Callable[..., Transport],
) -> None:
    transport = start_transport(WSCHAT_TOKENS="alice:alice-token")
    for query in ({"token": "wrong"}, {}):
        with pytest.raises(InvalidStatus):
            async with transport.connect("hostile", **query):
                pass
    await asyncio.sleep(0.2)
    log = transport.server.log()
    assert "refused" in log
    assert "ERROR" not in log and "Traceback" not in log


def _half_handshake(port: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(raw_upgrade(target)[:40])  # half a request line, then nothing
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def test_stalled_handshakes_are_timed_out_and_capped(
    start_transport: Callable[..., Transport],
) -> None:
    transport = start_transport(WSCHAT_HANDSHAKE_TIMEOUT="1", WSCHAT_MAX_PENDING_HANDSHAKES="20")
    port = transport.server.port
    target = _target(transport, "token=t")
    stalled = [_half_handshake(port, target) for _ in range(20)]
    started = time.monotonic()
    try:
        await asyncio.sleep(0.2)
        extra = _half_handshake(port, target)  # over the cap: refused at once
        assert await asyncio.to_thread(_closed_within, extra, 0.5)
        extra.close()
        closed = await asyncio.gather(
            *(asyncio.to_thread(_closed_within, sock, 4) for sock in stalled)
        )
        assert all(closed)
        assert time.monotonic() - started < 4  # the 1 s deadline, not a keepalive
    finally:
        for sock in stalled:
            sock.close()
    # The slots are free again: a real client gets in.
    async with transport.connect("hostile", token="t") as ws:
        await ws.send("hello")
        assert (await recv(ws)).startswith("Session cookie")
    assert "did not complete its request" in transport.server.log()


async def test_a_lone_surrogate_is_refused_and_the_room_carries_on(transport: Transport) -> None:
    async with (
        transport.connect("surrogate", token="mallory", format="json") as mallory,
        transport.connect("surrogate", token="alice", format="json") as alice,
    ):
        await until(mallory, "welcome")
        await until(alice, "welcome")
        for frame in (
            '{"action":"sendmessage","text":"x\\ud800y"}',
            '{"action":"sendmessage","text":"ok","client_msg_id":"\\udfff"}',
        ):
            await mallory.send(frame)
            error = await until(mallory, "error")
            assert error["code"] == "bad_request"
        await mallory.send(json.dumps({"action": "sendmessage", "text": "fine"}))
        assert (await until(alice, "message"))["text"] == "fine"
        async with transport.connect("surrogate", token="newcomer", format="json") as newcomer:
            assert [m["text"] for m in (await until(newcomer, "welcome"))["history"]] == ["fine"]


@pytest.mark.parametrize("dialect", ["json", "text"])
async def test_deep_json_is_a_bad_frame_and_disconnect_still_runs(
    transport: Transport, dialect: str
) -> None:
    deep = "[" * 16000 + "]" * 16000  # under the 32 KiB frame limit
    # A room of its own per dialect: the other run's leaves, still on their way, would reach
    # this watcher (after its welcome, docs/welcome-seam.md) before the join it waits for.
    room = f"deep-{dialect}"
    async with transport.connect(room, token="watcher", format="json") as watcher:
        await until(watcher, "welcome")
        async with transport.connect(room, token="hostile", format=dialect) as hostile:
            assert len((await until(watcher, "presence"))["joins"]) == 1
            if dialect == "json":
                await until(hostile, "welcome")
            for frame in (deep, '{"action": ' + deep + "}"):
                await hostile.send(frame)
                if dialect == "json":
                    assert (await until(hostile, "error"))["code"] == "invalid_json"
                else:
                    assert (await recv(hostile)).startswith("Session cookie")
                    await recv(hostile)
        leave = await until(watcher, "presence")  # $disconnect ran
        assert (len(leave["leaves"]), leave["count"]) == (1, 1)


# What a line break looks like to Python's str.splitlines() and to log shippers: each of
# these, raw in a log line, starts a line of its own. ESC would also drive a terminal.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
CRIT = "x" + "".join(f"{ch}INJECTED" for ch in LINE_BREAKS) + "\x1b[2J"
CRIT_ESCAPED = (
    "x"
    + "".join(
        f"\\{e}INJECTED"
        for e in ("n", "r", "x0b", "x0c", "x1c", "x1d", "x1e", "x85", "u2028", "u2029")
    )
    + "\\x1b[2J"
)


def _with_crit_header(crit: str) -> str:
    """A token whose header lists `crit`: PyJWT's error text then carries it as it is."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    header = part({"alg": "HS256", "typ": "JWT", "crit": [crit]})
    return f"{header}.{part({'sub': 'mallory'})}.{'A' * 43}"


async def _statuses_for(transport: Transport, token: str) -> tuple[int, int]:
    """How a refused token is answered: at the socket's handshake, and by REST. Then the log
    has had time to be written."""
    with pytest.raises(InvalidStatus) as refused:
        async with transport.connect("hostile", token=token):
            pass
    request = urllib.request.Request(
        transport.server.http + "/rooms/hostile/messages",
        headers={"Authorization": f"Bearer {token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as rest:
        urllib.request.urlopen(request, timeout=10)
    rest.value.close()
    await asyncio.sleep(0.2)
    return refused.value.response.status_code, rest.value.code


@pytest.mark.parametrize("form", ["text", "json"])
async def test_a_jwt_header_cannot_start_a_log_line(
    start_transport: Callable[..., Transport], form: str
) -> None:
    transport = start_transport(
        WSCHAT_AUTH="jwt",
        WSCHAT_JWT_SECRET=SECRET,
        WSCHAT_JWT_ALGORITHMS="HS256",
        WSCHAT_LOG_FORMAT=form,
    )
    assert await _statuses_for(transport, _with_crit_header(CRIT)) == (401, 401)
    lines = transport.server.log().splitlines()
    assert not [line for line in lines if line.startswith("INJECTED")]
    refusals = [line for line in lines if "Unsupported critical extension" in line]
    assert len(refusals) == 2  # one line each, the whole reason on it
    if form == "json":
        messages = [json.loads(line)["message"] for line in refusals]
        assert all(message.endswith(CRIT) for message in messages)  # escaped, not altered
    else:
        assert all(line.endswith(CRIT_ESCAPED) for line in refusals), refusals


async def test_a_token_header_utf8_cannot_carry_is_refused_with_401(
    start_transport: Callable[..., Transport],
) -> None:
    """An unsigned token whose header quotes a lone surrogate: PyJWT's refusal reason carries
    it, and no response or log line could (a 500 and an ERROR traceback on every path)."""
    transport = start_transport(
        WSCHAT_AUTH="jwt", WSCHAT_JWT_SECRET=SECRET, WSCHAT_JWT_ALGORITHMS="HS256"
    )
    assert await _statuses_for(transport, _with_crit_header("\ud800")) == (401, 401)
    assert "ERROR" not in transport.server.log() and "Traceback" not in transport.server.log()


LARGEST_ID = 2**53 - 1  # the bound on ids (docs/protocol.md), and so on `since`


@pytest.mark.parametrize("since", [LARGEST_ID + 1, 2**64 - 1])
async def test_a_since_past_the_largest_id_is_refused_on_every_path(
    transport: Transport, since: int
) -> None:
    """On Redis a `since` of 2**64-1 closed the JSON socket with 1013 (a traceback at ERROR)
    and REST answered 500, while memory answered both. One bound on every path and engine:
    the socket gets an `error` and stays, REST a 422, the handshake a 403."""
    room = f"far-{since}"
    before = transport.server.log()
    call(transport, "POST", f"/rooms/{room}/messages", {"text": "one"})
    async with transport.connect(room, token="reader", format="json") as reader:
        await until(reader, "welcome")
        await reader.send(json.dumps({"action": "history", "since": since}))
        error = await until(reader, "error")
        assert error["code"] == "bad_request" and str(LARGEST_ID) in error["detail"]
        await reader.send(json.dumps({"action": "ping"}))
        await until(reader, "pong")
    status, body = call(transport, "GET", f"/rooms/{room}/messages?since={since}")
    assert status == 422 and body["detail"][0]["loc"] == ["query", "since"]
    with pytest.raises(InvalidStatus) as refused:
        async with transport.connect(room, token="reader", format="json", since=str(since)):
            pass
    assert refused.value.response.status_code == 403
    await asyncio.sleep(0.2)
    added = transport.server.log()[len(before) :]
    assert "Traceback" not in added and "ERROR" not in added


async def test_the_largest_since_is_answered_on_every_path(transport: Transport) -> None:
    """The bound's edge: 2**53-1 (JavaScript's largest safe integer, which JSON, DynamoDB's
    numbers and Redis' Lua carry exactly) is a `since` like any other past the room's end."""
    room = "far-edge"
    _, first = call(transport, "POST", f"/rooms/{room}/messages", {"text": "one"})
    async with transport.connect(room, token="reader", format="json") as reader:
        await until(reader, "welcome")
        await reader.send(json.dumps({"action": "history", "since": LARGEST_ID}))
        history = await until(reader, "history")
        assert (history["messages"], history["latest_id"]) == ([], first["id"])
    status, body = call(transport, "GET", f"/rooms/{room}/messages?since={LARGEST_ID}")
    assert (status, body["messages"], body["latest_id"]) == (200, [], first["id"])
    async with transport.connect(
        room, token="reader", format="json", since=str(LARGEST_ID)
    ) as resumed:
        welcome = await until(resumed, "welcome")  # past the room's end: it started over
        assert welcome["recovered"] is False
        assert [m["text"] for m in welcome["history"]] == ["one"]
