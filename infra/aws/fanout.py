"""Big rooms on Lambda: a message's fan-out split into jobs on an SQS queue.

One invocation posting to every member of a big room runs out of time (each post costs CPU,
and 512 MB is about 0.29 vCPU) and bursts past API Gateway's account-wide rate. So a room
above `WSCHAT_FANOUT_INLINE_MAX` members is cut into slices of at most `WSCHAT_FANOUT_CHUNK`
member records, and each slice becomes a job on the fan-out queue. The fanout function
(handler/aws/fanout.py) posts one job at a time, paced so that all its workers together stay
within `WSCHAT_FANOUT_RATE` posts/s.

A job names the message by room and id (the message is already stored) and a slice of the
room by member ids (`after`, exclusive, and `through`, inclusive), or, when it retries the
recipients a job could not reach, the connection ids themselves. Recipients that answer 429,
5xx or nothing, after the delivery's own retries, go into a retry job, delayed; after
`MAX_TRIES` rounds the job fails, SQS receives it again, and after the queue's
`maxReceiveCount` the redrive policy moves it to the dead-letter queue. SQS delivers at least
once: a job received twice posts twice, and JSON clients drop the repeated id.

Joins and leaves in a room above the inline size are not announced (each would cost a post
per member); the welcome's count is current. Small rooms keep the inline path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from handler.chat.core import ChatCore
from handler.chat.ports import Broadcast, ChatMessage, Connection, Delivery
from infra.aws.connections import DynamoConnections
from infra.aws.delivery import ManagementApiDelivery

log = logging.getLogger(__name__)

MAX_TRIES = 5  # rounds of retry jobs for recipients that could not be reached
SQS_BATCH = 10  # SendMessageBatch's limit


@dataclass(frozen=True)
class FanoutJob:
    room: str
    message_id: int
    sender_id: str | None = None
    after: str | None = None  # the slice: member ids above `after`, up to `through`
    through: str | None = None
    ids: tuple[str, ...] = ()  # a retry: exactly these connections, instead of a slice
    tries: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str) -> FanoutJob:
        """A job from a queue's message body; ValueError if it is not one."""
        raw = json.loads(body)
        optional = (str, type(None))
        if not (
            isinstance(raw, dict)
            and set(raw) == {f.name for f in _FIELDS}
            and isinstance(raw["room"], str)
            and type(raw["message_id"]) is int
            and all(isinstance(raw[k], optional) for k in ("sender_id", "after", "through"))
            and isinstance(raw["ids"], list)
            and all(isinstance(i, str) for i in raw["ids"])
            and type(raw["tries"]) is int
        ):
            raise ValueError("not a fan-out job")
        return cls(**{**raw, "ids": tuple(raw["ids"])})


_FIELDS = FanoutJob.__dataclass_fields__.values()


class FanoutQueue:
    """The SQS queue of fan-out jobs."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._url = queue_url

    def send(self, jobs: Sequence[FanoutJob], delay_seconds: int = 0) -> None:
        """Enqueue every job, or raise: a job lost here is a slice of the room that never
        gets the message, so entries SQS refuses are sent again once before giving up."""
        for start in range(0, len(jobs), SQS_BATCH):
            entries = [
                {"Id": str(i), "MessageBody": job.to_json(), "DelaySeconds": delay_seconds}
                for i, job in enumerate(jobs[start : start + SQS_BATCH])
            ]
            for _ in range(2):
                failed = self._sqs.send_message_batch(QueueUrl=self._url, Entries=entries).get(
                    "Failed", []
                )
                refused = {f["Id"] for f in failed}
                entries = [e for e in entries if e["Id"] in refused]
                if not entries:
                    break
            else:
                raise RuntimeError(f"SQS refused {len(entries)} fan-out job(s): {failed}")


class ChunkedBroadcast:
    """The serverless Broadcast with a fan-out queue: small rooms inline, as DirectBroadcast
    does; a room above `inline_max` members as jobs of at most `chunk` members each."""

    def __init__(
        self,
        core: ChatCore,
        connections: DynamoConnections,
        queue: FanoutQueue,
        inline_max: int,
        chunk: int,
    ) -> None:
        self._core = core
        self._connections = connections
        self._queue = queue
        self._inline_max = inline_max
        self._chunk = chunk

    def message(self, message: ChatMessage, sender_id: str | None) -> None:
        members = self._small_room(message.room)
        if members is not None:
            self._core.fan_out(message, sender_id, members)
            return
        bounds = self._connections.slice_bounds(message.room, self._chunk)
        self._queue.send(
            [
                FanoutJob(message.room, message.id, sender_id, after, through)
                for after, through in bounds
            ]
        )
        log.info("message %d of a big room: %d fan-out job(s)", message.id, len(bounds))

    def presence(self, event: str, connection: Connection) -> None:
        # Numbered before the room is read, so that the count read under the highest number
        # includes every change (docs/welcome-seam.md). A big room's too, where nothing is
        # sent: its size is known only from that read.
        seq = self._connections.next_presence_seq(connection.room)
        members = self._small_room(connection.room)
        if members is not None:
            self._core.fan_out_presence(event, connection, len(members), members, seq)

    def typing(self, connection: Connection) -> None:
        """As presence: a big room's members are not told (docs/serverless.md)."""
        members = self._small_room(connection.room)
        if members is not None:
            self._core.fan_out_typing(connection, members)

    def _small_room(self, room: str) -> list[Connection] | None:
        """The room's members if it has at most `inline_max` of them, else None."""
        members, more = self._connections.room_slice(room, None, None, self._inline_max + 1)
        return members if more is None and len(members) <= self._inline_max else None


