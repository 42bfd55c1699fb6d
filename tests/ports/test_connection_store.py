"""The ConnectionStore port (handler/chat/ports.py), one suite run against every engine.

On Redis a worker's store lists its own members (`in_room`) and counts the room's members on
every worker (`count`); with one worker, as here, both are the whole room."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from auth.rooms import ALL, Right
from handler.chat.ports import DEFERRED_PRESENCE, Connection, Dialect, User
from tests.ports.engines import Engine

CONNECTED_AT = 1_800_000_000.25


def member(
    cid: str, room: str = "r", dialect: Dialect = Dialect.JSON, echo: str = "", **fields: Any
) -> Connection:
    return Connection(
        cid, room, f"id-{cid}", f"name-{cid}", dialect, echo, connected_at=CONNECTED_AT, **fields
    )


def test_a_connection_reads_back_as_it_was_added(engine: Engine) -> None:
    store = engine.connections
    reader = member("a", q=7, expires_at=1_900_000_000.5, rights=frozenset({Right.READ}))
    store.add(reader)
    assert store.get("a") == reader
    assert store.in_room("r") == [reader] and store.count("r") == 1
    # A text connection's echo (under token auth, its credential) comes back to its own
    # frames; the room's copies need not hold it (DynamoDB's never do).
    text = member("t", dialect=Dialect.TEXT, echo="tok-s3cret")
    store.add(text)
    assert store.get("t") == text
    listed = {c.id: c for c in store.in_room("r")}
    assert listed.keys() == {"a", "t"} and replace(listed["t"], echo="") == replace(text, echo="")


def test_a_room_lists_and_counts_its_own_members_only(engine: Engine) -> None:
    store = engine.connections
    for connection in (member("a"), member("b", dialect=Dialect.TEXT), member("c", room="r2")):
        store.add(connection)
    assert sorted(c.id for c in store.in_room("r")) == ["a", "b"]
    assert [c.id for c in store.in_room("r2")] == ["c"]
    assert (store.count("r"), store.count("r2")) == (2, 1)
    assert store.in_room("nowhere") == [] and store.count("nowhere") == 0
    assert store.get("nobody") is None


def test_users_are_the_rooms_distinct_users_up_to_a_limit(engine: Engine) -> None:
    store = engine.connections
    for cid, user in (("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c"), ("x", "x")):
        room = "r2" if cid == "x" else "r"
        store.add(replace(member(cid, room=room), user_id=f"id-{user}", user_name=user))
    everyone = {User("id-a", "a"), User("id-b", "b"), User("id-c", "c")}
    users = store.users("r", 10)
    assert len(users) == 3 and set(users) == everyone
    two = store.users("r", 2)
    assert len(two) == 2 and len(set(two)) == 2 and set(two) <= everyone
    assert store.users("nowhere", 10) == []
    store.remove("a1")
    assert {user.id for user in store.users("r", 10)} == {"id-a", "id-b", "id-c"}  # a2 stays
    store.remove("a2")
    assert {user.id for user in store.users("r", 10)} == {"id-b", "id-c"}


def test_adding_a_connection_again_replaces_its_record(engine: Engine) -> None:
    store = engine.connections
    store.add(member("a", q=1))
    store.add(member("a", q=2))
    assert store.get("a") == member("a", q=2)
    assert store.in_room("r") == [member("a", q=2)] and store.count("r") == 1


def test_remove_answers_the_record_once(engine: Engine) -> None:
    store = engine.connections
    leaving, staying = member("a", q=3), member("b")
    text = member("t", dialect=Dialect.TEXT, echo="tok-s3cret")
    for connection in (leaving, staying, text):
        store.add(connection)
    assert store.remove("a") == leaving
    assert store.remove("a") is None
    assert store.get("a") is None
    assert sorted(c.id for c in store.in_room("r")) == ["b", "t"] and store.count("r") == 2
    # What a leave is announced with. DynamoDB answers the record as it deleted it, its
    # sealed echo unopened: a leave has no use for it.
    assert store.remove("t") == (replace(text, echo="") if engine.name == "dynamodb" else text)
    assert store.remove("never") is None
    assert store.in_room("r") == [staying] and store.count("r") == 1


def test_a_refresh_sets_the_expiry_and_rights_and_keeps_the_rest(engine: Engine) -> None:
    store = engine.connections
    writer = member("a", q=5, expires_at=1_800_000_100.0)
    store.add(writer)
    assert store.mark_welcomed("a", "r", 0)
    assert store.refresh("a", 1_800_000_200.5, frozenset({Right.READ}))
    refreshed = replace(
        writer, welcomed_through=0, expires_at=1_800_000_200.5, rights=frozenset({Right.READ})
    )
    assert store.get("a") == refreshed and store.in_room("r") == [refreshed]
    assert store.refresh("a", None, ALL)  # a credential without `exp`
    assert store.get("a") == replace(refreshed, expires_at=None, rights=ALL)
    assert store.in_room("r") == [replace(refreshed, expires_at=None, rights=ALL)]
    store.remove("a")
    assert not store.refresh("a", 1_800_000_300.0, ALL)
    assert store.get("a") is None and store.in_room("r") == []  # and it stays gone
    assert not store.refresh("never", None, ALL)


def test_mark_welcomed_opens_the_gate_unless_the_room_moved_on(engine: Engine) -> None:
    """The welcome read the room up to `through_id`; a message published since must not slip
    between that read and the gate (docs/welcome-seam.md). DynamoDB checks the room's
    counter; a Redis worker, what it has delivered to its members; memory has nothing to
    check: its one event loop runs a welcome's read and its mark with nothing in between,
    so a message stored since cannot be."""
    store = engine.connections
    for cid in ("early", "late", "forced", "watcher"):
        engine.open(cid)
    early, late = member("early"), member("late")
    store.add(early)
    assert store.mark_welcomed("early", "r", 0)  # an empty room: nothing to miss
    store.add(late)
    store.add(member("watcher", dialect=Dialect.TEXT))
    engine.call(engine.core.publish, "r", "id-x", "x", "since the history was read")
    engine.wait_for("watcher", 1)  # it has reached the room's members
    assert store.mark_welcomed("late", "r", 0) is (engine.name == "memory")
    assert store.mark_welcomed("late", "r", 1)
    assert store.get("late") == replace(late, welcomed_through=1)
    store.add(member("forced"))
    assert store.mark_welcomed("forced", "r", 0, force=True)  # it pages on from 0 itself
    gates = {c.id: c.welcomed_through for c in store.in_room("r")}
    assert gates == {"early": 0, "late": 1, "forced": 0, "watcher": None}
    assert store.mark_welcomed("gone", "r", 0)  # nothing to wait for


def test_presence_is_kept_for_a_member_until_its_gate_opens(engine: Engine) -> None:
    """A presence event for a member whose welcome is on its way is kept until
    `mark_welcomed` opens its gate, then handed over once, in order; once the gate is open,
    the caller sends it itself. A member whose welcome never completes keeps at most
    DEFERRED_PRESENCE; one that is gone keeps none."""
    store = engine.connections
    waiting = member("m")
    store.add(waiting)
    assert store.defer_presence(waiting, "one") and store.defer_presence(waiting, "two")
    assert store.in_room("r") == [waiting] and store.get("m") == waiting  # as it was
    assert store.mark_welcomed("m", "r", 0)
    assert store.take_deferred(waiting) == ["one", "two"]
    assert store.take_deferred(waiting) == []
    assert not store.defer_presence(waiting, "three")  # open: the caller sends it now
    stuck = member("stuck")
    store.add(stuck)
    for n in range(DEFERRED_PRESENCE + 5):
        assert store.defer_presence(stuck, f"p{n}")
    assert store.mark_welcomed("stuck", "r", 0)
    assert store.take_deferred(stuck) == [f"p{n}" for n in range(DEFERRED_PRESENCE)]
    gone = member("gone")
    assert store.defer_presence(gone, "four")  # nothing to keep, nothing to send
    store.add(gone)
    assert store.defer_presence(gone, "five")
    store.remove("gone")
    store.add(gone)  # the same id again: what was kept for it went with it
    assert store.mark_welcomed("gone", "r", 0)
    assert store.take_deferred(gone) == []


def test_presence_numbers_where_frames_can_arrive_out_of_order(engine: Engine) -> None:
    """DynamoDB, where each join and leave is announced by its own invocation, numbers them
    per room, one at a time, from 1; memory and Redis announce a room's changes in order,
    and number nothing (their frames carry no `presence_seq`)."""
    store = engine.connections
    if engine.name != "dynamodb":
        assert (store.next_presence_seq("r"), store.presence_seq("r")) == (None, None)
        return
    assert store.presence_seq("r") == 0
    assert [store.next_presence_seq("r") for _ in range(3)] == [1, 2, 3]
    assert (store.presence_seq("r"), store.next_presence_seq("other")) == (3, 1)
