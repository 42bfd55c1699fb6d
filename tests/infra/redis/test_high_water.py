"""What a worker holds Redis to per room (infra/redis/high_water.py), without Redis: the
scripts that read the marks are tested against a real redis-server in test_engine.py."""

from __future__ import annotations

from infra.redis.high_water import NO_MARK, HighWater, epoch_bounds


def test_a_mark_rises_under_its_epoch_and_a_new_epoch_replaces_it() -> None:
    marks = HighWater()
    marks.hold("r")
    marks.saw("r", "e1", 5, 100.5)
    marks.saw("r", "e1", 3, 99.0)  # older news: the mark stays
    assert marks.mark("r") == ("e1", 5, "100.5")
    marks.saw("r", "e2+5", 6, 101.25)  # Redis says the room is under another epoch now
    assert marks.mark("r") == ("e2+5", 6, "101.25")


def test_a_mark_read_from_the_counter_learns_its_messages_time_when_delivered() -> None:
    marks = HighWater()
    marks.hold("r")
    marks.saw("r", "e1", 7)  # the room's latest id, read: no message, no time
    assert marks.mark("r") == ("e1", 7, "")
    marks.saw("r", "e1", 7, 1796389191.5560274)  # then delivered
    assert marks.mark("r") == ("e1", 7, "1796389191.5560274")


def test_only_held_rooms_keep_a_mark() -> None:
    marks = HighWater()
    marks.saw("rest-only", "e1", 9, 1.0)  # a REST publication to a room with no member here
    assert marks.mark("rest-only") == NO_MARK
    marks.hold("r")
    marks.saw("r", "e1", 2, 1.0)
    marks.drop("r")
    assert marks.mark("r") == NO_MARK


def test_a_restart_heard_keeps_a_mark_already_under_the_new_epoch() -> None:
    """The catch-up that found the counter behind read the new epoch and its latest id;
    hearing the restart then must not lower the mark to the epoch's base."""
    marks = HighWater()
    marks.hold("r")
    marks.saw("r", "e1", 9, 1.0)
    marks.saw("r", "e2+4", 6)
    marks.restarted("r", "e2+4")
    assert marks.mark("r") == ("e2+4", 6, "")
    marks.restarted("r", "e3+6")
    assert marks.mark("r") == ("e3+6", 6, "")


def test_an_epoch_says_what_it_kept_and_where_its_new_ids_begin() -> None:
    epochs = ("a1b2", "a1b2+41", "a1b2~41", "", "a1b2+x")
    assert [epoch_bounds(e) for e in epochs] == [(0, 0), (41, 41), (0, 41), (0, 0), (0, 0)]
