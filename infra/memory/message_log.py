"""The message log in memory: a bounded ring per room, all rooms within one byte budget."""

from __future__ import annotations

import heapq
import secrets
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice

from handler.chat.ports import ChatMessage, Draft, Stored, append_each, read_opening
from infra.settings import Settings

# What a message costs beyond its text (the record, its ring slot, the dedup entry's tuple),
# and a room beyond its messages: measured with tracemalloc, rounded up.
MESSAGE_OVERHEAD_BYTES = 300
ROOM_OVERHEAD_BYTES = 1500


@dataclass
class _Room:
    name: str
    ring: deque[ChatMessage]
    last_id: int = 0
    bytes: int = ROOM_OVERHEAD_BYTES
    used: int = 0  # when it was last read or written, on the log's own counter
    # (user_id, client_msg_id) -> message, for retry de-duplication; only messages in the ring.
    seen: OrderedDict[tuple[str, str], ChatMessage] = field(default_factory=OrderedDict)


def _cost(message: ChatMessage) -> int:
    """What a message holds, its sender's names included: a REST publish brings strings of
    its own (a JWT's `name` can be 2 KB), where a socket's messages share their connection's.
    Shared strings are counted again: the budget errs on the safe side."""
    extra = sys.getsizeof(message.client_msg_id) if message.client_msg_id is not None else 0
    names = sum(map(sys.getsizeof, (message.room, message.user_id, message.user_name)))
    return sys.getsizeof(message.text) + names + extra + MESSAGE_OVERHEAD_BYTES


