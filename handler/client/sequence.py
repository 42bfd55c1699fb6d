"""The order a client hands messages over in: each id once, in id order, whatever order they
arrive in, with what is gone for good reported. Pure bookkeeping, no I/O: the room
(handler/client/room.py) feeds it frames and acts on what it answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]  # a frame as the server sent it, or one the client makes (`type` first)


@dataclass
class Sequencer:
    """The resume point and what is held above it.

    `resume`: every id up to it was handed over or is gone for good. Not the highest id seen:
    ids can arrive out of order (on Lambda, concurrent publishers), and a lower one may still
    be on its way."""

    resume: int = 0
    held: dict[int, Event] = field(default_factory=dict)
    # Set once the first reply (the welcome) is in: from then on every id matters, and one
    # skipped is reported. (The first welcome's own window, recent history, is not a loss.)
    started: bool = False
    oldest: int | None = None  # the lowest id handed over: where scrolling back starts
    continuing: bool = False  # the last welcome/history frame said more of its reply follows

    def restart(self) -> None:
        """The room's history started over: ids count again from 1."""
        self.resume, self.started, self.oldest = 0, False, None
        self.held.clear()

    def receive(self, message: Event) -> list[Event]:
        """A message frame: what to hand over now, in order (nothing for a repeat, or for one
        held until the ids below it arrive)."""
        number = message["id"]
        if number <= self.resume or number in self.held:
            return []
        self.held[number] = message
        return self._drain()

    def reply(self, frame: Event, messages: list[Event]) -> tuple[list[Event], bool]:
        """A `welcome`, or a `history` frame answering `since`. The first frame of a reply
        says where the stored history after the resume point starts: ids before it are gone.
        Returns what to hand over, and whether to ask for the next page (`since` = resume)."""
        events: list[Event] = []
        if not self.continuing:
            if messages:
                events += self.skip_to(messages[0]["id"] - 1)
            elif not frame.get("more"):
                events += self.skip_to(frame["latest_id"])
        for message in messages:
            events += self.receive(message)
        self.continuing = bool(frame.get("more"))
        if not self.continuing:
            self.started = True
        more = not self.continuing and (self.resume < frame["latest_id"] or bool(self.held))
        return events, more

    def skip_to(self, through: int) -> list[Event]:
        """Ids up to `through` are not coming: hand over what is held below it, in order,
        report the ids that are gone, and move the resume point past them."""
        if through <= self.resume:
            return []
        events: list[Event] = []
        following = self.resume + 1
        for number in sorted(n for n in self.held if n <= through):
            if number > following:
                events += self._gone(following, number - 1)
            events.append(self._hand_over(self.held.pop(number)))
            following = number + 1
        if through >= following:
            events += self._gone(following, through)
        self.resume = through
        return events + self._drain()

    def _gone(self, first: int, last: int) -> list[Event]:
        if not self.started:
            return []  # the first welcome's window: what came before it was never expected
        return [{"type": "discontinuity", "reason": "expired", "from": first, "to": last}]

    def _drain(self) -> list[Event]:
        events = []
        while self.resume + 1 in self.held:
            self.resume += 1
            events.append(self._hand_over(self.held.pop(self.resume)))
        return events

    def _hand_over(self, message: Event) -> Event:
        number = message["id"]
        self.oldest = number if self.oldest is None else min(self.oldest, number)
        return message
