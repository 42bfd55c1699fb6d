"""Lambda cold start: what importing each handler module costs a fresh interpreter, beside
`import boto3` alone (what any Python Lambda that talks to AWS pays) and `import fastapi,
mangum` (what a Mangum-only design would pay), measured in the same run.

    .venv/bin/python bench/cold_start.py [--runs 15]

Prints the median wall time of `python -c "import X"` over fresh interpreters, the
`-X importtime` total, and each figure's ratio to `import boto3`. Target (issue 7): the
WebSocket handler at most 1.25x boto3.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = {
    "import boto3 (baseline)": "boto3",
    "import fastapi, mangum (Mangum-only design)": "fastapi, mangum",
    "handler.lambda_ws (WebSocket handlers)": "handler.lambda_ws",
    "auth.lambda_authorizer (authorizer)": "auth.lambda_authorizer",
    "handler.lambda_http (HTTP function, module only)": "handler.lambda_http",
}


def wall(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
    return time.perf_counter() - started


def importtime_total(module: str) -> float:
    """Seconds of import work reported by `-X importtime` (cumulative of the top modules)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    total = 0
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if match and not match.group(2).startswith(" "):  # top-level imports only
            total += int(match.group(1))
    return total / 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    wall("json")  # warm the interpreter into the OS file cache before measuring
    figures = {}
    for label, module in SUBJECTS.items():
        runs = [wall(module) for _ in range(args.runs)]
        figures[label] = (
            statistics.median(runs),
            statistics.median(importtime_total(module) for _ in range(5)),
        )
    base_wall, base_import = figures["import boto3 (baseline)"]
    print(f"| module | wall (median of {args.runs}) | vs boto3 | importtime | vs boto3 |")
    print("|---|---|---|---|---|")
    for label, (wall_s, import_s) in figures.items():
        print(
            f"| {label} | {wall_s * 1000:.0f} ms | {wall_s / base_wall:.2f}x "
            f"| {import_s * 1000:.0f} ms | {import_s / base_import:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
