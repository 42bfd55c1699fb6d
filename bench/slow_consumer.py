"""Slow consumer: the paced fan-out again, once as is and once with one more client in the
room that stops reading, on each of the three servers. The healthy receivers' latency should
not notice the stalled one.

    .venv/bin/python bench/slow_consumer.py

Messages carry 16 KiB so the stalled client's socket buffers (a few MB on loopback) fill
within the run. Target (issue 7): the healthy receivers' p99 with the stalled client at most
2x their p99 without it. The FastAPI docs pattern is shown as it behaves.
"""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

from wsload import (
    SUBJECTS,
    Room,
    Server,
    abort_all,
    ms,
    open_many,
    paced,
    percentiles,
    pin_to_client_core,
    publish,
    running,
)

RECEIVERS = 10
RATE = 50  # messages/s
SECONDS = 8
PADDING = " " + "x" * 16 * 1024


async def stalled_client(server: Server) -> Any:
    """A client that reads nothing: a small receive window and a one-frame queue."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    (client,) = await open_many(server, "slow", range(0, 1), sock=sock, max_queue=1)
    return client


async def measure(server: Server, stall: bool) -> dict[str, Any]:
    stalled = [await stalled_client(server)] if stall else []
    room = await Room(server, "slow").open(RECEIVERS)
    try:
        await paced(room, RATE, RATE, settle=3)  # warm-up: one second, not measured
        tally = await paced(room, RATE, RATE * SECONDS, settle=3, padding=PADDING)
        expected = RATE * SECONDS * RECEIVERS
        return {
            "stalled_client": stall,
            "delivered_pct": len(tally.latencies) / expected * 100,
            **percentiles(tally.latencies, expected),
        }
    finally:
        await room.close()
        abort_all(stalled)


def main() -> int:
    pin_to_client_core()
    rows: list[dict[str, Any]] = []
    for subject in SUBJECTS:
        for stall in (False, True):
            with running(subject) as server:
                rows.append({"server": subject.label, **asyncio.run(measure(server, stall))})
    lines = [
        f"| server ({RECEIVERS} receivers, {RATE} msg/s of 16 KiB for {SECONDS} s) "
        "| stalled client | delivered in time | p50 | p99 | max | p99 vs no stall |",
        "|---|---|---|---|---|---|---|",
    ]
    clean = {row["server"]: row for row in rows if not row["stalled_client"]}
    for row in rows:
        row["p99_vs_clean"] = row["p99"] / clean[row["server"]]["p99"]
        ratio = "stalled" if math.isinf(row["p99_vs_clean"]) else f"{row['p99_vs_clean']:.2f}x"
        lines.append(
            f"| {row['server']} | {'yes' if row['stalled_client'] else 'no'} "
            f"| {row['delivered_pct']:.1f}% | {ms(row['p50'])} | {ms(row['p99'])} "
            f"| {ms(row['max'])} | {ratio} |"
        )
    return publish("slow_consumer", lines, rows)


if __name__ == "__main__":
    raise SystemExit(main())
