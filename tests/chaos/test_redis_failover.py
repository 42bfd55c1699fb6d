"""A Redis failover that loses writes, under the Python client (handler/client/): a primary
and its replica, the replica paused (SIGSTOP) while messages are published so that they
never reach it, the primary killed (SIGKILL), the replica promoted: by hand behind one
address (a managed endpoint), or by three Sentinels that the workers follow; or, on a Redis
Cluster, the primary serving the room killed and its replica taking over. Three clients
in one room each send 200 messages meanwhile (tests/chaos/faults.py) through two workers.

Every client must end with every message the room holds, once each, in id order, or have
been told `recovered: false` and resumed; none may hold two messages under one id and
epoch. Before the workers held Redis to the ids they had seen, the promoted replica gave
the lost ids again under the same epoch, and the clients dropped those messages as repeats.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from infra.redis.history import channel
from tests.chaos.faults import SERVER, Scene, check, python_clients, stored
from tests.support.proxy import running_proxy
from tests.support.redis_server import (
    SERVICE,
    RedisServer,
    cluster_url,
    running_cluster,
    running_replicated,
    serving,
)
from tests.support.servers import running_server

HELD_BACK = 0.7  # seconds of messages that reach the primary and not its replica
# Written to the primary as the replica is paused: it fills the replication link's socket
# buffers, which would otherwise carry everything published meanwhile to the replica once it
# resumes (the kernel delivers what a killed process had already sent), and nothing would be
# lost. What follows it stays in the primary's own buffer, and dies with it.
FILLER = 16 * 1024 * 1024


def hold_back_and_kill(primary: RedisServer, replica: RedisServer, filler: str = "filler") -> None:
    """The replica falls behind while messages are published, then the primary dies.
    (`filler`: a key the primary serves, on a cluster.)"""
    replica.pause()
    with redis.Redis(port=primary.port, socket_timeout=5) as client:
        client.set(filler, b"x" * FILLER)
    time.sleep(HELD_BACK)
    primary.stop(kill=True)
    replica.resume()


def two_workers(stack: ExitStack, tmp: Path, redis_url: str) -> tuple[str, str]:
    """Two workers on `redis_url`, behind a proxy that hands each connection to the next
    that answers: where the clients connect, and the second worker's REST base."""
    env = {**SERVER, "WSCHAT_REDIS_URL": redis_url}
    first = stack.enter_context(running_server(tmp, env))
    second = stack.enter_context(running_server(tmp, env))
    workers = stack.enter_context(running_proxy([first.port, second.port]))
    return workers.ws(), second.http


@contextmanager
def behind_a_managed_endpoint(tmp: Path) -> Iterator[tuple[Scene, int]]:
    """Workers that name one address for Redis (a managed primary endpoint, a failover
    proxy: here a TCP proxy), which moves to the replica once it is promoted with
    `REPLICAOF NO ONE`."""
    with ExitStack() as stack:
        primary, replica = stack.enter_context(running_replicated(tmp))
        endpoint = stack.enter_context(running_proxy([primary.port]))
        ws, http = two_workers(stack, tmp, f"redis://127.0.0.1:{endpoint.port}/0")

        def fail_over() -> None:
            hold_back_and_kill(primary, replica)
            with redis.Redis(port=replica.port, socket_timeout=5) as client:
                client.execute_command("REPLICAOF", "NO", "ONE")
            endpoint.backends = [replica.port]
            endpoint.cut()

        yield Scene(ws, http, fail_over, loses_history=True), replica.port


@contextmanager
def watched_by_sentinels(tmp: Path, resumed: list[float]) -> Iterator[tuple[Scene, int]]:
    """Workers that ask three Sentinels where the primary is (`redis+sentinel://`): they
    promote the replica themselves, and the workers follow. `resumed` gets how long after
    the primary's death a publication was stored again."""
    with ExitStack() as stack:
        primary, replica, *sentinels = stack.enter_context(running_replicated(tmp, sentinels=3))
        addresses = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in sentinels)
        ws, http = two_workers(stack, tmp, f"redis+sentinel://{addresses}/{SERVICE}/0")

        def fail_over() -> None:
            hold_back_and_kill(primary, replica)
            resumed.append(until_stored(http, "failover"))

        yield Scene(ws, http, fail_over, loses_history=True), replica.port


