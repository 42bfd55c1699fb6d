"""Rooms on Redis (issue 14): what sharing rooms through Redis costs, against wschat in memory
measured in the same run. Redis and the worker(s) share core 0; this load generator is on core 1.

    .venv/bin/python bench/redis_fanout.py [--sizes 10,100,1000]

1. CPU per delivery, one process, N = 10, 100, 1000, with one sender and with sixteen: the
   worker's CPU time per delivery on Redis against in memory (target: within 1.5x), and
   Redis's own CPU beside it.
2. The floor: what one loopback round trip to Redis costs this machine in CPU.
3. Two workers against one at N = 100: deliveries/s with at most 16 messages in flight from
   16 senders, senders and receivers dealt across the workers, and each worker's CPU per
   delivery.
4. Cross-host delivery latency at a paced 2,000 deliveries/s, N = 100: the sender on one
   worker and every receiver on another, against one in-memory process (target: p99 within 2x).

    .venv/bin/python bench/redis_fanout.py --cluster [--scale-size 100]

runs instead the same fan-out against a Redis Cluster of three primaries (issue 29), beside
one Redis in the same run: the worker's CPU per delivery at N = 100 with one sender and with
sixteen (target: within 1.2x one Redis), and the cross-host p99 (target: within 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from wsload import (
    CLIENT_CORE,
    WSCHAT,
    Room,
    Server,
    Subject,
    closed_loop,
    free_port,
    ms,
    paced,
    percentiles,
    pin_to_client_core,
    publish,
    running,
)

DELIVERIES = 30_000  # per throughput phase, whatever N is
REPEATS = 5  # phases per subject, taking turns; the median is reported
# One sender publishes a round trip after another; sixteen overlap, as a busy room's do.
SENDERS = (1, 16)
PACED_RATE = 2_000  # deliveries/s in the latency phase
PACED_SECONDS = 10.0  # p99 of 20,000 deliveries: the 200th worst, not moved by one stall
REDIS = Subject(
    "redis",
    "redis-server",
    ("redis-server", "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"),
    "",
)


def on_redis(redis: Server) -> Subject:
    return replace(
        WSCHAT,
        key="wschat-redis",
        label="wschat on Redis",
        env=(*WSCHAT.env, ("WSCHAT_REDIS_URL", f"redis://127.0.0.1:{redis.port}/0")),
    )


@contextmanager
def redis_and(workers: int) -> Iterator[tuple[Server, list[Server]]]:
    """A fresh Redis with `workers` wschat processes on it: the first on core 0 with Redis,
    the second on core 1 (with this load generator)."""
    with ExitStack() as stack:
        redis = stack.enter_context(running(REDIS))
        subject = on_redis(redis)
        chats = [stack.enter_context(running(subject, core=i % 2)) for i in range(workers)]
        yield redis, chats


@contextmanager
def cluster_and(workers: int) -> Iterator[tuple[list[Server], list[Server]]]:
    """A fresh Redis Cluster of three primaries (no replicas: what is measured is the
    workers' work, and a replica's would share their core) with `workers` wschat processes
    on it, placed as `redis_and` places them."""
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        nodes = []
        for n in range(3):
            spec = replace(
                REDIS,
                key=f"redis-cluster-{n}",
                label="Redis Cluster node",
                command=(
                    *REDIS.command,
                    "--dir", str(directory),
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{n}.conf",
                    "--cluster-port", str(free_port()),
                ),
            )  # fmt: skip
            nodes.append(stack.enter_context(running(spec)))
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for node in nodes:
            with redis.Redis(port=node.port) as client:
                while client.cluster("info")["cluster_state"] != "ok":
                    time.sleep(0.05)
        subject = replace(
            WSCHAT,
            key="wschat-cluster",
            label="wschat on a Redis Cluster",
            env=(*WSCHAT.env, ("WSCHAT_REDIS_URL", "redis+cluster://" + ",".join(addresses))),
        )
        chats = [stack.enter_context(running(subject, core=i % 2)) for i in range(workers)]
        yield nodes, chats


Phase = tuple[float, list[float]]  # wall seconds, and CPU seconds of each watched process


async def phase(room: Room, messages: int, watched: list[Server]) -> Phase:
    """One closed-loop phase, at most 16 messages in flight."""
    cpu = [server.cpu_seconds() for server in watched]
    started = time.perf_counter()
    await closed_loop(room, messages, window=16)
    wall = time.perf_counter() - started
    return wall, [s.cpu_seconds() - c for s, c in zip(watched, cpu, strict=True)]


def median(runs: list[Phase]) -> Phase:
    """The phase whose first watched process spent the median CPU time."""
    return sorted(runs, key=lambda run: run[1][0])[len(runs) // 2]


async def cpu_per_delivery(sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for receivers in sizes:
        messages = max(20, DELIVERIES // receivers)
        with running(WSCHAT) as memory, redis_and(1) as (redis, (chat,)):
            subjects = [(memory, [memory]), (chat, [chat, redis])]
            for senders in SENDERS:
                name = f"cpu{receivers}x{senders}"
                rows += await compared(subjects, name, receivers, senders, messages)
    return rows


async def compared(
    subjects: list[tuple[Server, list[Server]]],
    name: str,
    receivers: int,
    senders: int,
    messages: int,
    part: str = "cpu",
    versus: str = "vs_memory",
) -> list[dict[str, Any]]:
    """Closed-loop CPU per delivery of each subject's room (the server, then the processes
    whose CPU is counted: the worker first, then its Redis nodes), taking turns; `versus`
    holds each as a multiple of the first subject's."""
    deliveries = messages * (receivers + senders - 1)  # the other senders get each one too
    rooms = [await Room(server, name, senders=senders).open(receivers) for server, _ in subjects]
    try:
        for room in rooms:
            await closed_loop(room, messages // 10, window=16)  # warm-up
        results: list[list[Phase]] = [[] for _ in rooms]
        for _ in range(REPEATS):  # they take turns, so drift moves all alike
            for (_, watched), room, runs in zip(subjects, rooms, results, strict=True):
                runs.append(await phase(room, messages, watched))
    finally:
        for room in rooms:
            await room.close()
    rows = []
    base = None
    for (server, _), runs in zip(subjects, results, strict=True):
        wall, cpu = median(runs)
        worker_us = cpu[0] / deliveries * 1e6
        base = base or worker_us
        rows.append(
            {
                "part": part,
                "server": server.subject.label,
                "receivers": receivers,
                "senders": senders,
                "deliveries_per_s": deliveries / wall,
                "worker_us_per_delivery": worker_us,
                "redis_us_per_delivery": sum(cpu[1:]) / deliveries * 1e6,
                versus: worker_us / base,
            }
        )
    return rows


async def scaling(receivers: int) -> list[dict[str, Any]]:
    """One worker against two, the room's senders and receivers dealt across them."""
    rows = []
    messages = max(20, DELIVERIES // receivers)
    for workers in (1, 2):
        with redis_and(workers) as (redis, chats):
            room = Room(
                chats[0], f"scale{receivers}", spread=chats, senders=16, senders_spread=chats
            )
            await room.open(receivers)
            try:
                await closed_loop(room, messages // 10, window=16)
                client = time.process_time()
                runs = [await phase(room, messages, [*chats, redis]) for _ in range(REPEATS)]
                client_cpu = (time.process_time() - client) / REPEATS
                wall, cpu = median(runs)
            finally:
                await room.close()
        deliveries = messages * (receivers + 15)  # 16 senders: the other 15 get each one too
        per_worker = (receivers + 15) / workers  # each worker's share of a message's deliveries
        rows.append(
            {
                "part": "scaling",
                "workers": workers,
                "receivers": receivers,
                "deliveries_per_s": deliveries / wall,
                "worker_us_per_delivery": [
                    c / (messages * per_worker) * 1e6 for c in cpu[:workers]
                ],
                "worker_cpu_pct": [c / wall * 100 for c in cpu[:workers]],
                "redis_cpu_pct": cpu[-1] / wall * 100,
                "client_cpu_pct": client_cpu / wall * 100,
            }
        )
    return rows


async def cross_host(receivers: int) -> list[dict[str, Any]]:
    """Paced latency: in one in-memory process, then from a sender on one worker to
    receivers on another."""
    with running(WSCHAT) as memory, redis_and(2) as (_, (near, far)):
        cases = [
            ("in one process (memory)", Room(memory, "paced")),
            ("cross-host (Redis)", Room(near, "paced", spread=[far])),
        ]
        return await paced_cases("latency", cases, receivers)


async def paced_cases(
    part: str, cases: list[tuple[str, Room]], receivers: int
) -> list[dict[str, Any]]:
    """Each room's paced latency in turn (after a warm-up), a row each."""
    rate = PACED_RATE / receivers
    count = max(3, round(rate * PACED_SECONDS))
    rows = []
    for label, room in cases:
        await room.open(receivers)
        try:
            await paced(room, rate, count // 3, settle=10)  # warm-up
            latency = await paced(room, rate, count, settle=10)
        finally:
            await room.close()
        rows.append(
            {
                "part": part,
                "server": label,
                "receivers": receivers,
                **percentiles(latency.latencies, count * receivers),
            }
        )
    return rows


async def round_trip_floor(server: Server, calls: int = 3_000) -> dict[str, Any]:
    """What one loopback round trip to Redis costs this machine in CPU, before any chat work:
    through redis.asyncio (what a worker pays per publish, and again per pub/sub message it
    reads), and through a bare asyncio socket (the floor under any client)."""
    import redis.asyncio

    client = redis.asyncio.Redis(port=server.port)
    await client.get("floor")
    started = time.process_time()
    for _ in range(calls):
        await client.get("floor")
    via_redis_py = (time.process_time() - started) / calls
    await client.aclose()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.process_time()
    for _ in range(calls):
        writer.write(b"*2\r\n$3\r\nGET\r\n$5\r\nfloor\r\n")
        await reader.readline()
    bare = (time.process_time() - started) / calls
    writer.close()
    return {"part": "floor", "redis_py_us": via_redis_py * 1e6, "bare_socket_us": bare * 1e6}


async def cluster_against_redis(receivers: int) -> list[dict[str, Any]]:
    """CPU per delivery and cross-host p99 on a 3-primary cluster against one Redis, in one
    run, each with the same room: the ratios are issue 29's targets."""
    rows = []
    messages = max(20, DELIVERIES // receivers)
    with redis_and(1) as (one, (chat,)), cluster_and(1) as (nodes, (on_cluster,)):
        subjects = [(chat, [chat, one]), (on_cluster, [on_cluster, *nodes])]
        for senders in SENDERS:
            name = f"cluster{receivers}x{senders}"
            rows += await compared(
                subjects, name, receivers, senders, messages, "cluster-cpu", "vs_one_redis"
            )
    with redis_and(2) as (_, (near, far)), cluster_and(2) as (_, (c_near, c_far)):
        cases = [
            ("cross-host (one Redis)", Room(near, "paced", spread=[far])),
            ("cross-host (Redis Cluster)", Room(c_near, "paced", spread=[c_far])),
        ]
        return rows + await paced_cases("cluster-latency", cases, receivers)


def latency_table(paced_rows: list[dict[str, Any]], first: str) -> list[str]:
    """The paced rows as a table, each p99 against the first row's (`first` names it)."""
    if not paced_rows:
        return []
    base = paced_rows[0]["p99"]
    lines = [
        "",
        f"| delivery (N = {paced_rows[0]['receivers']}, {PACED_RATE:,} deliveries/s) "
        f"| p50 | p99 | max | p99 vs {first} |",
        "|---|---|---|---|---|",
    ]
    for row in paced_rows:
        lines.append(
            f"| {row['server']} | {ms(row['p50'])} | {ms(row['p99'])} | {ms(row['max'])} "
            f"| {row['p99'] / base:.2f}x |"
        )
    return lines


def cpu_table(rows: list[dict[str, Any]], versus: str, first: str, redis: str) -> list[str]:
    """The closed-loop rows as a table, `versus` the key of each one's multiple of the
    first's (which `first` names)."""
    lines = [
        f"| N | senders | server | deliveries/s | worker CPU/delivery | vs {first} | {redis} |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['receivers']} | {row['senders']} | {row['server']} "
            f"| {row['deliveries_per_s']:,.0f} "
            f"| {row['worker_us_per_delivery']:.1f} µs | {row[versus]:.2f}x "
            f"| {row['redis_us_per_delivery']:.1f} µs |"
        )
    return lines


def cluster_tables(rows: list[dict[str, Any]]) -> list[str]:
    cluster = [r for r in rows if r["part"] == "cluster-cpu"]
    lines = cpu_table(cluster, "vs_one_redis", "one Redis", "Redis CPU/delivery (all primaries)")
    lines += latency_table([r for r in rows if r["part"] == "cluster-latency"], "one Redis")
    return lines


def tables(rows: list[dict[str, Any]]) -> list[str]:
    cpu = [r for r in rows if r["part"] == "cpu"]
    lines = cpu_table(cpu, "vs_memory", "memory", "Redis CPU/delivery")
    for row in (r for r in rows if r["part"] == "floor"):
        lines += [
            "",
            f"One loopback round trip to Redis costs this machine {row['redis_py_us']:.0f} µs "
            f"of CPU through redis.asyncio ({row['bare_socket_us']:.0f} µs through a bare "
            "asyncio socket), measured in the load generator.",
        ]
    scale = [r for r in rows if r["part"] == "scaling"]
    if scale:
        one = scale[0]["deliveries_per_s"]
        lines += [
            "",
            f"| workers (N = {scale[0]['receivers']}) | deliveries/s | vs one "
            "| worker CPU/delivery | worker CPU | Redis CPU | client CPU |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in scale:
            lines.append(
                f"| {row['workers']} | {row['deliveries_per_s']:,.0f} "
                f"| {row['deliveries_per_s'] / one:.2f}x "
                f"| {', '.join(f'{us:.1f} µs' for us in row['worker_us_per_delivery'])} "
                f"| {', '.join(f'{pct:.0f}%' for pct in row['worker_cpu_pct'])} "
                f"| {row['redis_cpu_pct']:.0f}% | {row['client_cpu_pct']:.0f}% |"
            )
    lines += latency_table([r for r in rows if r["part"] == "latency"], "one process")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--scale-size", type=int, default=100)
    parser.add_argument("--cluster", action="store_true", help="a 3-primary cluster vs one Redis")
    args = parser.parse_args()
    pin_to_client_core()
    assert CLIENT_CORE == 1, "needs two cores"
    if args.cluster:
        rows = asyncio.run(cluster_against_redis(args.scale_size))
        return publish("redis_cluster_fanout", cluster_tables(rows), rows)
    rows = asyncio.run(cpu_per_delivery([int(size) for size in args.sizes.split(",")]))
    with running(REDIS) as redis:
        rows.append(asyncio.run(round_trip_floor(redis)))
    rows += asyncio.run(scaling(args.scale_size))
    rows += asyncio.run(cross_host(args.scale_size))
    return publish("redis_fanout", tables(rows), rows)


if __name__ == "__main__":
    raise SystemExit(main())
