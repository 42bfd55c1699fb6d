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
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    server = SlowManagementApi(args.latency)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    client = make_management_client(endpoint, pool_size=args.concurrency)
    ids = [f"conn-{i}" for i in range(args.connections)]
    payload = '{"type":"message","id":1,"text":"hello"}'

    started = time.perf_counter()
    for connection_id in ids:  # the baseline: one post after another
        client.post_to_connection(ConnectionId=connection_id, Data=payload.encode())
    sequential = time.perf_counter() - started

    server.peak = 0
    delivery = ManagementApiDelivery(client, concurrency=args.concurrency)
    started = time.perf_counter()
    gone = delivery.send(ids, payload)
    ours = time.perf_counter() - started
    server.shutdown()

    assert gone == [] and server.calls == 2 * args.connections
    print(f"| fan-out to {args.connections} at {args.latency * 1000:.0f} ms/call | wall |")
    print("|---|---|")
    print(f"| sequential post_to_connection (baseline) | {sequential:.2f} s |")
    print(f"| ManagementApiDelivery, {args.concurrency} workers | {ours:.2f} s |")
    print(f"| speed-up | {sequential / ours:.1f}x |")
    print(f"| peak calls in flight | {server.peak} (limit {args.concurrency}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
