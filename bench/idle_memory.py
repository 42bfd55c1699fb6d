"""Where an idle connection's memory goes: `wschat serve`'s app and protocols run in this
process under tracemalloc, 1,000 clients in a child process open sockets into 10 rooms and
hold them, and the diff of two snapshots (after one warm-up connection, then with the 1,000
open and idle) is printed by source line.

    .venv/bin/python bench/idle_memory.py [--connections 1000] [--top 15]

Figures: traced Python memory and resident memory (RSS) per connection, and the top lines of
the diff. bench/capacity.py gives the RSS per connection side by side with the baselines;
this one says what it is made of.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tracemalloc
from typing import Any

from wsload import ROOT, connect_receivers, pin_to_client_core, publish, serving_in_process

ROOMS = 10
CHILD = "--hold"  # the child's mode: open the sockets, say so, hold them until stdin closes


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def hold(port: int, connections: int) -> None:
    """The child: open `connections` sockets, 50 handshakes at a time, then wait."""
    pin_to_client_core()
    paths = [f"/items/room{i % ROOMS}/ws?token=u{i}" for i in range(connections)]
    receivers = await connect_receivers(port, paths)
    print("open", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for receiver in receivers:
        receiver.transport.abort()


async def clients(port: int, connections: int) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        CHILD,
        str(port),
        str(connections),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 120)
    if line.strip() != b"open":
        raise RuntimeError("the clients did not open their sockets")
    return child


async def measure(connections: int, top: int) -> tuple[dict[str, Any], list[str]]:
    async with serving_in_process() as port:
        warm = await clients(port, 1)  # imports, caches and pools are filled before `before`
        await warm.communicate(b"")
        await asyncio.sleep(0.5)
        gc.collect()
        before, rss_before = tracemalloc.take_snapshot(), rss_bytes()
        child = await clients(port, connections)
        await asyncio.sleep(1)
        gc.collect()
        after, rss_after = tracemalloc.take_snapshot(), rss_bytes()
        await child.communicate(b"")

    stats = after.compare_to(before, "lineno")
    traced = sum(stat.size_diff for stat in stats)
    row = {
        "connections": connections,
        "traced_kib_per_connection": traced / connections / 1024,
        "rss_kib_per_connection": (rss_after - rss_before) / connections / 1024,
    }
    lines = [
        f"| {connections} idle connections | traced per connection | RSS per connection |",
        "|---|---|---|",
        f"| wschat (in process, tracemalloc on) | {row['traced_kib_per_connection']:.1f} KiB "
        f"| {row['rss_kib_per_connection']:.1f} KiB |",
        "",
        "| bytes per connection | allocations | where |",
        "|---|---|---|",
    ]
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = os.path.relpath(frame.filename, ROOT).replace(".venv/lib/", "")
        lines.append(
            f"| {stat.size_diff / connections:,.0f} | {stat.count_diff / connections:.1f} "
            f"| {where}:{frame.lineno} |"
        )
    return row, lines


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == CHILD:
        asyncio.run(hold(int(sys.argv[2]), int(sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    tracemalloc.start()
    row, lines = asyncio.run(measure(args.connections, args.top))
    return publish("idle_memory", lines, [row])


if __name__ == "__main__":
    raise SystemExit(main())
