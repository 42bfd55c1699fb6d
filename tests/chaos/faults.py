"""What the clients' chaos tests share (test_python_client.py, test_js_client.py): the
scenes, a runner for each client, and what must hold. Both clients while the server side
misbehaves: three clients in one room each send 200
messages while a worker is killed with SIGKILL (its clients land on the other through the
proxy in front), Redis restarts with its append-only file (nothing lost) or without
persistence (a discontinuity, then the chat goes on), the emulator restarts (its DynamoDB is
in memory: the same), or every socket is cut mid-send.

Each client must end with every message exactly once and in id order, apart from what a
reported discontinuity says is gone; each of its sends answered once, and stored once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from handler.client import connect
from tests.support.proxy import running_proxy
from tests.support.redis_server import running_redis
from tests.support.servers import ROOT, free_port, running_server

CLIENTS, COUNT = 3, 200
# The server's rate limit raised, and the clients' pace with it, so that 200 sends take
# seconds, not minutes; the fault comes a second into them.
SERVER = {"WSCHAT_RATE_PER_SECOND": "200", "WSCHAT_RATE_BURST": "400"}
PACE = 60
FAULT_AFTER = 1.0


@dataclass
class Scene:
    url: str  # where the clients connect
    http: str  # REST, to read what was stored
    fault: Callable[[], None]
    loses_history: bool


@contextmanager
def redis_workers(tmp: Path, persistent: bool, fault: str) -> Iterator[Scene]:
    """Two workers on one Redis, behind a proxy that hands each connection to the next
    worker that answers."""
    with ExitStack() as stack:
        redis = stack.enter_context(running_redis(tmp, persistent=persistent))
        env = {**SERVER, "WSCHAT_REDIS_URL": redis.url()}
        first = stack.enter_context(running_server(tmp, env))
        second = stack.enter_context(running_server(tmp, env))
        proxy = stack.enter_context(running_proxy([first.port, second.port]))

        def kill_worker() -> None:
            first.process.kill()

        action = kill_worker if fault == "sigkill" else redis.restart
        yield Scene(proxy.ws(), second.http, action, loses_history=fault == "volatile")


@contextmanager
def restarting_emulator(tmp: Path) -> Iterator[Scene]:
    port = free_port()
    with ExitStack() as stack:
        current = [stack.enter_context(running_server(tmp, SERVER, "emulate", port=port))]

        def restart() -> None:
            stopped = current.pop().process
            stopped.terminate()
            stopped.wait(20)  # its port free again, and its memory (the table) gone
            current.append(stack.enter_context(running_server(tmp, SERVER, "emulate", port=port)))

        server = current[0]
        yield Scene(server.ws("/local"), server.http, restart, loses_history=True)


@contextmanager
def cut_links(tmp: Path) -> Iterator[Scene]:
    with running_server(tmp, SERVER) as server, running_proxy([server.port]) as proxy:

        def cut_three_times() -> None:
            for _ in range(3):
                assert proxy.cut() > 0
                time.sleep(0.4)

        yield Scene(proxy.ws(), server.http, cut_three_times, loses_history=False)


SCENES: dict[str, Callable[[Path], Any]] = {
    "worker-sigkill": lambda tmp: redis_workers(tmp, persistent=False, fault="sigkill"),
    "redis-restart-aof": lambda tmp: redis_workers(tmp, persistent=True, fault="restart"),
    "redis-restart-volatile": lambda tmp: redis_workers(tmp, persistent=False, fault="volatile"),
    "emulator-restart": restarting_emulator,
    "sockets-cut": cut_links,
}


# --- the two clients, each run the same way ---------------------------------------------


async def python_clients(scene: Scene, room: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    rooms = [
        connect(scene.url, room, token=f"c{c}", min_delay=0.05, max_delay=1.0,
                send_rate=PACE, send_burst=30)
        for c in range(CLIENTS)
    ]  # fmt: skip

    async def watch(client: Any, run: dict[str, Any]) -> None:
        async for event in client:
            if event["type"] == "message":
                run["events"].append({"type": "message", "id": event["id"], "text": event["text"]})
            elif event["type"] == "discontinuity":
                run["events"].append(event)

    async def send(client: Any, run: dict[str, Any], text: str) -> None:
        try:
            stored = await client.send(text)
            run["acks"].append({"id": stored["id"], "text": stored["text"]})
        except Exception as error:
            run["failures"].append(repr(error))

    async with contextlib.AsyncExitStack() as stack:
        for client in rooms:
            await stack.enter_async_context(client)
        runs += [
            {"name": f"c{c}", "events": [], "acks": [], "failures": []} for c in range(CLIENTS)
        ]
        watchers = [asyncio.create_task(watch(r, run)) for r, run in zip(rooms, runs, strict=True)]
        for client in rooms:
            await asyncio.wait_for(client.wait_open(), 20)
        fault = asyncio.create_task(later(scene.fault))
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    send(client, run, f"{run['name']}-{n}")
                    for client, run in zip(rooms, runs, strict=True)
                    for n in range(COUNT)
                )
            ),
            90,
        )
        await fault
        last = latest(scene.http, room)
        async with asyncio.timeout(60):
            while not all(r.state == "open" and r.resume_point >= last for r in rooms):
                await asyncio.sleep(0.05)
    for watcher in watchers:
        await watcher
    return runs


async def later(fault: Callable[[], None]) -> None:
    await asyncio.sleep(FAULT_AFTER)
    await asyncio.to_thread(fault)


async def js_clients(scene: Scene, room: str, node: str) -> list[dict[str, Any]]:
    config = {
        "url": scene.url,
        "http": scene.http,
        "room": room,
        "clients": CLIENTS,
        "count": COUNT,
        "options": {"sendRate": PACE, "sendBurst": 30},
    }
    # A plain process, waited on in threads: asyncio's subprocess transports can outlive the
    # test's event loop, and their sockets then close unclosed.
    with subprocess.Popen(
        [node, "tests/js/chaos_room.mjs", json.dumps(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        assert process.stdout is not None
        try:
            async with asyncio.timeout(150):
                assert (await asyncio.to_thread(process.stdout.readline)).strip() == b"sending"
                await later(scene.fault)
                out, err = await asyncio.to_thread(process.communicate)
        finally:
            process.kill()  # if it is still running; leaving the block closes its pipes
    assert process.returncode == 0, err.decode()
    runs: list[dict[str, Any]] = json.loads(out.decode().strip().splitlines()[-1])
    return runs


# --- what must hold -----------------------------------------------------------------------


def latest(http: str, room: str) -> int:
    return int(read(http, room, 0, 1)["latest_id"])


def read(http: str, room: str, since: int, limit: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{http}/rooms/{room}/messages?since={since}&limit={limit}",
        headers={"Authorization": "Bearer chaos-reader"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def stored(http: str, room: str) -> list[tuple[int, str]]:
    """Everything the room holds now, oldest first."""
    found: list[tuple[int, str]] = []
    while True:
        page = read(http, room, found[-1][0] if found else 0, 500)
        if not page["messages"]:
            return found
        found += [(m["id"], m["text"]) for m in page["messages"]]


def check(runs: list[dict[str, Any]], kept: list[tuple[int, str]], loses_history: bool) -> None:
    texts = [text for _, text in kept]
    assert len(texts) == len(set(texts)), "a send was stored twice"
    if not loses_history:
        everything = {f"c{c}-{n}" for c in range(CLIENTS) for n in range(COUNT)}
        assert set(texts) == everything and [i for i, _ in kept] == list(range(1, len(kept) + 1))
    for run in runs:
        name = run["name"]
        assert run["failures"] == [], run["failures"]
        answered = sorted(ack["text"] for ack in run["acks"])
        assert answered == sorted(f"{name}-{n}" for n in range(COUNT)), f"{name}: answers"
        epochs: list[list[tuple[int, str]]] = [[]]
        for event in run["events"]:
            if event["type"] == "message":
                epochs[-1].append((event["id"], event["text"]))
            elif event["reason"] == "history_lost":
                epochs.append([])
            else:
                pytest.fail(f"{name}: ids {event['from']}-{event['to']} reported expired")
        for messages in epochs:
            ids = [i for i, _ in messages]
            assert ids == sorted(set(ids)), f"{name}: a repeat, or out of order"
        assert loses_history or len(epochs) == 1, f"{name}: a discontinuity without a loss"
        # The history the room holds now reached this client once each, in order: the same
        # messages, not others under the same ids (which a client drops as repeats).
        assert epochs[-1] == kept, f"{name}: not every stored message"
        if not loses_history:
            assert {ack["id"] for ack in run["acks"]} <= {i for i, _ in kept}
