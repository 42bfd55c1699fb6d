"""docs/dashboard.png: the panels of docs/grafana-dashboard.json, drawn from real scrapes.

    .venv/bin/python bench/dashboard.py [--seconds 90] [--out docs/dashboard.png]

Starts a redis-server and `wschat serve` on it (so the pub/sub lag panel has data), drives a
few minutes' worth of chat in `--seconds`: members joining and leaving rooms, messages, JSON
clients resuming with `since`, refused handshakes and one slow consumer. It scrapes /metrics
every two seconds and computes each panel as Prometheus would (rates of counter deltas,
quantiles of histogram bucket deltas), then draws them in the dashboard's layout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import websockets
from prometheus_client.parser import text_string_to_metric_families
from wsload import PYTHON, ROOT, Subject, free_port, running

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
PICTURE = ROOT / "docs" / "dashboard.png"
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def traffic(port: int, seconds: float) -> None:
    """Members come and go in 20 rooms, talk, resume; some handshakes are refused; one client
    stops reading and is closed as a slow consumer."""
    url = f"ws://127.0.0.1:{port}/items/{{room}}/ws?token={{user}}{{extra}}"
    rng = random.Random(7)  # noqa: S311 (a load pattern, not a secret)
    held: list[Any] = []
    readers: list[asyncio.Task[None]] = []
    deadline = time.monotonic() + seconds
    slow_at = time.monotonic() + seconds / 3
    tick = 0
    while time.monotonic() < deadline:
        tick += 1
        room = f"room-{rng.randrange(20)}"
        extra = "&format=json" if rng.random() < 0.5 else ""
        if rng.random() < 0.3 and extra:
            extra += f"&since={rng.randrange(5)}"
        member = await websockets.connect(url.format(room=room, user=f"u{tick}", extra=extra))
        readers.append(asyncio.create_task(read_all(member)))
        held.append(member)
        if len(held) > 60 or rng.random() < 0.2:
            leaving = held.pop(rng.randrange(len(held)))
            await leaving.close()
        for ws in rng.sample(held, min(len(held), 6)):
            text = "x" * rng.choice((20, 200, 2000))
            if "format=json" in str(ws.request.path):
                await ws.send(json.dumps({"action": "sendmessage", "text": text}))
            else:
                await ws.send(text)
        if rng.random() < 0.1:
            try:
                async with websockets.connect(f"ws://127.0.0.1:{port}/items/{room}/ws"):
                    pass
            except websockets.InvalidStatus:
                pass  # counted by the server: the point
        if slow_at and time.monotonic() > slow_at:
            slow_at = 0
            await slow_consumer(port)
        await asyncio.sleep(0.15)
    for ws in held:
        await ws.close()
    await asyncio.gather(*readers)


async def read_all(ws: Any) -> None:
    """A member reads everything it is sent, as a live client does."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in ws:
            pass


async def slow_consumer(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow = await websockets.connect(
        f"ws://127.0.0.1:{port}/items/slow/ws?token=slow", sock=sock, max_queue=4
    )
    async with websockets.connect(f"ws://127.0.0.1:{port}/items/slow/ws?token=loud") as loud:
        for i in range(300):
            await loud.send(f"{i}:" + "y" * 30_000)
            await loud.recv()
            await loud.recv()
    await asyncio.sleep(1)
    slow.transport.abort()


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """histogram_quantile over (le, count) pairs of bucket increases."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return math.nan
    rank, prev_le, prev = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev) / max(count - prev, 1e-12)
        prev_le, prev = le, count
    return math.nan


def series(scrapes: list[tuple[float, Scrape]], expr: str) -> dict[str, list[float]]:
    """The handful of PromQL shapes the dashboard uses, over consecutive scrapes."""
    out: dict[str, list[float]] = defaultdict(list)
    name = expr.split("wschat_", 1)[1].split("[")[0].split(")")[0]
    name = "wschat_" + name
    by = expr.split("by (", 1)[1].split(")")[0] if "by (" in expr else None
    first = scrapes[0][1]
    for (t0, a), (t1, b) in itertools.pairwise(scrapes):
        if "increase(" in expr:  # over the window: here, since the run began (under 5 min)
            a = first
        if expr.startswith("sum(wschat_"):
            out[""].append(sum(v for (n, _), v in b.items() if n == name))
        elif "histogram_quantile" in expr:
            q = float(expr.split("(", 1)[1].split(",")[0])
            edges: dict[float, float] = defaultdict(float)
            for (n, labels), v in b.items():
                if n == name:
                    le = float(dict(labels)["le"])
                    edges[le] += v - a.get((n, labels), 0.0)
            out[""].append(quantile(q, sorted(edges.items())))
        else:  # rate or increase of a counter, summed, perhaps by one label
            sums: dict[str, float] = defaultdict(float)
            for (n, labels), v in b.items():
                if n == name:
                    key = dict(labels).get(by, "") if by and by != "le" else ""
                    sums[key] += v - a.get((n, labels), 0.0)
            scale = 1.0 if "increase(" in expr else 1.0 / (t1 - t0)
            for key, value in sums.items():
                out[key].append(value * scale)
    return out


def draw(scrapes: list[tuple[float, Scrape]], out: Path) -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    rows = math.ceil(len(panels) / 2)
    figure, axes = plt.subplots(rows, 2, figsize=(12, 2.4 * rows))
    start = scrapes[0][0]
    times = [t - start for t, _ in scrapes[1:]]
    for panel, ax in zip(panels, axes.flat, strict=False):
        for target in panel["targets"]:
            for key, values in series(scrapes, target["expr"]).items():
                legend = target["legendFormat"].replace("{{code}}", key)
                legend = legend.replace("{{status}}", key).replace("{{recovered}}", key)
                ax.plot(times[-len(values) :], values, label=legend, linewidth=1.2)
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        if panel["fieldConfig"]["defaults"]["unit"] == "s":
            ax.set_ylabel("seconds", fontsize=7)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes.flat[-2:]:
        ax.set_xlabel("seconds into the run", fontsize=7)
    figure.suptitle("wschat: the Grafana dashboard's panels, from real scrapes", fontsize=11)
    figure.tight_layout()
    figure.savefig(out, dpi=80)


async def collect(port: int, seconds: float) -> list[tuple[float, Scrape]]:
    scrapes = [(time.monotonic(), scrape(port))]
    load = asyncio.create_task(traffic(port, seconds))
    while not load.done():
        await asyncio.sleep(2)
        scrapes.append((time.monotonic(), await asyncio.to_thread(scrape, port)))
    await load
    return scrapes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--out", type=Path, default=PICTURE)
    args = parser.parse_args()
    redis_port = free_port()
    with tempfile.TemporaryDirectory() as data:
        redis = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                data,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            subject = Subject(
                "wschat",
                "wschat serve on Redis",
                (str(Path(PYTHON).parent / "wschat"), "serve", "--host", "127.0.0.1"),
                "",
                (
                    ("WSCHAT_REDIS_URL", f"redis://127.0.0.1:{redis_port}/0"),
                    ("WSCHAT_RATE_PER_SECOND", "1000"),
                    ("WSCHAT_RATE_BURST", "1000"),
                    ("WSCHAT_SEND_QUEUE_FRAMES", "32"),
                ),
            )
            time.sleep(0.5)
            with running(subject) as server:
                scrapes = asyncio.run(collect(server.port, args.seconds))
        finally:
            redis.terminate()
            redis.wait()
    draw(scrapes, args.out)
    print(f"{args.out}: {len(scrapes)} scrapes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
