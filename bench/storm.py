"""A reconnect storm: N clients connect at once to a freshly started server, as after a restart
or a network blip, 100 handshakes in flight (issue 30).

    .venv/bin/python bench/storm.py [--clients 2000] [--in-flight 100]

Scenarios, each on a fresh server pinned to core 0 (the clients on core 1): wschat with N
JSON clients into one room, and into N rooms of one (the same handshakes without a room to
tell); N text-dialect clients into one room; the same N into the FastAPI docs pattern and
into `websockets` alone; and N JSON clients into one room through one wschat worker on
Redis, and through two (the second on the clients' core). And on Lambda, behind the API
Gateway emulator (`wschat emulate`), LAMBDA_CLIENTS (or --clients if fewer) JSON clients
into one room, where presence is not batched but posted inline to each member (issue 30):
what that storm costs in Management API posts (every frame a client receives is one).
Figures: the wall time until every client is welcomed (the `welcome` frame for JSON, the
101 for the others), the server's CPU per connect (all of it, until one second after the
last welcome: the storm's presence batches included), and the `presence` frames each JSON
client received, against the bound `storm duration / interval + 1`. Each scenario runs
ROUNDS times (`--rounds`), the scenarios taking turns; ratios are of medians within one
run; bench/wsload.py has the servers, the pinning and the minimal client.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from emulator_soak import LEAN as EMULATOR
from redis_fanout import REDIS, on_redis
from wsload import (
    FASTAPI_DOCS,
    WEBSOCKETS,
    WSCHAT,
    Receiver,
    Server,
    Subject,
    abort_all,
    pin_to_client_core,
    publish,
    running,
)

INTERVAL = 0.3  # WSCHAT_PRESENCE_INTERVAL's default (handler/chat/core.py, Limits)
SETTLE = 1.0  # after the last welcome: the batches the storm set off go out
# Each scenario runs this many times, the scenarios taking turns, and a ratio compares
# medians: on a shared machine one busy second otherwise decides a ratio (up to 1.3x).
ROUNDS = 3
LAMBDA_CLIENTS = 100  # the Lambda storm's size: each join costs a post per member there
JSON = replace(WSCHAT, path="/items/{room}/ws?token={user}&format=json")


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    subject: Subject
    one_room: bool
    json: bool
    redis: int = 0  # workers on one Redis (0: one server, on its own)
    clients: int | None = None  # the storm's size at most (--clients if fewer)
    repeated: bool = True  # run every round (the Lambda storm counts posts: once will do)


SCENARIOS = (
    Scenario("json-rooms", "wschat, JSON, each into its own room", JSON, False, True),
    Scenario("json-one", "wschat, JSON, all into one room", JSON, True, True),
    Scenario("text-one", "wschat, text, all into one room", WSCHAT, True, False),
    Scenario("fastapi-docs", "FastAPI docs pattern (baseline)", FASTAPI_DOCS, True, False),
    Scenario("websockets", "`websockets` alone (reference)", WEBSOCKETS, True, False),
    Scenario("json-one-redis-1", "wschat, JSON, one room, 1 worker on Redis", JSON, True, True, 1),
    Scenario("json-one-redis", "wschat, JSON, one room, 2 workers on Redis", JSON, True, True, 2),
    Scenario(
        "lambda-one",
        "wschat on Lambda (emulator), JSON, one room",
        EMULATOR,
        one_room=True,
        json=True,
        clients=LAMBDA_CLIENTS,
        repeated=False,
    ),
)


@dataclass
class Storm:
    """What the clients saw: welcomes, and presence frames per client with the last one's
    arrival."""

    clients: int
    welcomed: int = 0
    frames: Counter[str] = field(default_factory=Counter)  # every text frame, by type
    presence: list[int] = field(default_factory=list)
    last_presence: float = 0.0
    all_welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    receivers: list[Receiver] = field(default_factory=list)

    def client(self, index: int) -> Callable[[bytes], None]:
        self.presence.append(0)

        def on_text(frame: bytes) -> None:
            head = b'{"type":"'  # as the server writes it: no need to parse the rest
            kind = frame[len(head) : frame.find(b'"', len(head))] if frame.startswith(head) else b""
            self.frames[kind.decode() or "other"] += 1
            if frame.startswith(b'{"type":"presence"'):
                self.presence[index] += 1
                self.last_presence = time.perf_counter()
            elif frame.startswith(b'{"type":"welcome"'):
                self.arrived()

        return on_text

    def arrived(self) -> None:
        self.welcomed += 1
        if self.welcomed == self.clients:
            self.all_welcomed.set()


@contextmanager
def servers(scenario: Scenario) -> Iterator[list[Server]]:
    """The scenario's server(s): one on core 0; or Redis on core 0 with its workers, the
    first on core 0, the second on core 1 (with the clients)."""
    with ExitStack() as stack:
        if not scenario.redis:
            yield [stack.enter_context(running(scenario.subject))]
            return
        redis = stack.enter_context(running(REDIS))
        subject = replace(on_redis(redis), path=scenario.subject.path)
        yield [stack.enter_context(running(subject, core=i % 2)) for i in range(scenario.redis)]


async def storm(scenario: Scenario, hosts: list[Server], clients: int, in_flight: int) -> Storm:
    loop = asyncio.get_running_loop()
    seen = Storm(clients)
    gate = asyncio.Semaphore(in_flight)

    async def one(index: int) -> Receiver:
        host = hosts[index % len(hosts)]
        room = "storm" if scenario.one_room else f"storm-{index}"
        path = host.subject.target(room, index)
        on_text = seen.client(index)
        async with gate:
            _, receiver = await loop.create_connection(
                lambda: Receiver(path, lambda seq, latency: None, on_text),
                "127.0.0.1",
                host.port,
            )
            await asyncio.wait_for(receiver.opened, 120)
        if not scenario.json:
            seen.arrived()
        return receiver

    receivers = await asyncio.gather(*(one(index) for index in range(clients)))
    await asyncio.wait_for(seen.all_welcomed.wait(), 300)
    seen.receivers = list(receivers)
    return seen


async def measure(scenario: Scenario, clients: int, in_flight: int) -> dict[str, Any]:
    clients = min(clients, scenario.clients or clients)
    in_flight = min(in_flight, clients)
    with servers(scenario) as hosts:
        warm = await storm(scenario, hosts, 1, 1)  # imports and first-call costs, not counted
        abort_all(warm.receivers)
        await asyncio.sleep(0.5)
        cpu = sum(host.cpu_seconds() for host in hosts)
        started = time.perf_counter()
        seen = await storm(scenario, hosts, clients, in_flight)
        wall = time.perf_counter() - started
        await asyncio.sleep(SETTLE)
        cpu = sum(host.cpu_seconds() for host in hosts) - cpu
        abort_all(seen.receivers)
        await asyncio.sleep(0.5)  # the server sees them go: none is left to drain at its stop
    row: dict[str, Any] = {
        "scenario": scenario.label,
        "key": scenario.key,
        "clients": clients,
        "wall_s": wall,
        "connects_per_s": clients / wall,
        "cpu_ms_per_connect": cpu * 1000 / clients,
    }
    if scenario.json:
        duration = max(seen.last_presence - started, wall)
        row["presence_max"] = max(seen.presence)
        row["presence_mean"] = sum(seen.presence) / clients
        row["presence_bound"] = duration / INTERVAL + 1
        row["frames"] = dict(seen.frames)
    return row


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A scenario's rounds as one row: the round of median CPU (its wall and frames), every
    round's CPU, and the presence frames of the round that came nearest its bound."""
    row = dict(sorted(rounds, key=lambda r: float(r["cpu_ms_per_connect"]))[len(rounds) // 2])
    row["cpu_ms_rounds"] = [r["cpu_ms_per_connect"] for r in rounds]
    if "presence_max" in row:
        worst = max(rounds, key=lambda r: float(r["presence_max"]) / float(r["presence_bound"]))
        for name in ("presence_max", "presence_mean", "presence_bound"):
            row[name] = worst[name]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument(
        "--scenarios", default=",".join(s.key for s in SCENARIOS), help="comma list of keys"
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    pin_to_client_core()
    chosen = [s for s in SCENARIOS if s.key in args.scenarios.split(",")]
    rounds: dict[str, list[dict[str, Any]]] = {s.key: [] for s in chosen}
    for round_ in range(args.rounds):  # the scenarios take turns: a busy spell hits them all
        for scenario in chosen:
            if round_ == 0 or scenario.repeated:
                row = asyncio.run(measure(scenario, args.clients, args.in_flight))
                rounds[scenario.key].append(row)
    rows = [pooled(rounds[s.key]) for s in chosen]
    by_key = {row["key"]: row for row in rows}
    lines = [
        f"| storm: up to {args.in_flight} handshakes in flight | clients | wall | connects/s "
        "| server CPU per connect: median (each round) "
        "| presence frames per client (max, mean; bound) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        frames = (
            f"{row['presence_max']}, {row['presence_mean']:.1f}; ≤ {row['presence_bound']:.0f}"
            if "presence_max" in row
            else ""
        )
        spread = ", ".join(f"{cpu:.2f}" for cpu in row["cpu_ms_rounds"])
        lines.append(
            f"| {row['scenario']} | {row['clients']:,} | {row['wall_s']:.2f} s "
            f"| {row['connects_per_s']:.0f} "
            f"| {row['cpu_ms_per_connect']:.2f} ms ({spread}) | {frames} |"
        )
    ratios = [
        ("JSON, one room vs each into its own room (target ≤ 1.5x)", "json-one", "json-rooms"),
        ("text connect vs the FastAPI docs pattern (target ≤ 1.2x)", "text-one", "fastapi-docs"),
        ("text connect vs `websockets` alone", "text-one", "websockets"),
        ("JSON, one room: 1 worker on Redis vs 1 in memory", "json-one-redis-1", "json-one"),
        ("JSON, one room: 2 workers on Redis vs 1 in memory (target ≤ 2x)", "json-one-redis",
         "json-one"),
    ]  # fmt: skip
    lines.append("")
    for label, mine, theirs in ratios:
        if mine in by_key and theirs in by_key:
            ratio = by_key[mine]["cpu_ms_per_connect"] / by_key[theirs]["cpu_ms_per_connect"]
            by_key[mine][f"cpu_vs_{theirs}"] = ratio
            lines.append(f"- CPU per connect, {label}: {ratio:.2f}x")
    if "lambda-one" in by_key:
        row = by_key["lambda-one"]
        posts = sum(row["frames"].values())
        kinds = ", ".join(f"{count:,} {kind}" for kind, count in sorted(row["frames"].items()))
        lines.append(
            f"- On Lambda, {row['clients']} joins cost {posts:,} posts ({kinds}): "
            f"{posts / row['clients']:.1f} per join (its welcome, and its join told to each "
            "member already there, inline)"
        )
    return publish("storm", lines, rows)


if __name__ == "__main__":
    raise SystemExit(main())
