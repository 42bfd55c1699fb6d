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
        """The room started over under `epoch`: its ids begin above `epoch_base(epoch)` (a
        mark already under it, from the read that found it, stands)."""
        held = self._marks.get(room)
        if held is not None and held[0] != epoch:
            self._marks[room] = (epoch, epoch_base(epoch), "")


def epoch_base(epoch: str) -> int:
    """The id an epoch's new ids begin above. A room made afresh (its counter missing) counts
    from 1 under a plain epoch; one started over because its counter was behind a caller's
    mark goes on from its counter, and its epoch says where: `<random>+<counter>`. What its
    stream holds up to there (the writes the failover kept) stays, as its history under the
    new epoch, with no gap; the ids above, which the lost writes had under the old epoch,
    are new ones under the new epoch."""
    _, plus, base = epoch.partition("+")
    return int(base) if plus and base.isdigit() else 0
