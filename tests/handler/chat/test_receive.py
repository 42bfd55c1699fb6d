"""`ChatCore.receive`: frames that arrived together, handled as `message` would one at a time,
with the chat messages among them stored together."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from auth.principal import Principal
from auth.rooms import Right
from handler.chat.core import ChatCore, ConnectParams, Limits
from handler.chat.ports import ChatMessage, Dialect, Draft, StoreBusy, Stored
from infra.memory.connections import MemoryConnections
from infra.memory.message_log import MemoryMessageLog
from tests.handler.chat.recording import RecordingDelivery

JSON = ConnectParams(Dialect.JSON)
TEXT = ConnectParams(Dialect.TEXT)
LIMITS = Limits(max_message_bytes=64, rate_per_second=2, rate_burst=5, rate_abuse_strikes=3)


def send(text: str, client_msg_id: str | None = None) -> str:
    action: dict[str, Any] = {"action": "sendmessage", "text": text}
    if client_msg_id is not None:
        action["client_msg_id"] = client_msg_id
    return json.dumps(action)


class Log(MemoryMessageLog):
    """The in-memory log, counting each `append_many`'s drafts; a text of "busy" is refused
    as DynamoDB refuses a message when too many publishers contend."""

    def __init__(self) -> None:
        super().__init__(size=100, clock=lambda: 1000.0)
        self.batches: list[int] = []

    def append(self, draft: Draft) -> tuple[ChatMessage, bool]:
        if draft.text == "busy":
            raise StoreBusy("contended")
        return super().append(draft)

    def append_many(self, drafts: Sequence[Draft]) -> Sequence[Stored]:
        self.batches.append(len(drafts))
        return super().append_many(drafts)


class Room:
    """A core with two members: "j" (the sender, JSON unless said otherwise) and "k" (JSON)."""

    def __init__(self, sender: ConnectParams = JSON) -> None:
        self.delivery = RecordingDelivery()
        self.log = Log()
        self.core = ChatCore(
            MemoryConnections(), self.log, self.delivery, LIMITS, lambda: 1000.0, lambda: 1000.0
        )
        for cid, params in (("j", sender), ("k", JSON)):
            self.core.connect(cid, "room", Principal(id=cid, name=cid, echo=cid), params)
            self.core.welcome(cid)
        self.delivery.take("j")
        self.delivery.take("k")

    def one_at_a_time(self, frames: Sequence[str | bytes]) -> None:
        """What the transport did before: a call per frame, none once a close is on its way."""
        for frame in frames:
            if "j" not in self.delivery.closed:
                self.core.message("j", frame)

    def together(self, frames: Sequence[str | bytes]) -> None:
        """What the uvicorn transport does now (handler/local/socket.py)."""
        while frames and "j" not in self.delivery.closed:
            frames = frames[self.core.receive("j", frames) :]

    def outcome(self) -> tuple[object, ...]:
        stored = [(m.id, m.text) for m in self.log.recent("room", 100)]
        return self.delivery.frames["j"], self.delivery.frames["k"], self.delivery.closed, stored


SEQUENCES = {
    "sends, a repeat, a ping, history": [
        send("one", "c1"),
        send("one", "c1"),
        '{"action":"ping"}',
        send("two"),
        '{"action":"history","since":0}',
    ],
    "errors between sends": [
        send("one"),
        send("   "),
        "not json",
        send("two"),
        b"binary",
        send("three"),
    ],
    "a refused store between two": [send("one"), send("busy"), send("two")],
    "a refused store with its key": [send("busy", "kb"), send("two")],
    "over the rate, then closed for abuse": [send(f"m{i}") for i in range(12)],
    "an oversized frame closes; what follows is not stored": [
        send("one"),
        send("x" * 80),
        send("two"),
    ],
    "a repeat in the same batch": [send("a", "same"), send("b"), send("a", "same")],
}


TEXT_SEQUENCES = {
    "lines": ["one", "two", "three"],
    "an empty line and a binary frame between lines": ["one", "  ", "two", b"bin", "three"],
    "over the rate, then closed for abuse": [f"m{i}" for i in range(12)],
    "an oversized line closes; what follows is not stored": ["one", "x" * 80, "two"],
    "a refused store between two": ["one", "busy", "two"],
}


@pytest.mark.parametrize(
    ("sender", "frames"),
    [
        *((JSON, frames) for frames in SEQUENCES.values()),
        *((TEXT, frames) for frames in TEXT_SEQUENCES.values()),
    ],
    ids=[*(f"json: {n}" for n in SEQUENCES), *(f"text: {n}" for n in TEXT_SEQUENCES)],
)
def test_frames_together_do_exactly_what_they_do_one_at_a_time(
    sender: ConnectParams, frames: list[str | bytes]
) -> None:
    one, together = Room(sender), Room(sender)
    one.one_at_a_time(frames)
    together.together(frames)
    assert together.outcome() == one.outcome()
    assert together.outcome()[0]  # the sender heard something: the comparison is not empty


def test_the_sends_at_the_head_are_stored_in_one_call_and_the_rest_in_order() -> None:
    room = Room()
    frames: list[str | bytes] = [send("a"), send("b"), send("c"), '{"action":"ping"}', send("d")]
    assert room.core.receive("j", frames) == 3
    assert room.log.batches == [3]
    assert [json.loads(f)["text"] for f in room.delivery.take("k")] == ["a", "b", "c"]
    assert room.core.receive("j", frames[3:]) == 1  # the ping, alone
    assert room.core.receive("j", frames[4:]) == 1
    assert room.log.batches == [3, 1]
    assert [json.loads(f).get("text") for f in room.delivery.take("j")] == [
        "a",
        "b",
        "c",
        None,  # the pong, after the messages before it and before the one after it
        "d",
    ]


def test_a_send_without_the_right_to_write_is_refused_not_stored() -> None:
    room = Room()
    room.core.connect(
        "r",
        "room",
        Principal(id="r", name="r", echo="r"),
        ConnectParams(Dialect.JSON, rights=frozenset({Right.READ})),
    )
    room.core.welcome("r")
    room.delivery.take("r")
    assert room.core.receive("r", [send("a"), send("b")]) == 1
    assert json.loads(room.delivery.take("r")[0])["code"] == "forbidden"
    assert room.log.batches == []


def test_a_busy_refusal_names_its_send_on_both_paths() -> None:
    for deliver in ("one_at_a_time", "together"):
        room = Room()
        getattr(room, deliver)([send("busy", "kb")])
        [error] = room.delivery.take_json("j")
        assert (error["code"], error["client_msg_id"]) == ("busy", "kb")
