"""Big rooms on Lambda: one message to a room of 20,000 members, through the fan-out queue,
against today's single-invocation design, in the same run.

    .venv/bin/python bench/lambda_big_room.py [--members 20000] [--latency 0.02]

The Management API stand-in answers in `--latency` (bench/lambda_fanout.py's, in its own
process); DynamoDB and SQS are moto's servers (infra/local_aws/dynamodb.py), in another process.
Both sit on the server core, the benchmark on the client core. Member records, not sockets.

1. Enqueue: `ChatCore.publish` in the room, as `$default` runs it: the message stored, the
   room cut into slices, the jobs sent. Wall time.
2. Jobs: each job run by a FanoutWorker, unpaced, one after another: CPU and wall per job
   (max and p99), and CPU scaled to the deployed 512 MB (about 0.29 vCPU: 1,769 MB is one).
3. Pacing: one more job at one worker's share of the budget (`--rate` / `--workers`):
   posts/s against that share.
4. Baseline: the same room posted to by one invocation (ManagementApiDelivery.send to every
   member, as `$default` did before), CPU and wall, against the function's 10 s timeout.

moto is not DynamoDB: its Query reads the whole partition on every call, about 0.4 s a
page in a room of 20,000, where DynamoDB answers in milliseconds. So every DynamoDB and
SQS call is timed (botocore's before-call and after-call events), and the model counts each
at `--aws-latency` (10 ms, a generous in-region figure) instead of moto's time. The table
shows both.

Model: K = `--workers` fanout workers, each paced at rate/K, run the jobs in ceil(jobs/K)
rounds; a round lasts the longest of the paced job (as measured), a job's CPU at 0.29 vCPU,
and a job's unpaced wall time. End to end is the enqueue plus the rounds. The floor the
budget sets is members / rate plus one round. Targets (issue 15): no job over 3 s of CPU at
0.29 vCPU; end to end within 1.2x the floor.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from lambda_fanout import start_stand_in, stats
from wsload import SERVER_CORE, percentiles, pin_to_client_core, publish

LAMBDA_VCPU = 512 / 1769  # the deployed memorySize, as a share of one vCPU
TIMEOUT = 10.0  # the chat functions' timeout in serverless.yml
ROOM = "big"


class AwsClock:
    """Wall time and count of the AWS calls (DynamoDB, SQS) made by clients created after it,
    through the default session's event hooks."""

    def __init__(self) -> None:
        import boto3

        self.seconds = 0.0
        self.calls = 0
        events = boto3._get_default_session().events  # the parent of every client made after
        events.register("before-call", self._before)
        events.register("after-call", self._after)

    def _before(self, context: dict[str, Any], **_: Any) -> None:
        context["bench_started"] = time.perf_counter()

    def _after(self, context: dict[str, Any], **_: Any) -> None:
        self.seconds += time.perf_counter() - context["bench_started"]
        self.calls += 1

    def lap(self) -> tuple[float, int]:
        """Seconds and calls since the last lap."""
        lap = (self.seconds, self.calls)
        self.seconds, self.calls = 0.0, 0
        return lap


def start_aws() -> tuple[subprocess.Popen[bytes], str, str]:
    """moto's DynamoDB and SQS servers, as `wschat emulate` runs them, in their own process."""
    code = (
        "from infra.local_aws.dynamodb import moto_server as s; import time;"
        "print(s('dynamodb')[0]); print(s('sqs')[0], flush=True); time.sleep(3600)"
    )
    command = ["taskset", "-c", str(SERVER_CORE), sys.executable, "-c", code]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    dynamodb = process.stdout.readline().decode().strip()
    sqs = process.stdout.readline().decode().strip()
    return process, dynamodb, sqs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--aws-latency", type=float, default=0.01)
    args = parser.parse_args()
    pin_to_client_core()
    api, api_endpoint = start_stand_in(args.latency)
    aws, dynamodb, sqs = start_aws()
    try:
        configure(args, api_endpoint, dynamodb, sqs)
        return run(args, api_endpoint)
    finally:
        for process in (api, aws):
            process.terminate()
            process.wait()


