"""Lambda fan-out: one message to a room of 1,000 connections through the Management API,
served on loopback with 20 ms of latency per call, against sequential posting (what Chalice's
tutorial and most samples do), measured in the same run.

    .venv/bin/python bench/lambda_fanout.py [--connections 1000] [--latency 0.02]

Prints both wall times, the speed-up, and the most calls the server saw in flight at once
(which must not exceed WSCHAT_FANOUT_CONCURRENCY). Target (issue 7): at most 1.5 s, at least
13x faster than sequential.
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

from infra.apigw import ManagementApiDelivery, make_management_client


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return 0
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    pin_to_client_core()
    command = ["taskset", "-c", str(SERVER_CORE), sys.executable, __file__, "--serve"]
    server = subprocess.Popen([*command, "--latency", str(args.latency)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        endpoint = f"http://127.0.0.1:{int(server.stdout.readline())}"
        return run(args, endpoint)
    finally:
        server.terminate()
        server.wait()


def run(args: argparse.Namespace, endpoint: str) -> int:
    client = make_management_client(endpoint, pool_size=args.concurrency)
    ids = [f"conn-{i}" for i in range(args.connections)]
    payload = '{"type":"message","id":1,"text":"hello"}'

    started = time.perf_counter()
    for connection_id in ids:  # the baseline: one post after another
        client.post_to_connection(ConnectionId=connection_id, Data=payload.encode())
    sequential = time.perf_counter() - started
    assert stats(endpoint)["calls"] == args.connections

    delivery = ManagementApiDelivery(client, concurrency=args.concurrency)
    started, cpu = time.perf_counter(), time.process_time()
    gone = delivery.send(ids, payload)
    ours, cpu = time.perf_counter() - started, time.process_time() - cpu
    seen = stats(endpoint)
    assert gone == [] and seen["calls"] == args.connections

    ideal = args.connections / args.concurrency * args.latency
    rows: list[dict[str, Any]] = [
        {"way": "sequential post_to_connection (baseline)", "seconds": sequential},
        {"way": f"ManagementApiDelivery, {args.concurrency} workers", "seconds": ours},
    ]
    lines = [
        f"| fan-out to {args.connections} at {args.latency * 1000:.0f} ms/call | wall "
        "| vs sequential |",
        "|---|---|---|",
    ]
    for row in rows:
        row["speedup"] = sequential / row["seconds"]
        lines.append(f"| {row['way']} | {row['seconds']:.2f} s | {row['speedup']:.1f}x |")
    lines.append("")
    lines.append(
        f"Peak calls in flight: {seen['peak']} (limit {args.concurrency}). Client CPU during "
        f"the fan-out: {cpu:.2f} s ({cpu / args.connections * 1000:.2f} ms per post). "
        f"The latency floor at this concurrency: {ideal:.2f} s."
    )
    return publish("lambda_fanout", lines, [{**row, "peak": seen["peak"]} for row in rows])


if __name__ == "__main__":
    raise SystemExit(main())
