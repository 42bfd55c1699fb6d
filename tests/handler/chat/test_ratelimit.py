"""Token buckets on a fake clock: one, and one per key with idle keys forgotten."""

from __future__ import annotations

from handler.chat.ratelimit import TokenBucket, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_says_how_long_until_its_next_token() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=2, clock=clock)
    assert bucket.take() and bucket.take() and not bucket.take()
    assert bucket.wait() == 0.5
    clock.now += 0.2
    assert abs(bucket.wait() - 0.3) < 1e-9
    clock.now += 0.3
    assert bucket.wait() == 0.0 and bucket.take()


def test_each_key_has_its_own_budget() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=2, clock=clock)
    assert [buckets.take("bot") for _ in range(3)] == [0.0, 0.0, 1.0]
    assert buckets.take("other") == 0.0
    clock.now += 1.0
    assert buckets.take("bot") == 0.0 and buckets.take("bot") == 1.0


def test_idle_keys_are_forgotten_once_their_bucket_would_be_full_again() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10.0, burst=20, clock=clock)  # full again 2 s after a take
    for key in range(1000):
        buckets.take(f"principal-{key}")
    assert len(buckets) == 1000
    clock.now += 1.9
    buckets.take("principal-0")  # still within its window: kept, with what it spent
    assert len(buckets) == 1000
    clock.now += 0.2
    buckets.take("newcomer")
    assert len(buckets) == 2  # principal-0 (used 0.2 s ago) and the newcomer
    # A forgotten key starts over with a full bucket, as its old one would have been by now.
    assert [buckets.take("principal-1") for _ in range(20)] == [0.0] * 20
    assert buckets.take("principal-1") > 0
