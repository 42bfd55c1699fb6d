"""Real `redis-server` processes on free loopback ports, for the tests that need them (no
fakes): one Redis, a primary with its replica, Sentinels watching them, and a Redis Cluster
of three primaries and their three replicas."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port, free_ports
from tests.support.tools import require


@dataclass
class RedisServer:
    port: int
    directory: Path
    persistent: bool
    process: subprocess.Popen[bytes] | None = None
    replica_of: int | None = None  # the primary's port, for a replica
    sentinel: bool = False  # a Sentinel (`redis-server --sentinel`), with its config file
    cluster: bool = False  # a Redis Cluster node (CLUSTER_NODE_TIMEOUT_MS)
    bus_port: int = 0  # a cluster node's bus port, free too (not port + 10000, maybe taken)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.launch()
        self.wait_until_ready()

    def launch(self) -> None:
        """Start the process, without waiting for it to answer (`wait_until_ready`): a
        cluster's six start together."""
        # Persistence, when asked for, is an append-only file fsynced on every write, so a
        # restart finds everything that was acknowledged.
        persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        server = require("redis-server", "run the Redis engine's tests")
        command = [
            server,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--enable-debug-command", "local",  # DEBUG SLEEP: a Redis that stalls
            *(persistence if self.persistent else ["--appendonly", "no"]),
        ]  # fmt: skip
        if self.replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        if self.sentinel:  # Sentinel rewrites its config file: one of its own
            command = [server, str(self.directory / "sentinel.conf"), "--sentinel"]
        if self.cluster:
            command += [
                "--cluster-enabled", "yes",
                "--cluster-port", str(self.bus_port),
                "--cluster-config-file", str(self.directory / "nodes.conf"),
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                # A replica's first sync at once: by default a primary waits 5 s for more
                # replicas to sync together, which was most of a cluster's start-up.
                "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start: {(self.directory / 'redis.log').read_text()}"
                )
            time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): a replica paused so holds its replication back."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@contextmanager
def running_redis(directory: Path, persistent: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), directory, persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Sentinel's timeouts, shortened from its defaults (30 s, 3 min) so that a failover takes a
# few seconds: a primary unanswering for DOWN_AFTER_MS is down.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
SERVICE = "mymaster"


@contextmanager
def running_replicated(directory: Path, sentinels: int = 0) -> Iterator[list[RedisServer]]:
    """A primary, its replica (in sync before this returns), then `sentinels` Sentinels
    watching them under SERVICE (quorum 2). Stopped at the end, whichever are still running;
    a process a test killed is not signalled again."""
    primary = RedisServer(free_port(), _own(directory, "primary"), persistent=False)
    replica = RedisServer(free_port(), _own(directory, "replica"), False, replica_of=primary.port)
    watchers = [
        RedisServer(free_port(), _own(directory, f"sentinel-{n}"), False, sentinel=True)
        for n in range(sentinels)
    ]
    for watcher in watchers:
        (watcher.directory / "sentinel.conf").write_text(
            f"port {watcher.port}\nbind 127.0.0.1\ndir {watcher.directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
    started: list[RedisServer] = []
    try:
        for server in [primary, replica, *watchers]:
            server.start()
            started.append(server)
        _wait_for_sync(replica)
        yield [primary, replica, *watchers]
    finally:
        for server in reversed(started):
            if server.process is not None:
                server.resume()  # a paused process would not take SIGTERM
                server.stop()


def _own(directory: Path, name: str) -> Path:
    path = directory / name
    path.mkdir(exist_ok=True)
    return path


def _wait_for_sync(replica: RedisServer) -> None:
    import redis

    with redis.Redis(port=replica.port, socket_timeout=2) as client:
        deadline = time.monotonic() + 10
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync with its primary in 10 s")
            time.sleep(0.05)


# A cluster node unanswering this long is failing, and its replica takes over about as long
# after (Redis' default is 15 s). Short, so that a failover test takes seconds, and not so
# short that a loaded test machine fails over a node that only stalled.
CLUSTER_NODE_TIMEOUT_MS = 1500


@contextmanager
def running_cluster(directory: Path, primaries: int = 3) -> Iterator[list[RedisServer]]:
    """A Redis Cluster on loopback: `primaries` primaries, each with one replica
    (`redis-cli --cluster create ... --cluster-replicas 1`), every node in `cluster_state:ok`
    before this returns. The primaries come first in the list, their replicas after in the
    same order. Stopped at the end, whichever are still running."""
    started: list[RedisServer] = []
    try:
        nodes = _cluster_nodes(directory, primaries * 2, started)
        cli = require("redis-cli", "create a Redis Cluster for the tests")
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        # `--cluster create` makes the first `primaries` of the list primaries.
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout.decode()}")
        _wait_for_cluster(nodes)
        yield _in_roles(nodes)
    finally:
        for node in reversed(started):
            if node.process is not None:
                node.resume()
                node.stop()


