"""Ports for driving the core without sockets: a clock tests move, a delivery that records
what the core sent, and a credential check that answers from a table."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from auth.errors import AuthError
from auth.principal import Principal


class FakeClock:
    """A clock that moves only when a test moves it (`now`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingDelivery:
    def __init__(self) -> None:
        self.frames: dict[str, list[str]] = defaultdict(list)
        self.closed: dict[str, tuple[int, str]] = {}
        self.gone: set[str] = set()

    def send(self, connection_ids: Sequence[str], payload: str) -> Sequence[str]:
        gone = [cid for cid in connection_ids if cid in self.gone]
        for cid in connection_ids:
            if cid not in self.gone:
                self.frames[cid].append(payload)
        return gone

    def close(self, connection_id: str, code: int, reason: str) -> None:
        self.closed.setdefault(connection_id, (code, reason))

    def take(self, connection_id: str) -> list[str]:
        """Frames sent to a connection since the last take."""
        frames, self.frames[connection_id] = self.frames[connection_id], []
        return frames

    def take_json(self, connection_id: str) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame in self.take(connection_id)]


class TokenBook:
    """The CredentialCheck port, answering at once from a table of tokens (as on Lambda)."""

    def __init__(self, **tokens: Principal | AuthError) -> None:
        self.tokens = tokens

    def verify(self, token: str, done: Callable[[Principal | AuthError], None]) -> None:
        done(self.tokens.get(token, AuthError("invalid token")))


class ManualTimer:
    """The Timer port, run by hand: `run()` calls what came due, as the loop would after the
    interval."""

    def __init__(self) -> None:
        self.waiting: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, seconds: float, action: Callable[[], None]) -> None:
        self.waiting.append((seconds, action))

    def run(self) -> int:
        """Call every action waiting (not those they set in turn); returns how many."""
        due, self.waiting = self.waiting, []
        for _, action in due:
            action()
        return len(due)