@contextmanager
def on_a_cluster(tmp: Path, resumed: list[float]) -> Iterator[tuple[Scene, int]]:
    """Workers on a Redis Cluster (`redis+cluster://`): the primary serving the room is
    killed, and its replica takes over (cluster-node-timeout 1.5 s); the workers follow it.
    `resumed` gets how long after the primary's death a publication was stored again."""
    with ExitStack() as stack:
        nodes = stack.enter_context(running_cluster(tmp))
        primary = serving(nodes, channel("failover"))
        replica = next(node for node in nodes if node.replica_of == primary.port)
        ws, http = two_workers(stack, tmp, cluster_url(nodes))

        def fail_over() -> None:
            hold_back_and_kill(primary, replica, filler="filler:{failover}")
            resumed.append(until_stored(http, "failover"))

        yield Scene(ws, http, fail_over, loses_history=True), replica.port


def until_stored(http: str, room: str, within: float = 30) -> float:
    """Seconds until a REST publication to `room` is stored (each try waits up to 2 s)."""
    started = time.monotonic()
    tries = 0
    while time.monotonic() - started < within:
        tries += 1  # each try a text of its own: one that timed out may still be stored
        request = urllib.request.Request(
            f"{http}/rooms/{room}/messages",
            data=json.dumps({"text": f"probe-{tries}"}).encode(),
            headers={"Authorization": "Bearer prober", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=2):
                return time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing was stored for {within} s after the primary died")


def observed(http: str) -> tuple[dict[str, Any], str]:
    """A worker's /healthz (once it answers 200 again) and /metrics."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"{http}/healthz", timeout=2) as response:
                health: dict[str, Any] = json.loads(response.read())
                break
        except OSError:  # 503 while degraded
            assert time.monotonic() < deadline, "the worker stayed degraded"
            time.sleep(0.1)
    with urllib.request.urlopen(f"{http}/metrics", timeout=2) as response:
        return health, response.read().decode()


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
    with behind_a_managed_endpoint(tmp_path) as (scene, _):
        runs = await python_clients(scene, "failover")
        kept = stored(scene.http, "failover")
        health, metrics = observed(scene.http)
    report("managed endpoint", runs, kept)
    # The worker names the address it was given (the endpoint), and says what it went through.
    assert health["redis_resubscribes"] >= 1 and health["redis_epoch_restarts"] >= 1, health
    assert "wschat_redis_epoch_restarts_total" in metrics
    every_loss_told(runs, kept)


def every_loss_told(runs: list[dict[str, Any]], kept: list[tuple[int, str]]) -> None:
    """Every client has every message kept, or was told of the loss; and one was."""
    check(runs, kept, loses_history=True)
    told = [run["name"] for run in runs if any(e["type"] == "discontinuity" for e in run["events"])]
    assert told, "no write was lost: the failover did not test anything"


@pytest.mark.timeout(120)
async def test_workers_follow_sentinel_through_a_failover_and_reuse_no_id(tmp_path: Path) -> None:
    resumed: list[float] = []
    with watched_by_sentinels(tmp_path, resumed) as (scene, promoted):
        runs = await python_clients(scene, "failover")
        kept = stored(scene.http, "failover")
        health, metrics = observed(scene.http)
    report("sentinel", runs, kept)
    # The worker talks to the promoted replica now, and says so.
    assert health["redis_node"] == f"127.0.0.1:{promoted}", health
    assert f'wschat_redis_node{{kind="sentinel",node="127.0.0.1:{promoted}"}} 1.0' in metrics
    assert health["redis_resubscribes"] >= 1 and health["redis_epoch_restarts"] >= 1, health
    print(f"sentinel: stored again {resumed[0]:.1f} s after the primary died")
    every_loss_told(runs, kept)


@pytest.mark.timeout(120)
async def test_workers_follow_a_cluster_failover_and_reuse_no_id(tmp_path: Path) -> None:
    resumed: list[float] = []
    with on_a_cluster(tmp_path, resumed) as (scene, promoted):
        runs = await python_clients(scene, "failover")
        kept = stored(scene.http, "failover")
        health, metrics = observed(scene.http)
    report("cluster", runs, kept)
    # The worker subscribes on the promoted replica now, and says so.
    assert f"127.0.0.1:{promoted}" in health["redis_node"].split(","), health
    assert f'wschat_redis_node{{kind="cluster",node="127.0.0.1:{promoted}"}} 1.0' in metrics
    assert health["redis_resubscribes"] >= 1 and health["redis_epoch_restarts"] >= 1, health
    print(f"cluster: stored again {resumed[0]:.1f} s after the primary died")
    every_loss_told(runs, kept)
