"""The chat core driven directly, with in-memory stores and a recording delivery port."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from auth.errors import AuthError
from auth.principal import Principal
from auth.rooms import Grants, GrantsPolicy, Right, Rights
from handler.chat import wire
from handler.chat.core import NOT_WRITABLE, TEXT_REFRESH, ChatCore, ConnectParams, Limits
from handler.chat.ports import Dialect, Draft, StoreBusy
from handler.chat.wire import FrameError
from infra.memory.connections import MemoryConnections
from infra.memory.message_log import MemoryMessageLog
from tests.handler.chat.recording import FakeClock, RecordingDelivery, TokenBook
from tests.support import presence

TEXT = ConnectParams(Dialect.TEXT)
JSON = ConnectParams(Dialect.JSON)


def join(
    core: ChatCore,
    cid: str,
    room: str,
    who: Principal,
    params: ConnectParams,
    since: int | None = None,
) -> None:
    """What a transport does: connect, then welcome once the socket can receive."""
    core.connect(cid, room, who, params)
    core.welcome(cid, since)


def principal(name: str, echo: str | None = None) -> Principal:
    return Principal(id=f"id-{name}", name=name, echo=echo or f"tok-{name}")


@pytest.fixture
def connections() -> MemoryConnections:
    return MemoryConnections()


@pytest.fixture
def core(connections: MemoryConnections, delivery: RecordingDelivery, clock: FakeClock) -> ChatCore:
    limits = Limits(max_message_bytes=64, rate_per_second=2, rate_burst=3, rate_abuse_strikes=4)
    return ChatCore(connections, MemoryMessageLog(size=5), delivery, limits, clock, clock)


def test_text_sender_gets_exactly_the_seed_lines_and_others_get_one_line(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, "a", "foo", principal("alice", "some-key-token"), ConnectParams(q=5))
    join(core, "b", "foo", principal("bob"), TEXT)
    core.message("a", "hello")
    assert delivery.take("a") == [
        "Session cookie or query token value is: some-key-token",
        "Query parameter q is: 5",
        "Message text was: hello, for item ID: foo",
    ]
    assert delivery.take("b") == ["alice: hello"]


def test_q_line_only_when_q_given(core: ChatCore, delivery: RecordingDelivery) -> None:
    join(core, "a", "foo", principal("alice"), TEXT)
    core.message("a", "x")
    assert delivery.take("a") == [
        "Session cookie or query token value is: tok-alice",
        "Message text was: x, for item ID: foo",
    ]


def test_rooms_are_isolated(core: ChatCore, delivery: RecordingDelivery) -> None:
    join(core, "a", "r1", principal("alice"), TEXT)
    join(core, "b", "r1", principal("bob"), TEXT)
    join(core, "c", "r2", principal("carol"), TEXT)
    core.message("a", "in r1")
    assert delivery.take("b") == ["alice: in r1"]
    assert delivery.take("c") == []


def test_json_dialect_welcome_presence_and_message(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, "t", "foo", principal("tex"), TEXT)
    core.message("t", "before")
    join(core, "j", "foo", principal("jo"), JSON)
    (welcome,) = delivery.take_json("j")
    assert welcome["type"] == "welcome"
    assert welcome["count"] == 2 and welcome["latest_id"] == 1
    assert [m["text"] for m in welcome["history"]] == ["before"]
    join(core, "k", "foo", principal("kay"), JSON)
    assert delivery.take_json("j")[0] == {
        "type": "presence",
        "room": "foo",
        "joins": [{"id": "id-kay", "name": "kay"}],
        "leaves": [],
        "count": 3,
    }
    assert delivery.take("t") == [
        "Session cookie or query token value is: tok-tex",
        "Message text was: before, for item ID: foo",
    ]
    core.message("j", '{"action":"sendmessage","text":"hi"}')
    (own,) = delivery.take_json("j")
    assert own["type"] == "message" and own["id"] == 2 and own["text"] == "hi"
    assert delivery.take_json("k")[-1] == own
    assert delivery.take("t") == ["jo: hi"]
    core.disconnect("k")
    assert delivery.take_json("j") == [
        {
            "type": "presence",
            "room": "foo",
            "joins": [],
            "leaves": [{"id": "id-kay", "name": "kay"}],
            "count": 2,
        }
    ]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "bad_request"),
        ('"just a string"', "bad_request"),
        ('{"text": "no action"}', "unknown_action"),
        ('{"action": "dance"}', "unknown_action"),
        ('{"action": 5}', "unknown_action"),
        ('{"action": "sendmessage"}', "bad_request"),
        ('{"action": "sendmessage", "text": 5}', "bad_request"),
        ('{"action": "sendmessage", "text": "   "}', "empty_message"),
        ('{"action": "sendmessage", "text": "x", "client_msg_id": 7}', "bad_request"),
        ('{"action": "history", "since": "3"}', "bad_request"),
        ('{"action": "history", "since": -1}', "bad_request"),
        ('{"action": "history", "since": true}', "bad_request"),
        ('{"action": "history", "since": 3.0}', "bad_request"),
        ('{"action": "history", "since": 9007199254740992}', "bad_request"),  # 2**53
        ("[" * 30 + "]" * 30, "bad_request"),
    ],
)
def test_bad_json_frames_get_an_error_and_the_connection_stays(
    core: ChatCore, delivery: RecordingDelivery, frame: str, code: str
) -> None:
    join(core, "j", "foo", principal("jo"), JSON)
    join(core, "k", "foo", principal("kay"), JSON)
    delivery.take("j")
    delivery.take("k")
    core.message("j", frame)
    (error,) = delivery.take_json("j")
    assert error["type"] == "error" and error["code"] == code and error["detail"]
    assert delivery.take("k") == []
    assert "j" not in delivery.closed
    core.message("j", '{"action":"ping"}')
    assert delivery.take_json("j") == [{"type": "pong"}]


def test_deeply_nested_json_is_refused_not_crashing(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, "j", "foo", principal("jo"), ConnectParams(Dialect.JSON))
    delivery.take("j")
    core.limits = Limits(max_message_bytes=1 << 20, rate_burst=10)
    core.message("j", "[" * 100_000 + "]" * 100_000)
    (error,) = delivery.take_json("j")
    assert error["code"] in {"invalid_json", "bad_request"}


def test_binary_frame_is_refused_in_both_dialects(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, "t", "foo", principal("tex"), TEXT)
    join(core, "j", "foo", principal("jo"), JSON)
    delivery.take("j")
    core.message("t", b"\x00\x01")
    core.message("j", b"{}")
    assert delivery.take("t") == ["Error: binary frames are not supported; send text"]
    assert delivery.take_json("j")[0]["code"] == "binary_unsupported"
    assert delivery.closed == {}


def test_empty_text_frame_is_echoed_but_not_broadcast_or_stored(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, "a", "foo", principal("alice"), TEXT)
    join(core, "b", "foo", principal("bob"), TEXT)
    core.message("a", "")
    assert delivery.take("a")[-1] == "Message text was: , for item ID: foo"
    assert delivery.take("b") == []
    assert core.messages.latest_id("foo") == 0


def test_oversize_frame_closes_with_1009_and_is_not_delivered(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, "a", "foo", principal("alice"), TEXT)
    join(core, "b", "foo", principal("bob"), TEXT)
    core.message("a", "x" * 64)  # exactly the limit: accepted
    assert delivery.take("b") == ["alice: " + "x" * 64]
    core.message("a", "é" * 33)  # 66 bytes in UTF-8, though only 33 characters
    assert delivery.closed["a"][0] == 1009
    assert delivery.take("b") == []


def test_rate_limit_errors_then_closes_with_1008_on_abuse(
    core: ChatCore, delivery: RecordingDelivery, clock: FakeClock
) -> None:
    join(core, "a", "foo", principal("alice"), TEXT)
    join(core, "b", "foo", principal("bob"), TEXT)
    for i in range(3):  # the burst
        core.message("a", f"m{i}")
    assert len(delivery.take("b")) == 3
    delivery.take("a")
    core.message("a", "over")
    assert delivery.take("a") == ["Error: over 2 messages/s; message dropped"]
    clock.now += 0.5  # one token back at 2/s
    core.message("a", "again")
    assert delivery.take("b") == ["alice: again"]
    for _ in range(4):
        core.message("a", "flood")
    assert delivery.closed["a"] == (1008, "rate limit abuse")
    assert delivery.take("b") == []


def test_gone_recipient_is_forgotten_and_others_still_receive(
    core: ChatCore, delivery: RecordingDelivery, connections: MemoryConnections, clock: FakeClock
) -> None:
    for cid in "abc":
        join(core, cid, "foo", principal(cid), TEXT)
    clock.now += 31  # past the handshake grace
    delivery.gone.add("b")
    core.message("a", "hi")
    assert delivery.take("c") == ["a: hi"]
    assert connections.get("b") is None
    assert connections.get("a") is not None


def test_a_gone_recipient_is_announced_as_leaving_once(
    core: ChatCore, delivery: RecordingDelivery, clock: FakeClock
) -> None:
    """A connection a fan-out finds gone (API Gateway's 410, before its `$disconnect`, which
    is best effort) was forgotten silently: its `$disconnect` then found nothing to announce,
    and the room never heard it leave."""
    join(core, "a", "foo", principal("a"), TEXT)
    join(core, "b", "foo", principal("b"), TEXT)
    join(core, "w", "foo", principal("w"), JSON)
    clock.now += 31  # past the handshake grace
    delivery.take_json("w")
    delivery.gone.add("b")
    core.message("a", "hi")
    core.disconnect("b")  # its $disconnect, later
    assert presence.events(delivery.take_json("w")) == [("leave", "id-b", 2)]


def test_gone_during_its_handshake_is_not_forgotten(
    core: ChatCore, delivery: RecordingDelivery, connections: MemoryConnections, clock: FakeClock
) -> None:
    # API Gateway answers 410 for a connection whose $connect has not returned yet.
    join(core, "a", "foo", principal("a"), TEXT)
    clock.now += 5
    join(core, "new", "foo", principal("new"), TEXT)
    delivery.gone.add("new")
    core.message("a", "hi")
    assert connections.get("new") is not None


def test_frame_from_unknown_connection_is_closed_not_crashing(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    core.message("ghost", "boo")
    assert delivery.closed["ghost"][0] == 1008


def test_history_and_since(core: ChatCore, delivery: RecordingDelivery, clock: FakeClock) -> None:
    join(core, "j", "foo", principal("jo"), JSON)
    for i in range(3):
        core.message("j", f'{{"action":"sendmessage","text":"m{i}"}}')
    clock.now += 10  # refill the rate bucket
    delivery.take("j")
    core.message("j", '{"action":"history","since":1}')
    (history,) = delivery.take_json("j")
    assert history["type"] == "history" and history["latest_id"] == 3
    assert [m["id"] for m in history["messages"]] == [2, 3]
    join(core, "r", "foo", principal("re"), JSON, since=2)
    welcome = delivery.take_json("r")[0]
    assert [m["id"] for m in welcome["history"]] == [3]


def test_client_msg_id_is_stored_and_delivered_once(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, "j", "foo", principal("jo"), JSON)
    join(core, "k", "foo", principal("kay"), JSON)
    delivery.take("j")
    delivery.take("k")
    frame = '{"action":"sendmessage","text":"once","client_msg_id":"c1"}'
    core.message("j", frame)
    core.message("j", frame)
    first, repeat = delivery.take_json("j")
    assert first == repeat and first["client_msg_id"] == "c1"
    assert len(delivery.take("k")) == 1
    assert core.messages.latest_id("foo") == 1


def test_frame_after_expiry_expires_the_connection(
    core: ChatCore, delivery: RecordingDelivery, clock: FakeClock
) -> None:
    # Where no timer fires (Lambda), the next frame after `exp` closes the connection.
    expired = Principal(id="e", name="e", echo="e", expires_at=clock.now - 1)
    join(core, "e", "foo", expired, TEXT)
    join(core, "b", "foo", principal("bob"), TEXT)
    core.message("e", "too late")
    assert delivery.closed["e"][0] == 4401
    assert delivery.take("b") == []


def test_expire_sends_error_then_4401(core: ChatCore, delivery: RecordingDelivery) -> None:
    join(core, "j", "foo", principal("jo"), JSON)
    delivery.take("j")
    core.expire("j")
    assert delivery.take_json("j")[0]["code"] == "token_expired"
    assert delivery.closed["j"][0] == 4401


def test_disconnect_twice_is_harmless(core: ChatCore, connections: MemoryConnections) -> None:
    join(core, "a", "foo", principal("alice"), TEXT)
    core.disconnect("a")
    core.disconnect("a")
    assert len(connections) == 0


def test_since_beyond_the_rooms_history_still_receives_live_messages(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    # A client resuming from id 40 against a server whose history started over.
    join(core, "j", "foo", principal("jo"), JSON, since=40)
    join(core, "t", "foo", principal("tex"), TEXT)
    delivery.take("j")
    core.message("t", "fresh start")
    (message,) = delivery.take_json("j")
    assert (message["id"], message["text"]) == (1, "fresh start")


def test_message_published_between_history_read_and_welcome_arrives_once(
    connections: MemoryConnections, delivery: RecordingDelivery, clock: FakeClock
) -> None:
    # The seam: a store whose room moves on while the welcome is being assembled.
    log = MemoryMessageLog()

    class RacingConnections(MemoryConnections):
        raced = False

        def mark_welcomed(
            self, connection_id: str, room: str, through_id: int, force: bool = False
        ) -> bool:
            if not self.raced:  # a publisher slips in before the first confirmation
                self.raced = True
                racing_core.publish(room, "id-p", "p", "slipped in")
                return False
            return super().mark_welcomed(connection_id, room, through_id, force)

    racing_core = ChatCore(RacingConnections(), log, delivery, Limits(), clock, clock)
    log.append(Draft(room="foo", user_id="id-p", user_name="p", text="before", client_msg_id=None))
    racing_core.connect("j", "foo", principal("jo"), JSON)
    racing_core.welcome("j")
    frames = delivery.take_json("j")
    assert [f["type"] for f in frames] == ["welcome", "message"]
    assert [m["text"] for m in frames[0]["history"]] == ["before"]
    assert frames[1]["text"] == "slipped in"
    racing_core.publish("foo", "id-p", "p", "live")
    assert [f["text"] for f in delivery.take_json("j")] == ["live"]


def test_presence_announced_while_a_welcome_is_on_its_way_follows_the_welcome(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    """On DynamoDB or Redis, the welcome counts the room, sends its frames, and only then
    opens the gate. A member joining in between was announced to everyone but the newcomer,
    whose welcome had counted the room without it: it never heard of the join."""

    class RacingConnections(MemoryConnections):
        def mark_welcomed(
            self, connection_id: str, room: str, through_id: int, force: bool = False
        ) -> bool:
            if connection_id == "j" and self.count(room) == 1:  # someone joins meanwhile
                racing_core.connect("k", room, principal("kim"), JSON)
            return super().mark_welcomed(connection_id, room, through_id, force)

    racing_core = ChatCore(
        RacingConnections(), MemoryMessageLog(), delivery, Limits(), clock, clock
    )
    racing_core.connect("j", "foo", principal("jo"), JSON)
    racing_core.welcome("j")
    frames = delivery.take_json("j")
    assert [f["type"] for f in frames] == ["welcome", "presence"]
    assert frames[0]["count"] == 1
    assert presence.events(frames[1:]) == [("join", "id-kim", 2)]
    racing_core.disconnect("k")  # and, the gate open, the next one comes at once
    assert presence.events(delivery.take_json("j")) == [("leave", "id-kim", 1)]


def test_a_room_that_never_stands_still_gets_repeats_not_gaps(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    log = MemoryMessageLog()

    class BusyConnections(MemoryConnections):
        def mark_welcomed(
            self, connection_id: str, room: str, through_id: int, force: bool = False
        ) -> bool:
            if force:
                return super().mark_welcomed(connection_id, room, through_id, force)
            busy_core.publish(room, "id-p", "p", f"busy {log.latest_id(room) + 1}")
            return False

    busy_core = ChatCore(
        BusyConnections(),
        log,
        delivery,
        Limits(welcome_attempts=3),
        clock,
        clock,
    )
    busy_core.connect("j", "foo", principal("jo"), JSON)
    busy_core.welcome("j")
    frames = delivery.take_json("j")
    ids = [f["id"] for f in frames if f["type"] == "message"]
    assert sorted(set(ids)) == list(range(1, log.latest_id("foo") + 1))  # nothing missing
    busy_core.publish("foo", "id-p", "p", "live")
    assert [f["text"] for f in delivery.take_json("j")] == ["live"]


@pytest.mark.parametrize(
    "frame",
    [
        '{"action":"sendmessage","text":"x\\ud800y"}',
        '{"action":"sendmessage","text":"\\udfff"}',
        '{"action":"sendmessage","text":"ok","client_msg_id":"k\\udc80"}',
    ],
)
def test_text_utf8_cannot_carry_is_refused(
    core: ChatCore, delivery: RecordingDelivery, frame: str
) -> None:
    join(core, "J", "r", principal("j"), JSON)
    join(core, "K", "r", principal("k"), JSON)
    delivery.take("J"), delivery.take("K")
    core.message("J", frame)
    [error] = delivery.take_json("J")
    assert (error["type"], error["code"]) == ("error", "bad_request")
    assert "surrogate" in error["detail"]
    assert delivery.take("K") == [] and core.messages.latest_id("r") == 0


def test_a_raw_frame_with_a_lone_surrogate_is_refused(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, "T", "r", principal("t"), TEXT)
    core.message("T", "x\ud800")
    assert delivery.take("T") == ["Error: frame is not Unicode text"]
    assert core.messages.latest_id("r") == 0


def test_a_stored_lone_surrogate_reaches_everyone_repaired(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    # Stored before the edges checked (a DynamoDB history keeps messages for days).
    core.messages.append(
        Draft(
            room="r", user_id="id-old", user_name="old", text="bad \ud800 text", client_msg_id=None
        )
    )
    join(core, "J", "r", principal("j"), JSON)
    join(core, "K", "r", principal("k"), JSON)
    [welcome] = delivery.take_json("J")[:1]
    assert welcome["history"][0]["text"] == "bad \ufffd text"
    core.message("K", '{"action":"history","since":0}')
    assert delivery.take_json("K")[-1]["messages"][0]["text"] == "bad \ufffd text"
    with pytest.raises(FrameError):  # and nothing new like it gets in
        core.publish("r", "id-x", "x", "late \udfff", None)
    for frames in delivery.frames.values():
        for frame in frames:
            frame.encode()  # every frame the core handed over can be written


def big_core(delivery: RecordingDelivery, clock: FakeClock, **limits: int) -> ChatCore:
    return ChatCore(
        MemoryConnections(), MemoryMessageLog(), delivery, Limits(**limits), clock, clock
    )


def received(frames: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    for frame in frames:
        for key in ("history", "messages"):
            ids += [m["id"] for m in frame.get(key, [])]
        if frame["type"] == "message":
            ids.append(frame["id"])
    return ids


def test_a_welcome_too_big_for_a_frame_continues_in_history_frames(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    core = big_core(delivery, clock)
    for i in range(6):
        core.publish("r", "id-w", "w", f"{i}" + "x" * 30_000)
    join(core, "J", "r", principal("j"), JSON, since=0)
    raw = delivery.take("J")
    assert all(len(frame.encode()) <= wire.MAX_SEND_BYTES for frame in raw)
    frames = [json.loads(frame) for frame in raw]
    assert [f["type"] for f in frames] == ["welcome", "history"]
    assert [f["more"] for f in frames] == [True, False]
    assert received(frames) == [1, 2, 3, 4, 5, 6]
    core.message("J", '{"action":"history","since":0}')
    again = delivery.take_json("J")
    assert [f["more"] for f in again] == [True, False] and received(again) == [1, 2, 3, 4, 5, 6]


def test_a_client_more_than_a_page_behind_pages_on_with_history(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    core = big_core(delivery, clock, history_page=10)
    for i in range(25):
        core.publish("r", "id-w", "w", f"m{i}")
    join(core, "J", "r", principal("j"), JSON, since=0)
    [welcome] = delivery.take_json("J")
    assert received([welcome]) == list(range(1, 11)) and welcome["latest_id"] == 25
    core.publish("r", "id-w", "w", "live")  # live from the end of the page on
    assert received(delivery.take_json("J")) == [26]
    core.message("J", '{"action":"history","since":10}')
    assert received(delivery.take_json("J")) == list(range(11, 21))


def test_a_resume_beyond_the_rooms_history_is_not_recovered(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    core.publish("r", "id-w", "w", "after the restart")
    join(core, "J", "r", principal("j"), JSON, since=40)
    [welcome] = delivery.take_json("J")
    assert welcome["recovered"] is False
    assert [m["text"] for m in welcome["history"]] == ["after the restart"]
    join(core, "K", "r", principal("k"), JSON, since=0)
    assert delivery.take_json("K")[0]["recovered"] is True
    join(core, "L", "r", principal("l"), JSON)
    assert "recovered" not in delivery.take_json("L")[0]


@pytest.mark.parametrize("dialect", [TEXT, JSON])
def test_a_message_no_frame_could_carry_is_refused(
    delivery: RecordingDelivery, clock: FakeClock, dialect: ConnectParams
) -> None:
    core = big_core(delivery, clock, max_message_bytes=256 * 1024)
    join(core, "S", "r", principal("s"), dialect)
    join(core, "J", "r", principal("j"), JSON)
    delivery.take("S"), delivery.take("J")
    text = "\x01" * 30_000  # fine as a raw text frame, 180 KB as JSON
    core.message(
        "S", text if dialect is TEXT else json.dumps({"action": "sendmessage", "text": text})
    )
    refusal = delivery.take("S")[-1]
    assert "message_too_large" in refusal or "over 131072 bytes" in refusal
    assert delivery.take("J") == [] and core.messages.latest_id("r") == 0
    with pytest.raises(FrameError):
        core.publish("r", "id-x", "x", text)


# --- rooms and rights ----------------------------------------------------------------------

READ_ONLY = frozenset({Right.READ})


def rights_core(delivery: RecordingDelivery, clock: FakeClock, book: TokenBook) -> ChatCore:
    return ChatCore(
        MemoryConnections(),
        MemoryMessageLog(),
        delivery,
        Limits(),
        clock,
        clock,
        policy=GrantsPolicy(),
        credentials=book,
    )


def granted(name: str, expires_at: float | None = None, **rooms: list[str]) -> Principal:
    return Principal(
        id=f"id-{name}",
        name=name,
        echo=name,
        expires_at=expires_at,
        grants=Grants.from_claim(rooms),
    )


@pytest.mark.parametrize("dialect", [TEXT, JSON])
def test_a_reader_receives_but_may_not_post(
    delivery: RecordingDelivery, clock: FakeClock, dialect: ConnectParams
) -> None:
    core = rights_core(delivery, clock, TokenBook())
    reader = granted("reader", r=["read"])
    assert core.rights(reader, "r") == READ_ONLY
    core.connect("R", "r", reader, replace(dialect, rights=READ_ONLY))
    core.welcome("R")
    join(core, "W", "r", granted("writer", r=["read", "write"]), JSON)
    delivery.take("R"), delivery.take("W")
    send = "hello" if dialect is TEXT else '{"action":"sendmessage","text":"hello"}'
    core.message("R", send)
    refusal = delivery.take("R")[-1]
    assert "forbidden" in refusal or refusal == "Error: you may read this room, not post to it"
    assert delivery.take("W") == [] and core.messages.latest_id("r") == 0
    core.message("W", '{"action":"sendmessage","text":"to all"}')
    assert "to all" in delivery.take("R")[-1]


def test_a_refresh_moves_the_expiry(delivery: RecordingDelivery, clock: FakeClock) -> None:
    later = clock.now + 3600
    book = TokenBook(fresh=granted("u", later, r=["read", "write"]))
    core = rights_core(delivery, clock, book)
    join(core, "J", "r", granted("u", clock.now + 10, r=["read", "write"]), JSON)
    delivery.take("J")
    core.message("J", '{"action":"refresh","token":"fresh"}')
    assert delivery.take_json("J") == [{"type": "refreshed", "expires_at": later}]
    clock.now += 60  # past the first token's expiry
    assert core.expire_if_due("J") == later
    core.message("J", '{"action":"ping"}')
    assert delivery.take_json("J") == [{"type": "pong"}]
    clock.now = later
    assert core.expire_if_due("J") is None
    assert delivery.closed["J"][0] == 4401


@pytest.mark.parametrize(
    ("token", "reason"),
    [("other", "another user's"), ("forged", "invalid token"), ("expired", "token expired")],
)
def test_a_refused_refresh_keeps_the_old_expiry(
    delivery: RecordingDelivery, clock: FakeClock, token: str, reason: str
) -> None:
    book = TokenBook(
        other=granted("someone-else", clock.now + 3600, r=["read"]),
        expired=AuthError("token expired"),
    )
    core = rights_core(delivery, clock, book)
    join(core, "J", "r", granted("u", clock.now + 10, r=["read"]), JSON)
    delivery.take("J")
    core.message("J", json.dumps({"action": "refresh", "token": token}))
    [error] = delivery.take_json("J")
    assert (error["code"], reason in error["detail"]) == ("refresh_failed", True)
    assert core.expire_if_due("J") == clock.now + 10 and "J" not in delivery.closed


def test_a_refresh_whose_read_right_is_gone_closes_4403(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    book = TokenBook(narrower=granted("u", clock.now + 3600, elsewhere=["read"]))
    core = rights_core(delivery, clock, book)
    join(core, "J", "r", granted("u", clock.now + 10, r=["read"]), JSON)
    delivery.take("J")
    core.message("J", '{"action":"refresh","token":"narrower"}')
    assert delivery.take_json("J")[-1]["code"] == "forbidden"
    assert delivery.closed["J"][0] == 4403


def test_a_refresh_without_write_keeps_the_reader(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    book = TokenBook(read=granted("u", clock.now + 3600, r=["read"]))
    core = rights_core(delivery, clock, book)
    join(core, "J", "r", granted("u", clock.now + 10, r=["read", "write"]), JSON)
    delivery.take("J")
    core.message("J", '{"action":"refresh","token":"read"}')
    core.message("J", '{"action":"sendmessage","text":"hi"}')
    assert [f.get("code", f["type"]) for f in delivery.take_json("J")] == ["refreshed", "forbidden"]
    assert "J" not in delivery.closed


def test_refresh_needs_a_credential_check(core: ChatCore, delivery: RecordingDelivery) -> None:
    join(core, "J", "r", principal("j"), JSON)
    delivery.take("J")
    core.message("J", '{"action":"refresh","token":"x"}')
    assert delivery.take_json("J")[0]["code"] == "refresh_failed"


def test_a_resume_from_another_epoch_is_not_recovered(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    for text in ("one", "two"):
        core.publish("r", "id-w", "w", text)
    join(core, "J", "r", principal("j"), JSON)
    epoch = delivery.take_json("J")[0]["epoch"]
    core.connect("K", "r", principal("k"), JSON)
    core.welcome("K", since=1, epoch=epoch)
    welcome = delivery.take_json("K")[0]
    assert (welcome["recovered"], [m["text"] for m in welcome["history"]]) == (True, ["two"])
    core.connect("L", "r", principal("l"), JSON)
    core.welcome("L", since=1, epoch="an epoch of another life")
    welcome = delivery.take_json("L")[0]
    assert (welcome["recovered"], [m["text"] for m in welcome["history"]]) == (
        False,
        ["one", "two"],
    )


@pytest.mark.parametrize(
    "frame",
    [
        '{"action":"refresh","token":"s3cret"}',
        ' {"token": "s3cret", "action": "refresh"}\n',
        '{"\\u0061ction":"refresh","token":"s3cret"}',
        '{"action":"refresh"}',
    ],
)
@pytest.mark.parametrize("together", [False, True], ids=["alone", "with others"])
def test_a_text_dialect_refresh_request_is_refused_not_broadcast(
    core: ChatCore, delivery: RecordingDelivery, frame: str, together: bool
) -> None:
    join(core, "a", "r", principal("alice"), TEXT)
    join(core, "b", "r", principal("bob"), JSON)
    delivery.take("a"), delivery.take("b")
    if together:  # as the uvicorn transport hands over frames that arrived together
        core.receive("a", ["before", frame, "after"])
    else:
        core.message("a", frame)
    assert "s3cret" not in "".join(delivery.take("a") + delivery.take("b"))
    assert all("refresh" not in m.text for m in core.messages.recent("r", 10))
    core.message("a", "{not json at all")  # still a chat line
    assert core.messages.recent("r", 1)[0].text == "{not json at all"


def test_a_text_dialect_refresh_request_gets_a_reason(
    core: ChatCore, delivery: RecordingDelivery
) -> None:
    join(core, "a", "r", principal("alice"), TEXT)
    delivery.take("a")
    core.message("a", '{"action":"refresh","token":"s3cret"}')
    assert delivery.take("a") == [wire.error_line(TEXT_REFRESH)]


def test_a_refresh_the_store_cannot_take_now_is_refused_to_send_again(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    class BusyRecords(MemoryConnections):
        def refresh(self, connection_id: str, expires_at: float | None, rights: Rights) -> bool:
            raise StoreBusy("its record stayed busy")

    book = TokenBook(fresh=granted("u", clock.now + 3600, r=["read"]))
    core = ChatCore(
        BusyRecords(), MemoryMessageLog(), delivery, Limits(), clock, clock, credentials=book
    )
    join(core, "J", "r", granted("u", clock.now + 10, r=["read"]), JSON)
    delivery.take("J")
    core.message("J", '{"action":"refresh","token":"fresh"}')
    [error] = delivery.take_json("J")
    assert (error["code"], "again" in error["detail"]) == ("refresh_failed", True)
    assert core.connections.get("J") is not None and "J" not in delivery.closed


def test_a_refused_send_names_its_client_msg_id(
    core: ChatCore, delivery: RecordingDelivery, connections: MemoryConnections
) -> None:
    """A client settles each send by its `client_msg_id`: the refusal names it."""
    join(core, "a", "r", principal("alice"), JSON)
    delivery.take("a")
    core.message("a", '{"action":"sendmessage","text":" ","client_msg_id":"k"}')
    [error] = delivery.take_json("a")
    assert (error["code"], error["client_msg_id"]) == ("empty_message", "k")
    core.message("a", '{"action":"sendmessage","text":" "}')  # no key: none named
    assert "client_msg_id" not in delivery.take_json("a")[0]
    reader = connections.get("a")
    assert reader is not None
    connections.add(replace(reader, rights=frozenset({Right.READ})))
    core.message("a", '{"action":"sendmessage","text":"hi","client_msg_id":"k2"}')
    assert delivery.take_json("a") == [
        {"type": "error", "code": "forbidden", "detail": NOT_WRITABLE, "client_msg_id": "k2"}
    ]
