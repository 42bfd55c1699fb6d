"""Lambda cold start: what importing each handler module costs a fresh interpreter, beside
`import boto3` alone (what any Python Lambda that talks to AWS pays) and `import fastapi,
mangum` (what a Mangum-only design would pay), measured in the same run. Then the whole cold
path up to the first AWS call (settings read, boto3 loaded, both clients built) against
plain boto3 building the same two clients.

    .venv/bin/python bench/cold_start.py [--runs 15]

Prints the median wall time of a fresh `python -c` for each, the `-X importtime` total for
the imports, and each figure's ratio to its baseline. Target (issue 7): the WebSocket
handler's import at most 1.25x `import boto3`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from wsload import ROOT, publish

ENDPOINT = "https://abcdef123.execute-api.us-east-1.amazonaws.com/prod"
IMPORTS = {
    "import boto3 (baseline)": "boto3",
    "import fastapi, mangum (Mangum-only design)": "fastapi, mangum",
    "handler.aws.websocket (WebSocket handlers)": "handler.aws.websocket",
    "handler.aws.authorizer (authorizer)": "handler.aws.authorizer",
    "handler.aws.http (HTTP function, module only)": "handler.aws.http",
    # Metrics on Lambda (issue 16): the plain line writer the handlers use, and the library
    # it was weighed against, each alone.
    "infra.aws.emf (EMF line writer, in the handlers)": "infra.aws.emf",
    "aws_lambda_powertools.metrics (not used)": "aws_lambda_powertools.metrics",
}
FIRST_CALL = {
    "boto3: DynamoDB + Management API clients (baseline)": (
        "import boto3; boto3.client('dynamodb');"
        f" boto3.client('apigatewaymanagementapi', endpoint_url='{ENDPOINT}')"
    ),
    "handler.aws.websocket: import + runtime core (its DynamoDB and Management API clients)": (
        "import handler.aws.websocket; from handler.aws.runtime import runtime;"
        f" runtime().core('{ENDPOINT}')"
    ),
}
ENV = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}


def wall(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, check=True)
    return time.perf_counter() - started


def importtime_total(module: str) -> float:
    """Seconds of import work reported by `-X importtime` (cumulative of the top modules)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT,
        env=ENV,
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
    wall("import json")  # warm the interpreter into the OS file cache before measuring
    rows: list[dict[str, Any]] = []
    for label, module in IMPORTS.items():
        rows.append(
            {
                "what": label,
                "ms": statistics.median(wall(f"import {module}") for _ in range(args.runs)) * 1e3,
                "importtime_ms": statistics.median(importtime_total(module) for _ in range(5))
                * 1e3,
            }
        )
    for label, code in FIRST_CALL.items():
        rows.append(
            {"what": label, "ms": statistics.median(wall(code) for _ in range(args.runs)) * 1e3}
        )
    lines = [
        f"| fresh interpreter | wall (median of {args.runs}) | vs baseline | importtime "
        "| vs boto3 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        baseline = rows[0] if "importtime_ms" in row else rows[len(IMPORTS)]
        row["vs_baseline"] = row["ms"] / baseline["ms"]
        importtime = "| "
        if "importtime_ms" in row:
            ratio = row["importtime_ms"] / rows[0]["importtime_ms"]
            importtime = f"{row['importtime_ms']:.0f} ms | {ratio:.2f}x"
        lines.append(
            f"| {row['what']} | {row['ms']:.0f} ms | {row['vs_baseline']:.2f}x | {importtime} |"
        )
    return publish("cold_start", lines, rows)


if __name__ == "__main__":
    raise SystemExit(main())
