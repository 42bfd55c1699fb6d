"""Where a text-dialect connect's CPU goes: `wschat serve`'s app and protocols run in this
process under cProfile (pinned to one core), and a child process on the other core opens
connections into one room, 100 handshakes in flight, and drops them.

    .venv/bin/python bench/connect_profile.py [--connections 2000] [--top 25]

Figures, per connect: the CPU time of the whole (without the profiler: cProfile's own cost
grows with the calls it counts), then, with the profiler, the cumulative time of each step
(uvicorn's upgrade, the authentication, the negotiation, the registration, the accept) and
the functions that cost most themselves. bench/storm.py compares the whole with the
baselines; this one says what it is made of.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from typing import Any

from wsload import (
    ROOT,
    SERVER_CORE,
    connect_receivers,
    pin_to_client_core,
    publish,
    serving_in_process,
)

CHILD = "--connect"  # the child's mode: open the sockets, say so, drop them
IN_FLIGHT = 100

# Steps of a connect, each the cumulative time of one function. cProfile times a coroutine
# each time it resumes, so steps in different tasks overlap and do not add up to the whole;
# what is not listed is uvicorn's (h11's parse, websockets' second parse of the request, the
# 101) and asyncio's.
STEPS = (
    ("uvicorn: websockets' handshake (it parses the request again)", "handler/local/protocols.py", "handle_connect"),  # noqa: E501
    ("the chat's socket path, from its ASGI call", "handler/local/socket.py", "__call__"),
    ("  the handshake's headers, query and cookies read", "auth/handshake.py", "from_asgi"),
    ("  negotiation (room, dialect, `q`, `since`)", "handler/chat/handshake.py", "negotiate"),
    ("  authentication (token)", "auth/token.py", "authenticate"),
    ("  authentication's hand-off to a worker thread", "starlette/concurrency.py", "run_in_threadpool"),  # noqa: E501
    ("  registration: ChatCore.connect", "handler/chat/core.py", "connect"),
    ("  the accept (uvicorn sends the 101)", "starlette/websockets.py", "accept"),
    ("  ChatCore.welcome (nothing for text)", "handler/chat/core.py", "welcome"),
    ("  ChatCore.disconnect", "handler/chat/core.py", "disconnect"),
)  # fmt: skip


async def connect_all(port: int, connections: int) -> None:
    """The child: open `connections` text-dialect sockets into one room, then drop them."""
    pin_to_client_core()
    paths = [f"/items/storm/ws?token=u{i}" for i in range(connections)]
    receivers = await connect_receivers(port, paths, in_flight=IN_FLIGHT, timeout=120)
    for receiver in receivers:
        receiver.transport.abort()
    print("done", flush=True)


async def clients(port: int, connections: int) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, CHILD, str(port), str(connections), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(child.communicate(), 300)
    if out.strip() != b"done":
        raise RuntimeError("the clients did not open their sockets")
    await asyncio.sleep(0.5)  # the server notices they are gone


async def measure(
    connections: int, top: int, save: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    os.sched_setaffinity(0, {SERVER_CORE})
    async with serving_in_process() as port:
        await clients(port, 10)  # imports, caches and pools are filled first
        cpu = time.process_time()
        await clients(port, connections)
        plain_us = (time.process_time() - cpu) * 1e6 / connections
        profile = cProfile.Profile(time.process_time)  # CPU time: the core may be shared
        profile.enable()
        await clients(port, connections)
        profile.disable()

    stats = pstats.Stats(profile)
    if save:  # for `python -m pstats FILE` (callers, callees)
        stats.dump_stats(save)
    # (file, line, function): (primitive calls, calls, own seconds, cumulative seconds, callers)
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    entries = stats.stats  # type: ignore[attr-defined]
    total_us = sum(entry[2] for entry in entries.values()) * 1e6 / connections

    def cumulative(path: str, name: str) -> float:
        return sum(
            entry[3]
            for (filename, _, function), entry in entries.items()
            if filename.endswith(path) and function == name
        )

    row: dict[str, Any] = {
        "connections": connections,
        "cpu_us_per_connect": plain_us,
        "profiled_us_per_connect": total_us,
        "steps": {},
    }
    lines = [
        f"| {connections} text connects, {IN_FLIGHT} in flight | µs per connect |",
        "|---|---|",
        f"| all of the server's CPU, without the profiler | {plain_us:.0f} |",
        f"| all of it under cProfile (which adds its own) | {total_us:.0f} |",
    ]
    for label, path, name in STEPS:
        spent = cumulative(path, name) * 1e6 / connections
        row["steps"][label.strip()] = spent
        lines.append(f"| {label} | {spent:.0f} |")
    lines += ["", "| µs per connect (own time) | calls per connect | function |", "|---|---|---|"]
    own = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (filename, lineno, function), entry in own:
        where = os.path.relpath(filename, ROOT).replace(".venv/lib/", "")
        lines.append(
            f"| {entry[2] * 1e6 / connections:.1f} | {entry[1] / connections:.1f} "
            f"| {where}:{lineno} {function} |"
        )
    return row, lines


def main() -> int:
    if sys.argv[1:2] == [CHILD]:
        asyncio.run(connect_all(int(sys.argv[2]), int(sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save", help="also write the profile here, for python -m pstats")
    args = parser.parse_args()
    row, lines = asyncio.run(measure(args.connections, args.top, args.save))
    return publish("connect_profile", lines, [row])


if __name__ == "__main__":
    raise SystemExit(main())