def configure(args: argparse.Namespace, api_endpoint: str, dynamodb: str, sqs: str) -> None:
    import boto3

    from infra.local_aws.dynamodb import create_chat_table, create_fanout_queues

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "WSCHAT_TABLE": "wschat-bench",
            "WSCHAT_DYNAMODB_ENDPOINT": dynamodb,
            "WSCHAT_SQS_ENDPOINT": sqs,
            "WSCHAT_APIGW_ENDPOINT": api_endpoint,
            "WSCHAT_FANOUT_CHUNK": str(args.chunk),
            "WSCHAT_FANOUT_RATE": str(args.rate),
            "WSCHAT_FANOUT_WORKERS": str(args.workers),
        }
    )
    create_chat_table(boto3.client("dynamodb", endpoint_url=dynamodb), "wschat-bench")
    queue_url, _ = create_fanout_queues(boto3.client("sqs", endpoint_url=sqs), "bench-fanout")
    os.environ["WSCHAT_FANOUT_QUEUE_URL"] = queue_url


def run(args: argparse.Namespace, endpoint: str) -> int:
    from handler.aws.runtime import reset_runtime, runtime
    from handler.chat.ports import Connection, Dialect
    from infra.aws.delivery import ManagementApiDelivery
    from infra.aws.fanout import FanoutJob, FanoutWorker, Pacer

    reset_runtime()
    clock = AwsClock()  # before the runtime makes its clients
    rt = runtime()
    joined = time.time() - 60
    members = [
        Connection(
            id=f"m{i:06d}=",
            room=ROOM,
            user_id=f"u{i}",
            user_name=f"user {i}",
            dialect=Dialect.JSON if i % 2 else Dialect.TEXT,
            echo=f"u{i}",
            connected_at=joined,
            welcomed_through=0 if i % 2 else None,
        )
        for i in range(args.members)
    ]
    rt.connections().add_many(members)
    print(f"seeded {args.members} members", file=sys.stderr)

    # 1. Enqueue, as $default does it.
    core = rt.core(endpoint)
    clock.lap()
    started = time.perf_counter()
    core.publish(ROOM, "sender", "sender", "to the whole room")
    enqueue = Timing(time.perf_counter() - started, *clock.lap())
    queue = rt.fanout_queue()
    jobs = [FanoutJob.from_json(body) for body in take_all(rt.settings)]

    # 2. Each job, unpaced.
    def worker(rate: float) -> FanoutWorker:
        delivery = ManagementApiDelivery(
            rt.management_api(endpoint), rt.settings.fanout_concurrency, pace=Pacer(rate).wait
        )
        return FanoutWorker(rt.connections(), rt.chat_core, delivery, queue, args.chunk)

    unpaced = worker(1e9)
    cpu: list[float] = []
    wall: list[Timing] = []
    posts: list[int] = []
    stats(endpoint)  # reset the stand-in's counters
    for job in jobs:
        clock.lap()
        started, used = time.perf_counter(), time.process_time()
        unpaced.run(job)
        wall.append(Timing(time.perf_counter() - started, *clock.lap()))
        cpu.append(time.process_time() - used)
        posts.append(stats(endpoint)["calls"])
    assert sum(posts) == args.members, (sum(posts), args.members)
    assert take_all(rt.settings) == [], "a job left work behind"

    # 3. One job at one worker's share of the budget.
    share = args.rate / args.workers
    clock.lap()
    started = time.perf_counter()
    worker(share).run(jobs[0])
    paced = Timing(time.perf_counter() - started, *clock.lap())
    paced_rate = stats(endpoint)["calls"] / (paced.wall - paced.aws_seconds)  # while posting

    # 4. Today's design: one invocation posts to everyone.
    delivery = ManagementApiDelivery(rt.management_api(endpoint), rt.settings.fanout_concurrency)
    ids = [m.id for m in members]
    started, used = time.perf_counter(), time.process_time()
    delivery.send(ids, '{"type":"message","id":1,"text":"to the whole room"}')
    inline_wall, inline_cpu = time.perf_counter() - started, time.process_time() - used
    assert stats(endpoint)["calls"] == args.members

    return report(args, enqueue, cpu, wall, posts, paced, paced_rate, inline_cpu, inline_wall)


@dataclass
class Timing:
    """A phase's wall time, and the part of it spent in AWS calls (moto's here)."""

    wall: float
    aws_seconds: float
    aws_calls: int

    def on_aws(self, latency: float) -> float:
        """The wall time with each AWS call taking `latency` instead of moto's time."""
        return self.wall - self.aws_seconds + self.aws_calls * latency


