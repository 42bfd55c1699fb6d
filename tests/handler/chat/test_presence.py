"""Presence in batches (handler/chat/presence.py): one frame per room and interval, the seam
with a newcomer's welcome, and the count alone above the occupancy threshold."""

from __future__ import annotations

import json

import pytest

from auth.principal import Principal
from handler.chat.core import ChatCore, ConnectParams, Limits
from handler.chat.ports import Connection, Dialect
from infra.memory.connections import MemoryConnections
from infra.memory.message_log import MemoryMessageLog
from tests.handler.chat.recording import FakeClock, ManualTimer, RecordingDelivery
from tests.support import presence

JSON = ConnectParams(Dialect.JSON)
TEXT = ConnectParams(Dialect.TEXT)


@pytest.fixture
def timer() -> ManualTimer:
    return ManualTimer()


def batching(
    delivery: RecordingDelivery,
    clock: FakeClock,
    timer: ManualTimer,
    occupancy: int = 200,
    connections: MemoryConnections | None = None,
) -> ChatCore:
    limits = Limits(presence_interval=0.3, presence_occupancy=occupancy)
    store = connections if connections is not None else MemoryConnections()
    return ChatCore(store, MemoryMessageLog(), delivery, limits, clock, clock, timer=timer)


def enter(core: ChatCore, cid: str, room: str = "r", params: ConnectParams = JSON) -> None:
    core.connect(cid, room, Principal(f"id-{cid}", cid, ""), params)
    core.welcome(cid)


def frames(delivery: RecordingDelivery, cid: str) -> list[dict[str, object]]:
    return [f for f in delivery.take_json(cid) if f["type"] == "presence"]


def test_joins_and_leaves_within_an_interval_go_out_in_one_frame(
    delivery: RecordingDelivery, clock: FakeClock, timer: ManualTimer
) -> None:
    core = batching(delivery, clock, timer)
    enter(core, "w")
    enter(core, "a")
    timer.run()
    delivery.take("w")
    enter(core, "b")
    enter(core, "t", params=TEXT)
    enter(core, "flicker")
    core.disconnect("flicker")  # joined and left within the interval: in neither list
    core.disconnect("a")
    enter(core, "elsewhere", room="r2")
    assert frames(delivery, "w") == []  # nothing until the interval is over
    timer.run()
    assert frames(delivery, "w") == [
        {
            "type": "presence",
            "room": "r",
            "joins": [{"id": "id-b", "name": "b"}, {"id": "id-t", "name": "t"}],
            "leaves": [{"id": "id-a", "name": "a"}],
            "count": 3,
        }
    ]
    assert timer.waiting == []  # a quiet room sets no timer
    assert delivery.take("t")[-1:] != ["presence"] and frames(delivery, "elsewhere") == []


def test_a_room_gets_at_most_one_frame_per_interval(
    delivery: RecordingDelivery, clock: FakeClock, timer: ManualTimer
) -> None:
    core = batching(delivery, clock, timer)
    enter(core, "w")
    for n in range(50):
        enter(core, f"c{n}")
    assert len(timer.waiting) == 1  # one timer per room and interval, not one per join
    timer.run()
    (frame,) = frames(delivery, "w")
    assert (len(frame["joins"]), frame["count"]) == (50, 51)  # type: ignore[arg-type]


def test_a_newcomer_hears_what_came_after_its_welcome_neither_more_nor_less(
    delivery: RecordingDelivery, clock: FakeClock, timer: ManualTimer
) -> None:
    """The welcome's count already holds the joins and leaves of the interval so far, the
    newcomer's own among them: its first frame has only what came after."""
    core = batching(delivery, clock, timer)
    enter(core, "old")
    enter(core, "before")
    timer.run()
    delivery.take("old")
    enter(core, "early")  # in the interval, before the newcomer
    core.disconnect("before")
    enter(core, "new")
    (welcome,) = delivery.take_json("new")
    assert (welcome["type"], welcome["count"]) == ("welcome", 3)
    enter(core, "late")
    core.disconnect("early")
    timer.run()
    assert frames(delivery, "new") == [
        {
            "type": "presence",
            "room": "r",
            "joins": [{"id": "id-late", "name": "late"}],
            "leaves": [{"id": "id-early", "name": "early"}],
            "count": 3,
        }
    ]
    # The room's others hear the whole interval, the newcomer's join included.
    assert presence.events(frames(delivery, "old")) == [
        ("join", "id-new", 3),
        ("join", "id-late", 3),
        ("leave", "id-before", 3),
    ]
    enter(core, "next")  # and from here on, the newcomer hears what the room hears
    timer.run()
    assert presence.events(frames(delivery, "new")) == [("join", "id-next", 4)]


def test_a_batch_sent_while_a_welcome_is_on_its_way_follows_that_welcome(
    delivery: RecordingDelivery, clock: FakeClock, timer: ManualTimer
) -> None:
    """On Redis the welcome counts the room, sends its frames and only then opens the gate,
    with round trips between: a batch going out meanwhile skips the newcomer (its gate is
    shut), so the part the count lacks follows the welcome at once."""

    class SlowGate(MemoryConnections):
        def mark_welcomed(
            self, connection_id: str, room: str, through_id: int, force: bool = False
        ) -> bool:
            if connection_id == "new" and "k" not in [c.id for c in self.in_room(room)]:
                core.connect("k", room, Principal("id-k", "k", ""), JSON)  # joins meanwhile
                timer.run()  # and the interval ends
            return super().mark_welcomed(connection_id, room, through_id, force)

    core = batching(delivery, clock, timer, connections=SlowGate())
    enter(core, "old")
    timer.run()
    enter(core, "new")
    received = delivery.take_json("new")
    assert [f["type"] for f in received] == ["welcome", "presence"]
    assert received[0]["count"] == 2
    assert presence.events(received) == [("join", "id-k", 3)]
    assert presence.events(frames(delivery, "old")) == [("join", "id-new", 3), ("join", "id-k", 3)]
    timer.run()
    assert frames(delivery, "new") == []  # no repeat