class Pacer:
    """At most `rate` calls per second from this process, evenly spaced, shared by threads.
    Each caller reserves the next slot and sleeps until it comes."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            slot = max(self._next, now)
            self._next = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


@dataclass
class _JobDelivery:
    """A job's view of the Management API: gone recipients (never the sender) are reported
    back to the core, which deletes their records; unreachable ones are collected."""

    delivery: ManagementApiDelivery
    sender_id: str | None
    unreached: list[str] = field(default_factory=list)

    def send(self, connection_ids: Sequence[str], payload: str) -> Sequence[str]:
        gone, unreached = self.delivery.post_all(connection_ids, payload)
        self.unreached.extend(unreached)
        return [cid for cid in gone if cid != self.sender_id]

    def close(self, connection_id: str, code: int, reason: str) -> None:
        self.delivery.close(connection_id, code, reason)


class _Unannounced:
    """A fan-out job's broadcast. Jobs are for rooms above the inline size, where joins and
    leaves are not announced (docs/serverless.md, "Big rooms on Lambda"): a job that finds
    members gone forgets them without a word, where the core would announce each one."""

    def message(self, message: ChatMessage, sender_id: str | None) -> None:
        raise RuntimeError("a fan-out job stores no messages")

    def presence(self, event: str, connection: Connection) -> None:
        """Nothing, as above."""

    def typing(self, connection: Connection) -> None:
        raise RuntimeError("a fan-out job forwards no typing")


class FanoutWorker:
    """Runs fan-out jobs: what the fanout function does with each record it receives."""

    def __init__(
        self,
        connections: DynamoConnections,
        build_core: Callable[[Delivery, Callable[[ChatCore], Broadcast]], ChatCore],
        delivery: ManagementApiDelivery,
        queue: FanoutQueue,
        chunk: int,
        retry_delay: Callable[[int], int] = lambda tries: min(60, 2**tries),
    ) -> None:
        """`retry_delay(tries)`: seconds before a retry job's round `tries` is received."""
        self._connections = connections
        self._build_core = build_core
        self._delivery = delivery
        self._queue = queue
        self._chunk = chunk
        self._retry_delay = retry_delay

    def run(self, job: FanoutJob) -> None:
        """Post the job's message to its recipients. Raises when the job should be received
        again (it has failed `MAX_TRIES` rounds, or a store could not be read)."""
        job_delivery = _JobDelivery(self._delivery, job.sender_id)
        core = self._build_core(job_delivery, lambda _: _Unannounced())
        message = next(iter(core.messages.after(job.room, job.message_id - 1, 1)), None)
        if message is None or message.id != job.message_id:
            log.warning("fan-out of %s #%d: the message has expired", job.room, job.message_id)
            return
        if job.ids:
            found = (self._connections.get(cid) for cid in job.ids[: self._chunk])
            members = [c for c in found if c is not None and c.room == job.room]
        else:
            members, rest = self._connections.room_slice(
                job.room, job.after, job.through, self._chunk
            )
            # A full page ends where the slice does, or the slice grew since it was cut (the
            # rest is then a job of its own).
            if rest is not None and rest != job.through:
                self._queue.send([replace(job, after=rest)])
        core.fan_out(message, job.sender_id, members)
        if not job_delivery.unreached:
            return
        if job.tries + 1 >= MAX_TRIES:
            raise RuntimeError(
                f"fan-out of {job.room} #{job.message_id}: {len(job_delivery.unreached)} "
                f"recipient(s) unreachable after {MAX_TRIES} rounds"
            )
        retry = FanoutJob(
            job.room,
            job.message_id,
            job.sender_id,
            ids=tuple(job_delivery.unreached),
            tries=job.tries + 1,
        )
        self._queue.send([retry], delay_seconds=self._retry_delay(retry.tries))
