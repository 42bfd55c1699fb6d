"""Capacity: 1,000 idle connections in 10 rooms of 100, then a paced message stream in every
room at once, on wschat and on the `websockets` reference (and, for memory only, the FastAPI
docs pattern, which has no rooms).

    .venv/bin/python bench/capacity.py

Figures: the server's resident memory per connection (RSS with the 1,000 open minus RSS
after one warm-up connection, over 1,000), and p50/p99/max delivery latency while each
room's sender posts 5 messages/s. Target (issue 7): at most 50 KiB per connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from wsload import (
    FASTAPI_DOCS,
    SUBJECTS,
    WEBSOCKETS,
    Room,
    Server,
    Tally,
    abort_all,
    ms,
    open_many,
    paced,
    percentiles,
    pin_to_client_core,
    publish,
    running,
)

ROOMS, PER_ROOM = 10, 100
RATE, SECONDS = 5, 4


async def measure(server: Server, fan_out: bool) -> dict[str, Any]:
    (warm,) = await open_many(server, "warm", range(1, 2))
    await warm.send("m0 0.0")
    await asyncio.sleep(0.5)
    abort_all([warm])
    await asyncio.sleep(0.5)
    before = server.rss_bytes()
    rooms = [
        await Room(server, f"room{r}").open(PER_ROOM - 1, first_index=10 + r * PER_ROOM)
        for r in range(ROOMS)
    ]
    await asyncio.sleep(1)
    per_connection = (server.rss_bytes() - before) / (ROOMS * PER_ROOM)
    row: dict[str, Any] = {"kib_per_connection": per_connection / 1024}
    if fan_out:

        async def stream(index: int, room: Room) -> Tally:
            await asyncio.sleep(index / (RATE * ROOMS))  # rooms take turns, as people would
            return await paced(room, RATE, RATE * SECONDS, settle=5)

        tallies = await asyncio.gather(*(stream(i, room) for i, room in enumerate(rooms)))
        latencies = [latency for tally in tallies for latency in tally.latencies]
        row.update(percentiles(latencies, RATE * SECONDS * (PER_ROOM - 1) * ROOMS))
    for room in rooms:
        await room.close()
    return row


def main() -> int:
    pin_to_client_core()
    rows: list[dict[str, Any]] = []
    for subject in SUBJECTS:
        with running(subject) as server:
            measured = asyncio.run(measure(server, fan_out=subject is not FASTAPI_DOCS))
            rows.append({"server": subject.label, **measured})
    reference = next(row for row in rows if row["server"] == WEBSOCKETS.label)
    lines = [
        f"| server ({ROOMS * PER_ROOM} connections, {ROOMS} rooms) | memory/connection "
        f"| vs websockets | p50 | p99 | max ({RATE} msg/s per room) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        row["memory_vs_reference"] = row["kib_per_connection"] / reference["kib_per_connection"]
        latency = (
            f"{ms(row['p50'])} | {ms(row['p99'])} | {ms(row['max'])}"
            if "p99" in row
            else "no rooms | | "
        )
        lines.append(
            f"| {row['server']} | {row['kib_per_connection']:.1f} KiB "
            f"| {row['memory_vs_reference']:.2f}x | {latency} |"
        )
    return publish("capacity", lines, rows)


if __name__ == "__main__":
    raise SystemExit(main())
