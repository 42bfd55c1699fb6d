"""What this worker has seen of each room's ids: the highest id under the room's epoch.

Redis replicates asynchronously: a replica promoted after its primary died may lack the
primary's last writes, so a room's counter there is behind ids that clients were already
sent, under the same epoch. Handed out again, those ids would be dropped as repeats by every
client that holds them, and a resume would say `recovered: true` over the gap. So each call
that reads or bumps a room's counter carries the caller's mark (here, for a worker; a
client's `since` and `epoch` for its welcome), and the script starts the room over under a
new epoch when its counter is behind it (infra/redis/history.py, `PUBLISH` and `LATEST`).
docs/scaling.md, "Redis in production", has the cases this covers and the one it cannot.
"""

from __future__ import annotations

# (epoch, the highest id seen under it, and that message's `ts` as text, "" if not known):
# the time tells the message that had the id from another that took it again.
Mark = tuple[str, int, str]
NO_MARK: Mark = ("", 0, "")


class HighWater:
    """The marks of the rooms this worker holds (those with members here: `hold`, `drop`),
    raised by what it delivers and what its publications are given. A room not held keeps no
    mark, so every room name ever published to from here (REST) is not kept for good."""

    def __init__(self) -> None:
        self._marks: dict[str, Mark] = {}

    def hold(self, room: str) -> None:
        self._marks.setdefault(room, NO_MARK)

    def drop(self, room: str) -> None:
        self._marks.pop(room, None)

    def mark(self, room: str) -> Mark:
        """The room's mark, or NO_MARK (no epoch: nothing to hold Redis to)."""
        return self._marks.get(room, NO_MARK)

    def saw(self, room: str, epoch: str, message_id: int, ts: float | None = None) -> None:
        """Redis said `epoch` is the room's and `message_id` one of its ids (the id of a
        message sent at `ts`, if given): a new epoch is the room's now (Redis made it), and
        under the same one the mark only rises."""
        held = self._marks.get(room)
        if held is None or not epoch:
            return
        held_epoch, held_id, held_ts = held
        # repr: the shortest text that reads back as the same float, in Lua as in Python.
        when = "" if ts is None else repr(ts)
        rises = epoch != held_epoch or message_id > held_id
        if rises or (message_id == held_id and when and not held_ts):  # or its time learnt
            self._marks[room] = (epoch, message_id, when)

    def restarted(self, room: str, epoch: str) -> None:
        """The room started over under `epoch`: its new ids begin above its `next`
        (epoch_bounds; a mark already under it, from the read that found it, stands)."""
        held = self._marks.get(room)
        if held is not None and held[0] != epoch:
            self._marks[room] = (epoch, epoch_bounds(epoch)[1], "")


def epoch_bounds(epoch: str) -> tuple[int, int]:
    """Where an epoch's ids stand against the epoch before it: (kept, next), ids up to `kept`
    being the same messages under both, and new ids beginning above `next`. A room made
    afresh (its counter missing, its stream emptied) is (0, 0): `<random>`. One started over
    because its counter was behind a caller's mark goes on from its counter, N, and keeps
    its stream, which the failover kept whole up to there: `<random>+N`, (N, N). One
    started over because a message at a caller's mark was not the one the caller saw (the
    ids were taken again) also goes on from N, but which of its ids up to N are the old
    messages nobody knows: `<random>~N`, (0, N)."""
    for mark, kept in (("+", True), ("~", False)):
        _, found, number = epoch.partition(mark)
        if found and number.isdigit():
            return (int(number) if kept else 0), int(number)
    return 0, 0