def _cluster_nodes(directory: Path, count: int, started: list[RedisServer]) -> list[RedisServer]:
    """`count` cluster-enabled nodes, running and answering (each added to `started`). Ports
    found free can be taken before a node binds them (another test's server): then the
    nodes go, and new ports are tried, up to three times."""
    for attempt in range(3):
        ports = free_ports(count * 2)  # a port and a bus port for each node
        nodes = [
            RedisServer(
                ports[2 * n],
                _own(directory, f"node-{n}" if attempt == 0 else f"node-{n}-{attempt}"),
                False,
                cluster=True,
                bus_port=ports[2 * n + 1],
            )
            for n in range(count)
        ]
        try:
            for node in nodes:  # all at once: each takes a few tens of ms to answer
                node.launch()
                started.append(node)
            for node in nodes:
                node.wait_until_ready()
            return nodes
        except RuntimeError as error:
            if "Address already in use" not in str(error) or attempt == 2:
                raise
            for node in nodes:
                if node in started:
                    node.stop()
                    started.remove(node)
    raise AssertionError("unreachable")


def _wait_for_cluster(nodes: list[RedisServer]) -> None:
    """Every node says `cluster_state:ok`, and every replica is in sync with its primary."""
    import redis

    deadline = time.monotonic() + 30
    for node in nodes:
        with redis.Redis(port=node.port, socket_timeout=2) as client:
            while True:
                state = client.cluster("info")["cluster_state"]
                role = client.info("replication")
                synced = role["role"] == "master" or role.get("master_link_status") == "up"
                if state == "ok" and synced:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {node.port}: cluster_state {state}, {role}")
                time.sleep(0.05)


def _in_roles(nodes: list[RedisServer]) -> list[RedisServer]:
    """Primaries first, then each one's replica in the same order (redis-cli pairs them as it
    likes)."""
    import redis

    primaries = [node for node in nodes if _role(node) == "master"]
    replicas: list[RedisServer] = []
    for primary in primaries:
        for node in nodes:
            if node not in primaries and node not in replicas:
                with redis.Redis(port=node.port, socket_timeout=2) as client:
                    if int(client.info("replication")["master_port"]) == primary.port:
                        replicas.append(node)
    for primary, replica in zip(primaries, replicas, strict=True):
        replica.replica_of = primary.port
    return [*primaries, *replicas]


def _role(node: RedisServer) -> str:
    import redis

    with redis.Redis(port=node.port, socket_timeout=2) as client:
        return str(client.info("replication")["role"])


def cluster_url(nodes: list[RedisServer]) -> str:
    """`redis+cluster://` naming every node (any one would do: the rest are discovered)."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in nodes)


def primaries_of(nodes: list[RedisServer]) -> list[RedisServer]:
    """The nodes of a cluster that are primaries now (a failover changes them), in order."""
    return [node for node in nodes if node.process is not None and _role(node) == "master"]


def serving(nodes: list[RedisServer], key: str) -> RedisServer:
    """The primary of a cluster serving `key`'s slot now."""
    import redis

    with redis.Redis(port=primaries_of(nodes)[0].port, socket_timeout=2) as client:
        slot = int(client.cluster("keyslot", key))
        for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(node for node in nodes if node.port == int(primary[1]))
    raise LookupError(f"no node serves {key!r}")
