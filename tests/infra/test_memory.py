from __future__ import annotations

from handler.ports import Connection, Dialect
from infra.memory import MemoryConnections, MemoryMessageLog


def conn(cid: str, room: str) -> Connection:
    return Connection(cid, room, "u", "u", Dialect.TEXT, "echo")


def test_connections_by_room_and_removal() -> None:
    store = MemoryConnections()
    store.add(conn("a", "r1"))
    store.add(conn("b", "r1"))
    store.add(conn("c", "r2"))
    assert {c.id for c in store.in_room("r1")} == {"a", "b"}
    assert store.remove("a") == conn("a", "r1")
    assert store.remove("a") is None
    assert [c.id for c in store.in_room("r1")] == ["b"]
    store.add(conn("b", "r2"))  # re-adding moves it
    assert store.in_room("r1") == []
    assert len(store) == 2


def test_ids_increase_per_room_and_the_ring_is_bounded() -> None:
    log = MemoryMessageLog(size=3)
    ids = [log.append("r", "u", "u", f"m{i}", None)[0].id for i in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert log.append("other", "u", "u", "x", None)[0].id == 1
    assert [m.text for m in log.recent("r", 10)] == ["m2", "m3", "m4"]
    assert [m.id for m in log.after("r", 0, 10)] == [3, 4, 5]  # older ones fell off the ring
    assert [m.id for m in log.after("r", 3, 10)] == [4, 5]
    assert [m.id for m in log.after("r", 4, 1)] == [5]
    assert log.after("r", 5, 10) == []
    assert log.after("nowhere", 0, 10) == []
    assert log.latest_id("r") == 5 and log.latest_id("nowhere") == 0


def test_client_msg_id_dedup_is_per_user() -> None:
    log = MemoryMessageLog()
    first, created = log.append("r", "alice", "Alice", "hi", "c1")
    again, created_again = log.append("r", "alice", "Alice", "hi", "c1")
    other, created_other = log.append("r", "bob", "Bob", "hi", "c1")
    assert created and not created_again and created_other
    assert again == first and other.id == 2
