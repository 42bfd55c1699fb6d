"""Hostile REST clients against a real `wschat serve` on loopback (issue 25, items 1 and 2).

    .venv/bin/python bench/rest_abuse.py                 # this checkout
    .venv/bin/python bench/rest_abuse.py --source DIR    # another checkout (e.g. the code before)

1. Bodies: each on a fresh server, the growth of its peak RSS (VmHWM over VmRSS before) for
   a 32 MB publish with no credential, and for 6 MB of `[[],[],...]` without and with one.
2. History: a victim room gets 20 messages from one principal; another posts 200 messages of
   30 KB into its own rooms (one room, or 200) as fast as it can, with a 4 MiB history budget;
   then how many of the victim's messages are left, and how many posts were taken (201) or
   refused (429). Once with the default rate, once with it lifted (the budget alone); and
   3000 such posts into 3000 rooms against the default 64 MiB budget, the rate lifted.

Prints one JSON object. Loopback only; every server is stopped by its pid when done.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


@contextmanager
def serving(source: Path, env: Mapping[str, str]) -> Iterator[tuple[int, int]]:
    """`wschat serve` from `source`'s code; yields (port, pid)."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WSCHAT_")}
    environment.update({**env, "PYTHONPATH": str(source)})
    start = "import sys; from handler.cli import main; sys.argv[0] = 'wschat'; main()"
    argv = [sys.executable, "-c", start, "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        argv, cwd=source, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("wschat serve did not start") from None
                time.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def post(port: int, path: str, body: bytes, token: str | None) -> int:
    """POST the whole body (the server may answer early; it then reads and drops the rest)."""
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        return response.status
    except (BrokenPipeError, ConnectionResetError):
        return -1
    finally:
        connection.close()


def body_case(source: Path, body: bytes, token: str | None) -> dict[str, Any]:
    with serving(source, {}) as (port, pid):
        post(port, "/rooms/warm/messages", b'{"text": "warm up"}', "warm")
        before = status_kib(pid, "VmRSS")
        status = post(port, "/rooms/x/messages", body, token)
        time.sleep(0.5)
        return {
            "status": status,
            "peak_growth_mb": round((status_kib(pid, "VmHWM") - before) / 1024, 1),
            "rss_growth_mb": round((status_kib(pid, "VmRSS") - before) / 1024, 1),
        }


def read(port: int, room: str) -> list[dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", f"/rooms/{room}/messages?limit=500", headers={"Cookie": "session=r"})
    messages: list[dict[str, Any]] = json.loads(connection.getresponse().read())["messages"]
    connection.close()
    return messages


def flood_case(
    source: Path, rooms: Callable[[int], str], lift_rate: bool, posts: int = 200, mib: int = 4
) -> dict[str, Any]:
    env = {"WSCHAT_HISTORY_MAX_BYTES": str(mib * 1024 * 1024)}
    if lift_rate:
        env.update(WSCHAT_RATE_PER_SECOND="100000", WSCHAT_RATE_BURST="100000")
    with serving(source, env) as (port, _):
        for i in range(20):
            post(port, "/rooms/victim/messages", json.dumps({"text": f"m{i}"}).encode(), "alice")
        statuses: Counter[int] = Counter()
        started = time.monotonic()
        big = json.dumps({"text": "x" * 30_000}).encode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json", "Authorization": "Bearer mallory"}
        for i in range(posts):
            connection.request("POST", f"/rooms/{rooms(i)}/messages", big, headers)
            response = connection.getresponse()
            response.read()
            statuses[response.status] += 1
        connection.close()
        return {
            "seconds": round(time.monotonic() - started, 2),
            "statuses": dict(statuses),
            "victim_kept": f"{len(read(port, 'victim'))}/20",
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout to serve")
    source = parser.parse_args().source.resolve()
    flat = b"[" + b"[]," * 2_000_000 + b"[]]"  # 6 MB, two million empty lists
    results: dict[str, Any] = {"source": str(source)}
    text = b'{"text": "' + b"x" * 32 * 1024 * 1024 + b'"}'  # 32 MB, valid JSON
    results["32MB_no_credential"] = body_case(source, text, None)
    results["6MB_lists_no_credential"] = body_case(source, flat, None)
    results["6MB_lists_with_credential"] = body_case(source, flat, "writer")
    for rate in ("default_rate", "rate_lifted"):
        lift = rate == "rate_lifted"
        results[f"flood_200_rooms_{rate}"] = flood_case(source, lambda i: f"own-{i}", lift)
        results[f"flood_1_room_{rate}"] = flood_case(source, lambda i: "own", lift)
    results["flood_3000_rooms_64MiB_rate_lifted"] = flood_case(
        source, lambda i: f"own-{i}", True, posts=3000, mib=64
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
