"""The Broadcast and Delivery ports (handler/chat/ports.py), one suite run against every
engine, through the core as the transports drive it: what the core hands a room reaches each
of its members once, in id order, and no one else; presence reaches the room's other JSON
members; a member found gone is forgotten without costing the others their copy; a close
comes after what was queued before it.

Who carries a room's news differs by engine (docs/architecture.md): memory and DynamoDB
deliver from the core to every member in the store, Redis from the room's channel to each
worker's own members. The guarantees are the same."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from auth.principal import Principal
from handler.chat.core import ConnectParams
from handler.chat.ports import Connection, Dialect
from handler.chat.wire import CloseCode
from tests.ports.engines import Engine
from tests.support import presence

T = TypeVar("T")
SETTLE = 0.3  # after the last awaited frame: long enough for a stray extra one to show


def joined(
    engine: Engine, cid: str, room: str = "r", dialect: Dialect = Dialect.JSON
) -> Connection:
    """A member as a handshake makes one: its socket, `connect`, then `welcome`."""
    engine.open(cid)
    principal = Principal(f"id-{cid}", f"name-{cid}", "")
    params = ConnectParams(dialect=dialect)
    connection = engine.call(engine.core.connect, cid, room, principal, params)
    engine.call(engine.core.welcome, cid)
    return connection


def of_type(engine: Engine, cid: str, kind: str) -> list[dict[str, Any]]:
    return [frame for frame in map(json.loads, engine.frames(cid)) if frame["type"] == kind]


def until(done: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for `done()` (on Redis a room's news reaches its members through the worker's
    subscription, a moment after the call that made it)."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def settled(read: Callable[[], list[T]], count: int) -> list[T]:
    """`read()` once it holds `count` items, and a moment more, for one too many to show."""
    until(lambda: len(read()) >= count)
    time.sleep(SETTLE)
    return read()


def test_a_message_reaches_each_member_of_its_room_once_in_order(engine: Engine) -> None:
    a, b = joined(engine, "a"), joined(engine, "b")
    t = joined(engine, "t", dialect=Dialect.TEXT)
    joined(engine, "elsewhere", room="r2")
    senders = [a, b, t, a, b, t, a, b]
    for n, sender in enumerate(senders):
        engine.call(
            engine.core.publish, "r", sender.user_id, sender.user_name, f"m{n}", None, sender
        )
    for cid in ("a", "b"):  # a JSON sender gets its own message too, with its id
        received = settled(functools.partial(of_type, engine, cid, "message"), len(senders))
        assert [(m["id"], m["text"]) for m in received] == [
            (n + 1, f"m{n}") for n in range(len(senders))
        ]
    # The text sender had its seed's echo instead: the room's copy of its own is left out.
    expected = [f"{s.user_name}: m{n}" for n, s in enumerate(senders) if s is not t]
    assert settled(lambda: engine.frames("t"), len(expected)) == expected
    assert of_type(engine, "elsewhere", "message") == []


def test_presence_reaches_the_rooms_other_json_members_with_the_count(engine: Engine) -> None:
    joined(engine, "a")
    joined(engine, "b")
    joined(engine, "t", dialect=Dialect.TEXT)
    joined(engine, "elsewhere", room="r2")
    settled(lambda: presence.events(of_type(engine, "b", "presence")), 1)
    engine.call(engine.core.disconnect, "b")
    events = settled(lambda: presence.events(of_type(engine, "a", "presence")), 3)
    # Batched or not, the joins and leaves come in order, each with a count that holds.
    assert [(event, user) for event, user, _ in events] == [
        ("join", "id-b"),
        ("join", "id-t"),
        ("leave", "id-b"),
    ]
    assert events[-1][2] == 2
    # b saw t join, never itself; text members and other rooms see no presence at all.
    assert presence.events(of_type(engine, "b", "presence")) == [("join", "id-t", 3)]
    assert engine.frames("t") == []
    assert of_type(engine, "elsewhere", "presence") == []


def test_a_member_found_gone_is_forgotten_and_the_others_still_get_theirs(engine: Engine) -> None:
    """Delivery reports a recipient it cannot reach; the core forgets it (once past its
    handshake's grace) and tells the room it left, and the others' copies go out regardless."""
    watcher = joined(engine, "watcher")
    joined(engine, "listener", dialect=Dialect.TEXT)
    engine.call(
        engine.core.connect,
        "ghost",
        "r",
        Principal("id-ghost", "name-ghost", ""),
        ConnectParams(dialect=Dialect.TEXT),
    )
    store = engine.connections
    ghost = store.get("ghost")
    assert ghost is not None
    store.add(replace(ghost, connected_at=time.time() - 3600))  # past its grace
    engine.lose("ghost")
    engine.call(
        engine.core.publish, "r", watcher.user_id, watcher.user_name, "anyone?", None, watcher
    )
    assert [m["text"] for m in settled(lambda: of_type(engine, "watcher", "message"), 1)] == [
        "anyone?"
    ]
    assert engine.frames("listener") == ["name-watcher: anyone?"]
    until(lambda: store.get("ghost") is None)
    assert sorted(c.id for c in store.in_room("r")) == ["listener", "watcher"]
    # The ghost's join and leave, or neither if they fell in one batch; the count says 2.
    until(
        lambda: (
            (e := presence.events(of_type(engine, "watcher", "presence")))[-1:] != []
            and e[-1][2] == 2
        )
    )
    assert presence.present(of_type(engine, "watcher", "presence")) == {"id-listener": 1}


def test_a_close_comes_after_the_frames_queued_before_it(engine: Engine) -> None:
    joined(engine, "m", dialect=Dialect.TEXT)
    delivery = engine.core.delivery

    def send_then_close() -> None:
        for n in range(3):
            assert list(delivery.send(["m"], f"f{n}")) == []
        delivery.close("m", CloseCode.TOKEN_EXPIRED, "token expired")

    engine.call(send_then_close)
    until(lambda: engine.closed("m") is not None)
    assert engine.closed("m") == 3 and engine.frames("m") == ["f0", "f1", "f2"]
