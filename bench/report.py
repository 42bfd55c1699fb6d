"""Gather bench/results/*.json into bench/results/results.md and bench/results/chart.png, and
put the table into docs/performance.md between its `results` markers.

    .venv/bin/python bench/report.py
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt
from wsload import RESULTS, ROOT

SECTIONS = {  # file name: heading, in the order of issue 7
    "local_fanout": "1. Local room fan-out (uvicorn)",
    "slow_consumer": "2. Slow consumer",
    "capacity": "3. Capacity",
    "idle_memory": "3b. Where an idle connection's memory goes",
    "cold_start": "4. Lambda cold start",
    "warm_path": "5. Lambda warm path",
    "lambda_fanout": "6. Lambda fan-out",
    "artifact_size": "7. Deployment artifact size",
    "emulator_soak": "8. The emulator over a dev loop",
    "redis_fanout": "9. Rooms on Redis",
    "lambda_big_room": "10. Big rooms on Lambda",
    "storm": "11. A reconnect storm",
    "connect_profile": "11b. Where a text-dialect connect's CPU goes",
}
BAR_PANELS = (  # results file, panel, label field, value field, title, unit
    ("slow_consumer", (0, 2), "label", "p99", "2. Slow consumer: healthy receivers' p99", "ms"),
    ("capacity", (0, 3), "server", "kib_per_connection", "3. Memory/idle connection (≤ 20)", "KiB"),
    ("cold_start", (1, 0), "what", "ms", "4. Lambda cold start, fresh process", "ms"),
    ("warm_path", (1, 1), "path", "us", "5. Warm $default CPU (≤ 1,000; log)", "µs"),
    ("lambda_fanout", (1, 2), "way", "seconds", "6. Lambda fan-out to 1,000 at 20 ms (≤ 1.5)", "s"),
    ("artifact_size", (1, 3), "artifact", "mb", "7. Lambda zip (≤ 15)", "MB"),
)
DOC = ROOT / "docs" / "performance.md"
MARKERS = re.compile(r"(<!-- results:start -->\n).*?(<!-- results:end -->)", re.DOTALL)


def load() -> dict[str, dict[str, Any]]:
    found = {}
    for name in SECTIONS:
        path = RESULTS / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{model}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def markdown(results: dict[str, dict[str, Any]]) -> str:
    parts = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.", ""]
    for name, heading in SECTIONS.items():
        if name in results:
            parts += [f"### {heading}", "", results[name]["markdown"], ""]
    parts.append("![benchmark chart](../bench/results/chart.png)")
    return "\n".join(parts) + "\n"


def grouped(ax: Any, rows: list[dict[str, Any]], key: str, title: str, unit: str) -> None:
    """Local fan-out rows as bars grouped by N, one colour per server."""
    servers = list(dict.fromkeys(row["server"] for row in rows))
    sizes = sorted({row["receivers"] for row in rows})
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        values = [
            next(row[key] for row in rows if row["server"] == server and row["receivers"] == n)
            for n in sizes
        ]
        ax.bar([x + i * width for x in range(len(sizes))], values, width, label=server)
    ax.set_xticks([x + width for x in range(len(sizes))], [f"N={n}" for n in sizes])
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.4)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper left")


def bars(ax: Any, labels: list[str], values: list[float], title: str, unit: str) -> None:
    shown = [0 if math.isinf(v) else v for v in values]
    ax.barh(labels, shown, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"])
    for y, value in enumerate(values):
        text = "never" if math.isinf(value) else f"{value:,.1f} {unit}"
        ax.text(shown[y], y, " " + text, va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.margins(x=0.35)


def short(label: str) -> str:
    return label.split(" (")[0]


def chart(results: dict[str, dict[str, Any]], out: Path) -> None:
    figure, axes = plt.subplots(2, 4, figsize=(22, 9))
    figure.suptitle("wschat benchmarks (bench/, issue 7), each against baselines from the same run")
    rows = {name: result["rows"] for name, result in results.items()}
    if "local_fanout" in rows:
        fanout = rows["local_fanout"]
        title = "1. Local fan-out: server CPU per delivery"
        grouped(axes[0][0], fanout, "server_us_per_delivery", title, "µs")
        grouped(axes[0][1], fanout, "p99", "1. Local fan-out: p99 at 2,000 deliveries/s", "ms")
    for row in rows.get("slow_consumer", []):
        row["label"] = short(row["server"]) + (" + stalled client" if row["stalled_client"] else "")
    for name, (y, x), label, value, title, unit in BAR_PANELS:
        charted = [row for row in rows.get(name, []) if value in row]
        if charted:
            labels = [short(row[label]) for row in charted]
            bars(axes[y][x], labels, [row[value] for row in charted], title, unit)
    axes[1][1].set_xscale("log")  # the moto figure is thousands of times the others
    figure.tight_layout()
    figure.savefig(out, dpi=80)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-doc", action="store_true", help="leave docs/performance.md alone")
    args = parser.parse_args()
    results = load()
    table = markdown(results)
    (RESULTS / "results.md").write_text(table)
    chart(results, RESULTS / "chart.png")
    if not args.no_doc and DOC.exists():
        text = DOC.read_text()
        if MARKERS.search(text):
            DOC.write_text(MARKERS.sub(lambda m: m.group(1) + table + m.group(2), text))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
