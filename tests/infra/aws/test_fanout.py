"""Big rooms on Lambda: chunked fan-out through SQS (infra/aws/fanout.py, handler/aws/fanout.py),
with moto's SQS and DynamoDB, the Management API stand-in, and the event source mapping the
emulator runs (infra/local_aws/sqs_source.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from handler.aws import websocket
from handler.aws.fanout import make_handler
from handler.aws.runtime import AwsRuntime, runtime
from handler.chat.ports import Connection, Dialect, Draft
from infra.aws.delivery import ManagementApiDelivery
from infra.aws.fanout import (
    MAX_TRIES,
    FanoutJob,
    FanoutQueue,
    FanoutWorker,
    Pacer,
)
from infra.local_aws.dynamodb import create_fanout_queues
from infra.local_aws.sqs_source import SqsEventSource
from tests.support.aws import event, reset_caches
from tests.support.management_api import ManagementApiStandIn

ROOM = "big"


@dataclass
class Stack:
    runtime: AwsRuntime
    sqs: Any
    queue_url: str
    dlq_url: str
    api: ManagementApiStandIn

    def worker(
        self, rate: float = 100_000, backoff: float = 0.01, chunk: int = 500
    ) -> FanoutWorker:
        """A fanout worker as the runtime builds one, but patient for milliseconds, not
        seconds, and retrying at once: a test cannot wait out AWS-sized delays."""
        rt = self.runtime
        delivery = ManagementApiDelivery(
            rt.management_api(self.api.endpoint),
            attempts=4,
            backoff=backoff,
            pace=Pacer(rate).wait,
        )
        queue = FanoutQueue(self.sqs, self.queue_url)
        return FanoutWorker(rt.connections(), rt.chat_core, delivery, queue, chunk, lambda _: 0)

    def drain(self, worker: FanoutWorker | None = None) -> list[int]:
        """Run the event source mapping, one record per invocation, until the queue is empty.
        Returns the number of posts each invocation made."""
        handler = make_handler(lambda: worker or self.runtime.fanout_worker())
        source = SqsEventSource(self.sqs, self.queue_url, handler, batch_size=1)
        posts: list[int] = []
        for _ in range(1000):
            before = sum(self.api.attempts.values())
            if source.poll() == 0:
                return posts
            posts.append(sum(self.api.attempts.values()) - before)
        raise AssertionError("the fan-out queue never emptied")

    def queued(self, url: str) -> list[str]:
        """Take every message off a queue (deleting each: with no visibility timeout, a
        message read and left would be read again at once)."""
        bodies: list[str] = []
        while True:
            batch = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            if not batch:
                return bodies
            for message in batch:
                bodies.append(message["Body"])
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def stack(
    aws: None, management_api: ManagementApiStandIn, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    sqs = boto3.client("sqs")
    queue_url, dlq_url = create_fanout_queues(sqs, "wschat-test-fanout", visibility_timeout=0)
    for name, value in {
        "WSCHAT_FANOUT_QUEUE_URL": queue_url,
        "WSCHAT_FANOUT_INLINE_MAX": "10",
        "WSCHAT_FANOUT_CHUNK": "500",
        "WSCHAT_FANOUT_RATE": "100000",
    }.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    yield Stack(runtime(), sqs, queue_url, dlq_url, management_api)


def seed(stack: Stack, members: int, room: str = ROOM) -> list[str]:
    """A room of `members` records (not sockets), half JSON and welcomed, half text, joined a
    minute ago (past the handshake grace, so a 410 means gone)."""
    joined = time.time() - 60
    connections = [
        Connection(
            id=f"m{i:05d}=",
            room=room,
            user_id=f"u{i}",
            user_name=f"user {i}",
            dialect=Dialect.JSON if i % 2 else Dialect.TEXT,
            echo=f"u{i}",
            connected_at=joined,
            welcomed_through=0 if i % 2 else None,
        )
        for i in range(members)
    ]
    stack.runtime.connections().add_many(connections)
    return [c.id for c in connections]


def say(sender: str, text: str) -> None:
    assert websocket.default(event("message", connectionId=sender, body=text)) == {
        "statusCode": 200
    }


def received(stack: Stack, ids: list[str], text: str) -> dict[str, int]:
    """How many copies of `text` each connection was sent."""
    counts = {}
    for cid in ids:
        frames = stack.api.take(cid)
        counts[cid] = sum(1 for f in frames if text in f)
    return counts


def test_a_big_room_gets_every_message_once_in_jobs_no_bigger_than_a_chunk(
    stack: Stack,
) -> None:
    ids = seed(stack, 5000)
    sender = ids[0]  # a text member: it has its echo, not a copy
    say(sender, "to everyone")
    jobs = [FanoutJob.from_json(body) for body in stack.queued(stack.queue_url)]
    assert len(jobs) >= 10 and all(job.message_id == 1 for job in jobs)
    for job in jobs:  # the queue was read to look at the jobs: put them back
        FanoutQueue(stack.sqs, stack.queue_url).send([job])
    posts = stack.drain()
    assert max(posts) <= 500 and sum(posts) == 4999
    counts = received(stack, ids, "to everyone")
    assert counts.pop(sender) == 1  # the seed's echo line ("Message text was: ..."), no copy
    assert set(counts.values()) == {1}


def test_a_small_room_stays_inline(stack: Stack) -> None:
    ids = seed(stack, 10, room="small")
    say(ids[0], "hello")
    assert stack.queued(stack.queue_url) == []
    counts = received(stack, ids, "hello")
    assert counts == {cid: 1 for cid in ids}  # the text sender: its echo line


def test_gone_members_are_removed_and_the_rest_delivered(stack: Stack) -> None:
    """In a room above the inline size, where joins and leaves are not announced, a job
    forgets the members it finds gone without a word: announcing each (as the core does in
    a small room) read and posted to the whole room once per gone member."""
    ids = seed(stack, 600)
    gone = set(ids[1::10])  # 10%, the sender's record never among them
    stack.api.answer = lambda method, cid, attempt: 410 if cid in gone else 200
    say(ids[0], "still here?")
    stack.drain()
    frames = {cid: stack.api.take(cid) for cid in ids}
    assert all(
        sum("still here?" in f for f in frames[cid]) == 1 for cid in ids[1:] if cid not in gone
    )
    assert not [f for cid in ids for f in frames[cid] if '"presence"' in f]
    left = {c.id for c in stack.runtime.connections().in_room(ROOM)}
    assert left == set(ids) - gone


def test_the_sender_is_never_removed_by_a_job(stack: Stack) -> None:
    ids = seed(stack, 100)
    sender = ids[1]  # JSON: a job posts its copy to it
    stack.api.answer = lambda method, cid, attempt: 410 if cid in (sender, ids[3]) else 200
    _store(stack, "one")
    FanoutQueue(stack.sqs, stack.queue_url).send([FanoutJob(ROOM, 1, sender)])
    stack.drain()
    assert stack.runtime.connections().get(sender) is not None
    assert stack.runtime.connections().get(ids[3]) is None  # any other gone member is removed


def _store(stack: Stack, text: str) -> None:
    stack.runtime.chat_core(
        ManagementApiDelivery(stack.runtime.management_api(stack.api.endpoint))
    ).messages.append(Draft(room=ROOM, user_id="u", user_name="u", text=text, client_msg_id=None))


def test_a_429_storm_is_retried_within_the_budget_and_nothing_is_lost(stack: Stack) -> None:
    ids = seed(stack, 500)
    # The first 1,750 requests are throttled, whoever makes them: three rounds of attempts
    # for everyone and half a fourth, so some recipients outlast a job's own retries.
    storm = {"left": 1750}
    lock = threading.Lock()

    def throttled(method: str, cid: str, attempt: int) -> int:
        with lock:
            storm["left"] -= 1
            return 429 if storm["left"] >= 0 else 200

    stack.api.answer = throttled
    _store(stack, "through the storm")
    bounds = stack.runtime.connections().slice_bounds(ROOM, 500)
    FanoutQueue(stack.sqs, stack.queue_url).send(
        [FanoutJob(ROOM, 1, None, after, through) for after, through in bounds]
    )
    rate = 1000.0
    started = time.monotonic()
    posts = stack.drain(stack.worker(rate=rate))
    elapsed = time.monotonic() - started
    assert storm["left"] < 0 and len(posts) > len(bounds)  # retry jobs ran
    counts = received(stack, ids, "through the storm")
    assert set(counts.values()) == {1}
    # Paced: never more requests than the budget allows in the time taken (one slot spare).
    assert sum(posts) <= rate * elapsed + 1
    assert stack.queued(stack.dlq_url) == []


def test_a_job_that_always_fails_lands_in_the_dead_letter_queue(stack: Stack) -> None:
    ids = seed(stack, 50)
    broken = ids[7]
    stack.api.answer = lambda method, cid, attempt: 500 if cid == broken else 200
    _store(stack, "doomed for one")
    FanoutQueue(stack.sqs, stack.queue_url).send([FanoutJob(ROOM, 1, None)])
    stack.drain(stack.worker())
    counts = received(stack, ids, "doomed for one")
    assert counts.pop(broken) == 0 and set(counts.values()) == {1}
    (dead,) = [FanoutJob.from_json(body) for body in stack.queued(stack.dlq_url)]
    assert dead.ids == (broken,) and dead.tries == MAX_TRIES - 1


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        '{"room": "big"}',
        '{"room":"big","message_id":"1","sender_id":null,"after":null,"through":null,'
        '"ids":[],"tries":0}',
        '{"room":"big","message_id":true,"sender_id":null,"after":null,"through":null,'
        '"ids":[],"tries":0}',
        '{"room":"big","message_id":1,"sender_id":null,"after":null,"through":null,'
        '"ids":[1],"tries":0}',
        '{"room":"big","message_id":1,"sender_id":null,"after":null,"through":null,'
        '"ids":[],"tries":0,"extra":1}',
    ],
)
def test_a_record_that_is_not_a_job_is_kept_in_the_dead_letter_queue(
    stack: Stack, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
    stack.drain()
    assert stack.queued(stack.dlq_url) == [body]
    assert "is not a fan-out job" in caplog.text


def test_a_job_received_twice_posts_at_most_twice(stack: Stack) -> None:
    ids = seed(stack, 30)
    _store(stack, "again")
    job = FanoutJob(ROOM, 1, None)
    FanoutQueue(stack.sqs, stack.queue_url).send([job, job])
    stack.drain()
    # A JSON client drops the repeat: both copies carry the same id.
    assert [json.loads(frame)["id"] for frame in stack.api.take(ids[1])] == [1, 1]
    counts = received(stack, ids[2:], "again")
    assert set(counts.values()) == {2}


def test_a_slice_that_grew_after_it_was_cut_is_finished_by_a_job_of_its_own(
    stack: Stack,
) -> None:
    seed(stack, 20)
    bounds = stack.runtime.connections().slice_bounds(ROOM, 8)
    assert len(bounds) == 3 and bounds[-1][1] is None
    _store(stack, "grown")
    # Ten members join inside the first slice ("m000000" sorts before "m00000=").
    joined = time.time() - 60
    stack.runtime.connections().add_many(
        [
            Connection(
                f"m00000{i}", ROOM, "late", "late", Dialect.TEXT, "late", connected_at=joined
            )
            for i in range(10)
        ]
    )
    FanoutQueue(stack.sqs, stack.queue_url).send(
        [FanoutJob(ROOM, 1, None, after, through) for after, through in bounds]
    )
    posts = stack.drain(stack.worker(chunk=8))
    assert max(posts) <= 8 and sum(posts) == 30  # every member once, the late ones too


def test_the_pacer_spaces_calls_at_its_rate() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()
    assert slept == pytest.approx([0.1] * 4)  # the first goes at once
    now[0] += 5  # idle: no credit is banked beyond the next slot
    pacer.wait()
    pacer.wait()
    assert slept[-1] == pytest.approx(0.1)
