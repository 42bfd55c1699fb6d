"""A Redis failover that loses writes, under the Python client (handler/client/): a primary
and its replica, the replica paused (SIGSTOP) while messages are published so that they
never reach it, the primary killed (SIGKILL), the replica promoted. Three clients in one
room each send 200 messages meanwhile (tests/chaos/faults.py) through two workers.

Every client must end with every message the room holds, once each, in id order, or have
been told `recovered: false` and resumed; none may hold two messages under one id and
epoch. Before the workers held Redis to the ids they had seen, the promoted replica gave
the lost ids again under the same epoch, and the clients dropped those messages as repeats.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.chaos.faults import SERVER, Scene, check, python_clients, stored
from tests.support.proxy import running_proxy
from tests.support.redis_server import RedisServer, running_replicated
from tests.support.servers import running_server

HELD_BACK = 0.7  # seconds of messages that reach the primary and not its replica
# Written to the primary as the replica is paused: it fills the replication link's socket
# buffers, which would otherwise carry everything published meanwhile to the replica once it
# resumes (the kernel delivers what a killed process had already sent), and nothing would be
# lost. What follows it stays in the primary's own buffer, and dies with it.
FILLER = 16 * 1024 * 1024


def hold_back_and_kill(primary: RedisServer, replica: RedisServer) -> None:
    """The replica falls behind while messages are published, then the primary dies."""
    replica.pause()
    with redis.Redis(port=primary.port, socket_timeout=5) as client:
        client.set("filler", b"x" * FILLER)
    time.sleep(HELD_BACK)
    primary.stop(kill=True)
    replica.resume()


@contextmanager
def behind_a_managed_endpoint(tmp: Path) -> Iterator[Scene]:
    """Workers that name one address for Redis (a managed primary endpoint, a failover
    proxy: here a TCP proxy), which moves to the replica once it is promoted with
    `REPLICAOF NO ONE`."""
    with ExitStack() as stack:
        primary, replica = stack.enter_context(running_replicated(tmp))
        endpoint = stack.enter_context(running_proxy([primary.port]))
        env = {**SERVER, "WSCHAT_REDIS_URL": f"redis://127.0.0.1:{endpoint.port}/0"}
        first = stack.enter_context(running_server(tmp, env))
        second = stack.enter_context(running_server(tmp, env))
        workers = stack.enter_context(running_proxy([first.port, second.port]))

        def fail_over() -> None:
            hold_back_and_kill(primary, replica)
            with redis.Redis(port=replica.port, socket_timeout=5) as client:
                client.execute_command("REPLICAOF", "NO", "ONE")
            endpoint.backends = [replica.port]
            endpoint.cut()

        yield Scene(workers.ws(), second.http, fail_over, loses_history=True)


def report(name: str, runs: list[dict[str, Any]], kept: list[tuple[int, str]]) -> None:
    """The counts the issue asks for, in the test's output (`pytest -s`)."""
    acked = sum(len(run["acks"]) for run in runs)
    texts = {text for _, text in kept}
    lost = sum(ack["text"] not in texts for run in runs for ack in run["acks"])
    told = sum(e["type"] == "discontinuity" for run in runs for e in run["events"])
    received = sum(e["type"] == "message" for run in runs for e in run["events"])
    print(
        f"\n{name}: sent {acked}, stored now {len(kept)}, acknowledged then lost {lost}, "
        f"received {received}, discontinuities reported {told}"
    )


@pytest.mark.timeout(120)
async def test_a_failover_behind_a_managed_endpoint_reuses_no_id(tmp_path: Path) -> None:
    with behind_a_managed_endpoint(tmp_path) as scene:
        runs = await python_clients(scene, "failover")
        kept = stored(scene.http, "failover")
    report("managed endpoint", runs, kept)
    check(runs, kept, loses_history=True)
    told = [run["name"] for run in runs if any(e["type"] == "discontinuity" for e in run["events"])]
    assert told, "no write was lost: the failover did not test anything"