def take_all(settings: Any) -> list[str]:
    """Every job on the fan-out queue, taken off it."""
    import boto3

    sqs = boto3.client("sqs", endpoint_url=settings.sqs_endpoint)
    url = settings.fanout_queue_url
    bodies: list[str] = []
    while True:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            return bodies
        for message in batch:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def report(
    args: argparse.Namespace,
    enqueue: Timing,
    cpu: list[float],
    wall: list[Timing],
    posts: list[int],
    paced: Timing,
    paced_rate: float,
    inline_cpu: float,
    inline_wall: float,
) -> int:
    share = args.rate / args.workers
    aws = args.aws_latency
    cpu_p = percentiles(cpu)  # in ms
    measured = percentiles([t.wall for t in wall])
    modelled = percentiles([t.on_aws(aws) for t in wall])
    cpu_max_lambda = max(cpu) / LAMBDA_VCPU
    # A round: K jobs at once, each as long as the paced one took, or longer if a job's CPU
    # at 0.29 vCPU, or its unpaced wall time, is.
    round_seconds = max(paced.on_aws(aws), cpu_max_lambda, modelled["max"] / 1000)
    rounds = math.ceil(len(cpu) / args.workers)
    end_to_end = enqueue.on_aws(aws) + rounds * round_seconds
    floor = args.members / args.rate + round_seconds
    inline_lambda = max(inline_wall, inline_cpu / LAMBDA_VCPU)
    lines = [
        f"| {args.members:,} members, chunk {args.chunk}, {args.latency * 1000:.0f} ms per post "
        "| figure | target |",
        "|---|---|---|",
        f"| enqueue (`$default`: store, cut, send {len(cpu)} jobs), on moto / at "
        f"{aws * 1000:.0f} ms per AWS call ({enqueue.aws_calls} calls) "
        f"| {enqueue.wall:.2f} / {enqueue.on_aws(aws):.2f} s | |",
        f"| job CPU, p99 / max | {cpu_p['p99']:.0f} / {cpu_p['max']:.0f} ms | |",
        f"| job CPU at 0.29 vCPU, max | {cpu_max_lambda:.2f} s | ≤ 3 s |",
        f"| job wall unpaced, p99 / max, on moto | {measured['p99'] / 1000:.2f} / "
        f"{measured['max'] / 1000:.2f} s | |",
        f"| … at {aws * 1000:.0f} ms per AWS call | {modelled['p99'] / 1000:.2f} / "
        f"{modelled['max'] / 1000:.2f} s | |",
        f"| posts per job, max | {max(posts)} | ≤ {args.chunk} |",
        f"| one paced job: posts/s while posting vs a worker's share ({share:.0f}/s) "
        f"| {paced_rate:.0f}/s ({paced_rate / share:.2f}x) | ≤ 1.0x |",
        f"| end to end, {args.workers} workers at {args.rate:.0f} posts/s (model) "
        f"| {end_to_end:.1f} s | |",
        f"| the budget's floor (members / rate + one round) | {floor:.1f} s | |",
        f"| end to end vs floor | {end_to_end / floor:.2f}x | ≤ 1.2x |",
        f"| today: one invocation posts to all, CPU / wall here | {inline_cpu:.1f} / "
        f"{inline_wall:.1f} s | |",
        f"| today at 0.29 vCPU | {inline_lambda:.0f} s | ≤ {TIMEOUT:.0f} s (the timeout) |",
    ]
    row = {
        "members": args.members,
        "jobs": len(cpu),
        "enqueue_moto_s": enqueue.wall,
        "enqueue_model_s": enqueue.on_aws(aws),
        "job_cpu_p99_s": cpu_p["p99"] / 1000,
        "job_cpu_max_s": max(cpu),
        "job_cpu_max_lambda_s": cpu_max_lambda,
        "job_wall_moto_max_s": measured["max"] / 1000,
        "job_wall_model_p99_s": modelled["p99"] / 1000,
        "job_wall_model_max_s": modelled["max"] / 1000,
        "posts_per_job_max": max(posts),
        "paced_posts_per_s": paced_rate,
        "paced_job_model_s": paced.on_aws(aws),
        "share_posts_per_s": share,
        "end_to_end_s": end_to_end,
        "floor_s": floor,
        "inline_cpu_s": inline_cpu,
        "inline_wall_s": inline_wall,
        "inline_lambda_s": inline_lambda,
    }
    return publish("lambda_big_room", lines, [row])


if __name__ == "__main__":
    raise SystemExit(main())
