"""`wschat emulate` as a dev loop uses it, for minutes: does it stay flat and quick?

    .venv/bin/python bench/emulator_soak.py [--messages 2000] [--connects 500] [--rooms 50]

After a warm-up, it holds `--connects` JSON connections spread over `--rooms` rooms (500
members in the table, 10 to a room), opened one at a time, each counted when its welcome
arrives; then it sends `--messages` (one in ten of 30 KB, the rest short), each sender waiting
for its own echo. It reports the emulator's RSS (from /proc) at each step against the RSS after
warm-up, and the connect rate. Targets (issue 11): RSS within 1.5x of the warm-up figure, and
20 connects/s or more with 500 members in the table. The same run, with moto as it is, is the
baseline (`--subjects plain`): the emulator with infra/local_aws/lean_moto.py switched off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import websockets
from wsload import PYTHON, Server, Subject, publish, running

FAST = (("WSCHAT_RATE_PER_SECOND", "100000"), ("WSCHAT_RATE_BURST", "100000"))
LEAN = Subject(
    "lean",
    "wschat emulate",
    (str(Path(PYTHON).parent / "wschat"), "emulate", "--host", "127.0.0.1"),
    "/local?room={room}&token={user}&format=json",
    FAST,
)
# The baseline: the same emulator with moto as it is (infra/local_aws/lean_moto.py switched off).
PLAIN = Subject(
    "plain",
    "wschat emulate, moto as it is",
    (
        PYTHON,
        "-c",
        "from infra.local_aws import lean_moto; "
        "lean_moto.install = lean_moto.forget_tracked_models = lambda: None; "
        "from handler.cli import main; raise SystemExit(main())",
        "emulate",
        "--host",
        "127.0.0.1",
    ),
    LEAN.path,
    FAST,
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def url(server: Server, room: str, token: str) -> str:
    return f"ws://127.0.0.1:{server.port}/local?room={room}&token={token}&format=json"


async def welcomed(ws: Any) -> None:
    while json.loads(await ws.recv())["type"] != "welcome":
        pass


async def send_and_wait(ws: Any, text: str) -> None:
    await ws.send(json.dumps({"action": "sendmessage", "text": text}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame["type"] == "message" and frame["text"] == text:
            return


async def drain(ws: Any) -> None:
    try:
        async for _ in ws:
            pass
    except websockets.ConnectionClosed:
        pass


async def soak(server: Server, messages: int, connects: int, rooms: int) -> dict[str, Any]:
    pid = server.process.pid  # taskset execs the server: this is its own pid
    senders = [await websockets.connect(url(server, f"soak-{i}", f"sender-{i}")) for i in range(4)]
    for ws in senders:
        await welcomed(ws)
    for i in range(40):  # warm-up
        await send_and_wait(senders[i % 4], f"warm {i}")
    figures: dict[str, Any] = {"rss_warm_mb": rss_mb(pid), "rss_mb": []}

    held = []
    started = time.perf_counter()
    for i in range(connects):
        ws = await websockets.connect(url(server, f"room-{i % rooms}", f"member-{i}"))
        await welcomed(ws)
        held.append(ws)
    figures["connects_per_s"] = connects / (time.perf_counter() - started)
    drains = [asyncio.create_task(drain(ws)) for ws in held]
    figures["rss_mb"].append(("after connects", rss_mb(pid)))

    big = "x" * 30_000
    for i in range(messages):
        text = f"{i}:{big}" if i % 10 == 0 else f"message {i}"
        await send_and_wait(senders[i % 4], text)
        if (i + 1) % (messages // 4) == 0:
            figures["rss_mb"].append((f"after {i + 1} messages", rss_mb(pid)))
    for ws in [*held, *senders]:
        await ws.close()
    for task in drains:
        task.cancel()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connects", type=int, default=500)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--subjects", default="lean,plain", help="lean, plain (the baseline)")
    parser.add_argument(
        "--baseline-scale",
        type=float,
        default=0.2,
        help="the baseline runs this share of the messages and connects: at full size it "
        "takes over ten minutes and gigabytes",
    )
    args = parser.parse_args()
    lines = [
        f"| emulator | connects over {args.rooms} rooms | connects/s | messages "
        "| RSS after warm-up | after the connects | after the messages | growth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows: list[dict[str, Any]] = []
    for subject in (s for s in (LEAN, PLAIN) if s.key in args.subjects.split(",")):
        scale = args.baseline_scale if subject is PLAIN else 1.0
        messages, connects = int(args.messages * scale), int(args.connects * scale)
        with running(subject) as server:
            figures = asyncio.run(soak(server, messages, connects, args.rooms))
        warm, steps = figures["rss_warm_mb"], figures["rss_mb"]
        peak = max(mb for _, mb in steps)
        lines.append(
            f"| {subject.label} | {connects} | {figures['connects_per_s']:.1f} | {messages} "
            f"| {warm:.0f} MB | {steps[0][1]:.0f} MB | {steps[-1][1]:.0f} MB | {peak / warm:.2f}x |"
        )
        rows.append(
            {"subject": subject.key, "connects": connects, "messages": messages, **figures}
            | {"growth": peak / warm}
        )
    return publish("emulator_soak", lines, rows)


if __name__ == "__main__":
    raise SystemExit(main())