def test_a_join_between_a_newcomers_connect_and_its_welcome_comes_after_the_welcome(
    delivery: RecordingDelivery, clock: FakeClock, timer: ManualTimer
) -> None:
    """The welcome counts the room as the newcomer's join left it (the store says so with
    the join): one who joined before the welcome went out is not in that count, and comes
    in the first frame, once."""

    class Counting(MemoryConnections):
        reads = 0

        def count(self, room: str) -> int:
            self.reads += 1
            return super().count(room)

    store = Counting()
    core = batching(delivery, clock, timer, connections=store)
    enter(core, "old")
    timer.run()
    core.connect("new", "r", Principal("id-new", "new", ""), JSON)
    core.connect("k", "r", Principal("id-k", "k", ""), JSON)  # while new's handshake ends
    reads = store.reads  # each join's announcement read the count
    core.welcome("new")
    core.welcome("k")
    assert store.reads == reads  # the welcomes did not: each came with its join
    (welcome,) = delivery.take_json("new")
    assert (welcome["type"], welcome["count"]) == ("welcome", 2)
    timer.run()
    assert presence.events(frames(delivery, "new")) == [("join", "id-k", 3)]


def test_above_the_occupancy_threshold_the_room_gets_the_count_alone(
    delivery: RecordingDelivery, clock: FakeClock, timer: ManualTimer
) -> None:
    core = batching(delivery, clock, timer, occupancy=3)
    for cid in ("w", "a", "b"):
        enter(core, cid)
    timer.run()
    assert presence.events(frames(delivery, "w")) == [("join", "id-a", 3), ("join", "id-b", 3)]
    enter(core, "c")  # 4: over the threshold
    enter(core, "d")
    timer.run()
    assert frames(delivery, "w") == [{"type": "presence", "room": "r", "count": 5}]
    core.message("w", '{"action":"members"}')  # who is there is still a question away
    (members,) = delivery.take_json("w")
    assert [u["id"] for u in members["members"]] == ["id-a", "id-b", "id-c", "id-d", "id-w"]
    enter(core, "e")
    core.disconnect("e")  # the count stands: no frame at all
    timer.run()
    assert frames(delivery, "w") == []
    core.disconnect("d")
    core.disconnect("c")  # back to 3: joins and leaves again
    timer.run()
    assert presence.events(frames(delivery, "w")) == [("leave", "id-d", 3), ("leave", "id-c", 3)]


def test_a_big_rooms_newcomer_gets_the_count_after_its_welcome_if_it_moved(
    delivery: RecordingDelivery, clock: FakeClock, timer: ManualTimer
) -> None:
    core = batching(delivery, clock, timer, occupancy=1)
    enter(core, "a")
    enter(core, "b")
    timer.run()
    assert frames(delivery, "a") == [{"type": "presence", "room": "r", "count": 2}]
    assert frames(delivery, "b") == []  # its welcome said 2 already


def test_without_a_timer_each_event_goes_out_at_once_in_the_same_frame(
    delivery: RecordingDelivery, clock: FakeClock
) -> None:
    """Lambda: nothing runs between events, so presence is inline, one frame per event, in
    the batch's format; above the threshold, the count alone."""
    limits = Limits(presence_occupancy=2)
    core = ChatCore(MemoryConnections(), MemoryMessageLog(), delivery, limits, clock, clock)
    enter(core, "w")
    enter(core, "a")
    assert frames(delivery, "w") == [
        {
            "type": "presence",
            "room": "r",
            "joins": [{"id": "id-a", "name": "a"}],
            "leaves": [],
            "count": 2,
        }
    ]
    enter(core, "b")
    assert frames(delivery, "w") == [{"type": "presence", "room": "r", "count": 3}]


def test_an_idle_room_keeps_nothing(
    delivery: RecordingDelivery, clock: FakeClock, timer: ManualTimer
) -> None:
    core = batching(delivery, clock, timer)
    for n in range(20):
        enter(core, f"c{n}", room=f"room-{n}")
    timer.run()
    assert core._presence is not None and len(core._presence) == 0
    assert json.loads(delivery.take("c0")[0])["type"] == "welcome"


def test_a_join_and_a_welcome_read_no_member_list(
    delivery: RecordingDelivery, clock: FakeClock, timer: ManualTimer
) -> None:
    """A join into a room of N cost O(N) at once (its members read, to send it to each): a
    storm of N joins, O(N²). Now the batch reads them, once per interval."""

    class Counting(MemoryConnections):
        reads = 0

        def in_room(self, room: str) -> list[Connection]:
            self.reads += 1
            return list(super().in_room(room))

    store = Counting()
    core = batching(delivery, clock, timer, connections=store)
    for n in range(100):
        enter(core, f"c{n}")
    assert store.reads == 0
    timer.run()
    assert store.reads == 1
