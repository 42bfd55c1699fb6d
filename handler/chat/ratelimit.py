"""Token buckets: `rate` tokens per second on average, bursts of up to `burst`; one, or one
per key (a principal publishing over REST)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    @property
    def updated(self) -> float:
        """When the bucket was last asked for a token."""
        return self._updated

    def take(self) -> bool:
        """Spend one token if there is one. Returns False when the caller is over the rate."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait(self) -> float:
        """Seconds until a token is there (0 when one is)."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self._rate)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now


class TokenBuckets:
    """A token bucket per key, each with the same rate and burst.

    A bucket left alone for `burst / rate` seconds is full again, just like a new one: it is
    forgotten then, so memory holds only the keys that asked within that window (2 s at
    20/s, burst 40), however many keys come and go.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._refill_seconds = burst / rate
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently asked first

    def take(self, key: str) -> float:
        """Spend one of `key`'s tokens: 0.0 when it had one, else the seconds until it has."""
        now = self._clock()
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if now - oldest.updated < self._refill_seconds:
                break
            self._buckets.popitem(last=False)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        self._buckets.move_to_end(key)
        return 0.0 if bucket.take() else bucket.wait()

    def __len__(self) -> int:
        return len(self._buckets)