class MemoryMessageLog:
    """A bounded ring of messages per room, with a per-room counter for ids, in bounded memory.

    Messages expire `ttl_seconds` after they were sent, as on DynamoDB, and a room whose
    messages have all expired is forgotten. All rooms together hold at most `max_bytes`: past
    it, messages go from the room that holds the most, oldest first (of rooms that hold the
    same, the least recently used), and a room left with none is forgotten; the message just
    written always stays. So a flood, into one room or many, takes from the flooded rooms: a
    room loses nothing while another holds more, and keeps at least an equal share of the
    budget (`max_bytes` over the number of rooms, less a message). A forgotten room's ids
    are not reused: a room that comes back continues above every id any forgotten room had,
    so ids never go back.
    """

    def __init__(
        self,
        size: int = Settings.history_size,
        clock: Callable[[], float] = time.time,
        max_bytes: int = Settings.history_max_bytes,
        ttl_seconds: float = Settings.history_ttl_seconds,
    ) -> None:
        self._size = size
        self._clock = clock
        self._max_bytes = max_bytes
        self._ttl = ttl_seconds
        self._rooms: OrderedDict[str, _Room] = OrderedDict()  # least recently used first
        # The order the budget takes from rooms in: (-bytes, used, name), the largest first.
        # An entry is pushed whenever a room's size or use changes; one that no longer
        # matches its room is stale and skipped (`_largest`).
        self._ranks: list[tuple[int, int, str]] = []
        self._uses = 0
        self._bytes = 0
        self._floor = 0  # the highest id of any forgotten room
        self._next_sweep = 0.0
        # A restarted process starts every room over: a new epoch for all of them.
        self._epoch = secrets.token_hex(4)

    @property
    def retained_bytes(self) -> int:
        """What the rooms' histories cost, as this log counts it (at most `max_bytes`)."""
        return self._bytes

    def append(self, draft: Draft) -> tuple[ChatMessage, bool]:
        state = self._use(draft.room, create=True)
        assert state is not None
        client_msg_id = draft.client_msg_id
        key = (draft.user_id, client_msg_id) if client_msg_id is not None else None
        if key is not None and key in state.seen:
            return state.seen[key], False
        state.last_id += 1
        message = ChatMessage(
            state.last_id,
            draft.room,
            draft.user_id,
            draft.user_name,
            draft.text,
            self._clock(),
            client_msg_id,
        )
        if len(state.ring) == self._size:
            self._drop_oldest(state)
        state.ring.append(message)
        self._charge(state, _cost(message))
        if key is not None:
            state.seen[key] = message
        if self._bytes > self._max_bytes:
            self._enforce_budget(state)
        if message.ts >= self._next_sweep:  # idle rooms go once a second, not on every call
            self._next_sweep = message.ts + 1.0
            self._sweep(message.ts - self._ttl)
        return message, True

    def append_many(self, drafts: Sequence[Draft]) -> Sequence[Stored]:
        return append_each(self, drafts)

    def after(self, room: str, after_id: int, limit: int) -> Sequence[ChatMessage]:
        state = self._use(room)
        if state is None or not state.ring:
            return []
        # Ids in the ring are consecutive, so the start position is arithmetic.
        start = max(0, after_id - state.ring[0].id + 1)
        return list(islice(state.ring, start, start + limit))

    def recent(self, room: str, limit: int) -> Sequence[ChatMessage]:
        state = self._use(room)
        if state is None or limit <= 0:
            return []
        skip = max(0, len(state.ring) - limit)
        return list(islice(state.ring, skip, None))

    def before(self, room: str, before_id: int, limit: int) -> Sequence[ChatMessage]:
        state = self._use(room)
        if state is None or not state.ring or limit <= 0:
            return []
        # Ids in the ring are consecutive: those below `before_id` are its first `end`.
        end = min(len(state.ring), max(0, before_id - state.ring[0].id))
        return list(islice(state.ring, max(0, end - limit), end))

    def latest_id(self, room: str) -> int:
        state = self._rooms.get(room)
        return state.last_id if state is not None else self._floor

    def opening(
        self, room: str, since: int | None, epoch: str, limit: int
    ) -> tuple[int, str, Sequence[ChatMessage]]:
        return read_opening(self, room, since, epoch, limit)

    def head(self, room: str, since: int = 0, epoch: str = "") -> tuple[int, str]:
        return self.latest_id(room), self._epoch

    def _use(self, room: str, create: bool = False) -> _Room | None:
        """The room's state, marked as just used, with its expired messages gone."""
        state = self._rooms.get(room)
        if state is None:
            if not create:
                return None
            state = self._rooms[room] = _Room(room, ring=deque(), last_id=self._floor)
            self._bytes += state.bytes
        self._rooms.move_to_end(room)
        self._uses += 1
        state.used = self._uses
        if state.ring:
            horizon = self._clock() - self._ttl
            while state.ring and state.ring[0].ts < horizon:
                self._drop_oldest(state)
        self._rank(state)
        return state

    def _sweep(self, horizon: float) -> None:
        # Least recently used first: the first room not wholly expired ends the sweep.
        for _ in range(8):
            oldest = next(iter(self._rooms.values()), None)
            if oldest is None or (oldest.ring and oldest.ring[-1].ts >= horizon):
                return
            self._forget(next(iter(self._rooms)))

    def _enforce_budget(self, writing: _Room) -> None:
        """Take from the largest room until all fit, sparing the message just written."""
        spared = None
        while self._bytes > self._max_bytes:
            largest = self._largest()
            if largest is None:
                break  # only the message just written is left; MAX limits bound it
            if largest is writing and len(writing.ring) <= 1:
                spared = heapq.heappop(self._ranks)  # it goes back in once the rest fit
                continue
            if largest.ring:
                self._drop_oldest(largest)
            if not largest.ring:
                self._forget(largest.name)
        if spared is not None:
            heapq.heappush(self._ranks, spared)

    def _largest(self) -> _Room | None:
        """The room the budget takes from next, its entry left on top of `_ranks`."""
        while self._ranks:
            negative_bytes, used, name = self._ranks[0]
            state = self._rooms.get(name)
            if state is not None and (state.bytes, state.used) == (-negative_bytes, used):
                return state
            heapq.heappop(self._ranks)  # stale: the room changed, or was forgotten
        return None

    def _rank(self, state: _Room) -> None:
        if len(self._ranks) > 2 * len(self._rooms) + 64:  # mostly stale: start afresh
            self._ranks = [(-r.bytes, r.used, r.name) for r in self._rooms.values()]
            heapq.heapify(self._ranks)
        else:
            heapq.heappush(self._ranks, (-state.bytes, state.used, state.name))

    def _drop_oldest(self, state: _Room) -> None:
        message = state.ring.popleft()
        if message.client_msg_id is not None:  # a retry now stores it again, as on DynamoDB
            state.seen.pop((message.user_id, message.client_msg_id), None)
        self._charge(state, -_cost(message))

    def _forget(self, room: str) -> None:
        state = self._rooms.pop(room)
        self._bytes -= state.bytes
        self._floor = max(self._floor, state.last_id)

    def _charge(self, state: _Room, amount: int) -> None:
        state.bytes += amount
        self._bytes += amount
        self._rank(state)
