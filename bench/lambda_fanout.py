"""Lambda fan-out: what one post to the Management API costs, and one message to a room of
1,000 connections, against baselines measured in the same run.

    .venv/bin/python bench/lambda_fanout.py [--connections 1000] [--latency 0.02] [--posts 2000]

1. CPU per post: `--posts` sequential posts to a stand-in that answers at once, through the
   project's client (infra/aws/management_api.py: botocore's SigV4 signer and a pooled urllib3)
   and through the boto3 client the project used before it, configured as it was. Rounds
   alternate, and the best of five for each is kept (this machine is shared and noisy).
   Target (issue 15): 0.6x or less.
2. Wall time of a fan-out to `--connections`, served with `--latency` per call, through
   ManagementApiDelivery, against posting one after another (what Chalice's tutorial and most
   samples do), with the most calls the server saw in flight at once (which must not exceed
   WSCHAT_FANOUT_CONCURRENCY). Target (issue 7): at most 1.5 s, at least 13x faster.

The stand-ins run in their own process on the other core, as API Gateway's would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from wsload import SERVER_CORE, pin_to_client_core, publish

from infra.aws.delivery import ManagementApiDelivery
from infra.aws.management_api import USER_AGENT, ManagementApi


def boto3_client(endpoint: str, pool_size: int) -> Any:
    """The baseline: the boto3 client wschat posted with before issue 15, as it was set up."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=2.0,
        read_timeout=5.0,
        retries={"mode": "standard", "total_max_attempts": 2},
        max_pool_connections=pool_size,
        parameter_validation=False,
        user_agent=USER_AGENT,
    )
    return boto3.client("apigatewaymanagementapi", endpoint_url=endpoint, config=config)


class SlowManagementApi(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.calls = 0
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as API Gateway's endpoint allows
    server: SlowManagementApi

    def do_GET(self) -> None:  # /stats: what the benchmark reads back, then a reset
        with self.server.lock:
            body = json.dumps({"calls": self.server.calls, "peak": self.server.peak}).encode()
            self.server.calls = self.server.peak = 0
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.in_flight += 1
            self.server.calls += 1
            self.server.peak = max(self.server.peak, self.server.in_flight)
        time.sleep(self.server.latency)
        with self.server.lock:
            self.server.in_flight -= 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(latency: float) -> None:
    """The Management API stand-in, in its own process on its own core, so that its Python
    work never competes for the benchmarked process's GIL, as API Gateway's never would."""
    server = SlowManagementApi(latency)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def stats(endpoint: str) -> dict[str, int]:
    with urllib.request.urlopen(endpoint + "/stats", timeout=5) as response:  # noqa: S310
        result: dict[str, int] = json.loads(response.read())
        return result


def start_stand_in(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    command = ["taskset", "-c", str(SERVER_CORE), sys.executable, __file__, "--serve"]
    server = subprocess.Popen([*command, "--latency", str(latency)], stdout=subprocess.PIPE)
    assert server.stdout is not None
    return server, f"http://127.0.0.1:{int(server.stdout.readline())}/prod"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return 0
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    pin_to_client_core()
    fast, fast_endpoint = start_stand_in(0.0)
    slow, slow_endpoint = start_stand_in(args.latency)
    try:
        cpu_lines, cpu_rows = cpu_per_post(fast_endpoint, args.posts)
        lines, rows = fan_out(args, slow_endpoint)
        return publish("lambda_fanout", [*cpu_lines, "", *lines], [*cpu_rows, *rows])
    finally:
        for server in (fast, slow):
            server.terminate()
            server.wait()


def cpu_per_post(endpoint: str, posts: int) -> tuple[list[str], list[dict[str, Any]]]:
    client = boto3_client(endpoint, pool_size=4)
    api = ManagementApi(endpoint, "us-east-1", pool_size=4)
    data = b'{"type":"message","id":1,"text":"hello"}'
    ways: dict[str, Any] = {
        "boto3 client (baseline)": lambda cid: client.post_to_connection(
            ConnectionId=cid, Data=data
        ),
        "ManagementApi (SigV4Auth + urllib3)": lambda cid: api.post(cid, data),
    }
    best = dict.fromkeys(ways, float("inf"))
    for way in ways.values():  # warm-up: imports, the first connection
        for i in range(50):
            way(f"warm-{i}=")
    for _ in range(5):
        for name, way in ways.items():
            started = time.process_time()
            for i in range(posts):
                way(f"conn-{i}=")
            best[name] = min(best[name], (time.process_time() - started) / posts)
    baseline = best["boto3 client (baseline)"]
    lines = [
        f"| CPU per post, {posts} sequential posts, best of 5 | µs | vs boto3 |",
        "|---|---|---|",
    ]
    rows = []
    for name, seconds in best.items():
        lines.append(f"| {name} | {seconds * 1e6:.0f} | {seconds / baseline:.2f}x |")
        rows.append({"client": name, "cpu_us_per_post": seconds * 1e6, "ratio": seconds / baseline})
    return lines, rows


def fan_out(args: argparse.Namespace, endpoint: str) -> tuple[list[str], list[dict[str, Any]]]:
    api = ManagementApi(endpoint, "us-east-1", pool_size=args.concurrency)
    ids = [f"conn-{i}" for i in range(args.connections)]
    payload = '{"type":"message","id":1,"text":"hello"}'

    started = time.perf_counter()
    for connection_id in ids:  # the baseline: one post after another
        api.post(connection_id, payload.encode())
    sequential = time.perf_counter() - started
    assert stats(endpoint)["calls"] == args.connections

    delivery = ManagementApiDelivery(api, concurrency=args.concurrency)
    started, cpu = time.perf_counter(), time.process_time()
    gone = delivery.send(ids, payload)
    ours, cpu = time.perf_counter() - started, time.process_time() - cpu
    seen = stats(endpoint)
    assert gone == [] and seen["calls"] == args.connections

    ideal = args.connections / args.concurrency * args.latency
    rows: list[dict[str, Any]] = [
        {"way": "sequential posts (baseline)", "seconds": sequential},
        {"way": f"ManagementApiDelivery, {args.concurrency} workers", "seconds": ours},
    ]
    lines = [
        f"| fan-out to {args.connections} at {args.latency * 1000:.0f} ms/call | wall "
        "| vs sequential |",
        "|---|---|---|",
    ]
    for row in rows:
        row["speedup"] = sequential / row["seconds"]
        row["peak"] = seen["peak"]
        lines.append(f"| {row['way']} | {row['seconds']:.2f} s | {row['speedup']:.1f}x |")
    lines.append("")
    lines.append(
        f"Peak calls in flight: {seen['peak']} (limit {args.concurrency}). Client CPU during "
        f"the fan-out: {cpu:.2f} s ({cpu / args.connections * 1000:.2f} ms per post). "
        f"The latency floor at this concurrency: {ideal:.2f} s."
    )
    return lines, rows


if __name__ == "__main__":
    raise SystemExit(main())
