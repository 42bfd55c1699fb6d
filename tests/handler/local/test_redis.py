"""`wschat serve` on Redis, under faults: real processes, a real redis-server, no fakes.

The shared behaviour (two servers on one Redis) is in tests/contract/; here is what only the
Redis engine promises: ordered, gap-free delivery across hosts, surviving a killed server, a
killed subscription and a restarted Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.handler.local.test_metrics import scrape, value
from tests.support import presence
from tests.support.clients import ResumePoint, masked_frame, raw_upgrade, recv_json, until
from tests.support.redis_server import RedisServer, running_redis
from tests.support.servers import WSCHAT, Server, free_port, running_server

FAST = {"WSCHAT_RATE_PER_SECOND": "100000", "WSCHAT_RATE_BURST": "100000"}


def on_redis(redis: RedisServer, **env: str) -> dict[str, str]:
    return {**FAST, "WSCHAT_REDIS_URL": redis.url(), **env}


def url(server: Server, room: str, token: str, **query: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return server.ws(f"/items/{room}/ws?token={token}&format=json{extra}")


def redis_command(redis: RedisServer, *words: str) -> bytes:
    """One command in RESP, answered in one read: enough for CLIENT KILL and FLUSHALL."""
    with socket.create_connection(("127.0.0.1", redis.port), 5) as sock:
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        sock.sendall(request.encode())
        return sock.recv(4096)


def worker_ids(redis: RedisServer) -> list[str]:
    """The workers registered in Redis (an array of 12-character bulk strings)."""
    return re.findall(
        r"\$12\r\n([0-9a-f]{12})\r\n", redis_command(redis, "SMEMBERS", "wschat:workers").decode()
    )


def connections_of(redis: RedisServer, worker: str) -> int:
    return int(
        redis_command(redis, "HLEN", f"wschat:worker:{{{worker}}}:conns")[1:].split(b"\r")[0]
    )


async def read_until(ws: Any, inbox: ResumePoint, count: int, timeout: float = 30) -> None:
    """Read into `inbox` until it holds `count` messages, asking for history when a reply
    ends short of the room (the resume rule in docs/protocol.md)."""
    deadline = time.monotonic() + timeout
    while len(inbox.texts) < count:
        frame = await recv_json(ws, max(0.1, deadline - time.monotonic()))
        if inbox.take(frame):
            await ws.send(json.dumps({"action": "history", "since": inbox.resume}))


async def publish(ws: Any, texts: list[str], window: int = 10) -> None:
    """Send `texts`, at most `window` unacknowledged."""
    sent = acked = 0
    while acked < len(texts):
        while sent < len(texts) and sent - acked < window:
            await ws.send(json.dumps({"action": "sendmessage", "text": texts[sent]}))
            sent += 1
        frame = await recv_json(ws, 30)
        acked += frame["type"] == "message" and frame["text"] in texts


@pytest.mark.timeout(180)
async def test_five_publishers_across_two_hosts_every_id_once_in_order(
    tmp_path: Path, redis: RedisServer
) -> None:
    with (
        running_server(tmp_path, on_redis(redis)) as one,
        running_server(tmp_path, on_redis(redis)) as two,
    ):
        readers = [
            await websockets.connect(url(s, "order", f"reader-{s.port}")) for s in (one, two)
        ]
        inboxes = [ResumePoint() for _ in readers]
        for ws, inbox in zip(readers, inboxes, strict=True):
            inbox.take(await recv_json(ws))  # the welcome
        publishers = [
            await websockets.connect(url((one, two)[i % 2], "order", f"pub-{i}")) for i in range(5)
        ]
        for ws in publishers:
            await recv_json(ws)
        reading = [
            asyncio.create_task(read_until(ws, inbox, 1000, 120))
            for ws, inbox in zip(readers, inboxes, strict=True)
        ]
        await asyncio.gather(
            *(publish(ws, [f"p{i}:{n}" for n in range(200)]) for i, ws in enumerate(publishers))
        )
        await asyncio.gather(*reading)
        for inbox in inboxes:
            assert sorted(inbox.texts) == list(range(1, 1001)) and inbox.repeats == 0
            for i in range(5):
                mine = [t for _, t in sorted(inbox.texts.items()) if t.startswith(f"p{i}:")]
                assert mine == [f"p{i}:{n}" for n in range(200)]
        for ws in [*readers, *publishers]:
            await ws.close()


def redis_reads(redis: RedisServer) -> int:
    """How many times Redis has read from its clients' sockets (INFO's total_reads_processed)."""
    found = re.search(rb"total_reads_processed:(\d+)", redis_command(redis, "INFO", "stats"))
    assert found is not None
    return int(found[1])


def script_runs(redis: RedisServer) -> int:
    """How many scripts Redis has run by EVALSHA: each publication is one."""
    found = re.search(rb"cmdstat_evalsha:calls=(\d+)", redis_command(redis, "INFO", "commandstats"))
    return int(found[1]) if found else 0


@pytest.mark.timeout(60)
async def test_a_burst_from_one_socket_is_published_in_order_in_one_round_trip(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Frames that arrive together go to Redis together: one publish script for the lot, in
    order, rather than a round trip each, which is what one busy sender cost the worker
    (docs/performance.md, section 9). Redis counts the reads it made and the scripts it ran;
    the 40 frames took 40 or more of each, then 40 scripts in one pipeline."""
    with running_server(tmp_path, on_redis(redis)) as server:
        reader = await websockets.connect(url(server, "burst", "reader"))
        inbox = ResumePoint()
        inbox.take(await recv_json(reader))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as writer:
            writer.sendall(raw_upgrade("/items/burst/ws?token=writer&format=json"))
            received = b""
            while b'"welcome"' not in received:
                received += writer.recv(65536)
            before, runs_before = redis_reads(redis), script_runs(redis)
            texts = [f"m{n}" for n in range(40)]
            actions = [json.dumps({"action": "sendmessage", "text": t}) for t in texts]
            writer.sendall(b"".join(masked_frame(1, a.encode()) for a in actions))  # one write
            await read_until(reader, inbox, 40)
            reads = redis_reads(redis) - before
            runs = script_runs(redis) - runs_before
        assert [inbox.texts[i] for i in sorted(inbox.texts)] == texts
        assert sorted(inbox.texts) == list(range(1, 41))
        # The burst's pipeline, the INFO asking, and a canary or heartbeat now and then.
        assert reads < 20, reads
        # A publication per batch the socket read (a batch takes up to 64 frames): each
        # subscriber reads each publication once.
        assert runs <= 4, runs
        await reader.close()


@pytest.mark.timeout(180)
async def test_a_server_killed_mid_stream_its_clients_resume_on_the_other(
    tmp_path: Path, redis: RedisServer
) -> None:
    with (
        running_server(tmp_path, on_redis(redis)) as doomed,
        running_server(tmp_path, on_redis(redis)) as survivor,
    ):
        watcher = await websockets.connect(url(survivor, "kill", "watcher"))
        await recv_json(watcher)
        reader = await websockets.connect(url(doomed, "kill", "reader"))
        inbox = ResumePoint()
        inbox.take(await recv_json(reader))
        writer = await websockets.connect(url(survivor, "kill", "writer"))
        await recv_json(writer)
        texts = [f"m{n}" for n in range(300)]
        publishing = asyncio.create_task(publish(writer, texts, window=5))
        await read_until(reader, inbox, 100)
        doomed.process.send_signal(signal.SIGKILL)  # no goodbye, no $disconnect of any kind
        doomed.process.wait(10)
        reader = await websockets.connect(url(survivor, "kill", "reader", since=str(inbox.resume)))
        await read_until(reader, inbox, 300)
        await publishing
        assert [inbox.texts[i] for i in sorted(inbox.texts)] == texts
        # The killed server's member is reaped: the room is told it left, within 30 s.
        deadline = time.monotonic() + 30
        while True:
            frame = await recv_json(watcher, max(0.1, deadline - time.monotonic()))
            if frame["type"] == "presence" and frame.get("leaves"):
                break
        for ws in (watcher, reader, writer):
            await ws.close()


@pytest.mark.timeout(120)
async def test_a_killed_subscription_heals_within_five_seconds(
    tmp_path: Path, redis: RedisServer
) -> None:
    with (
        running_server(tmp_path, on_redis(redis)) as one,
        running_server(tmp_path, on_redis(redis)) as two,
    ):
        reader = await websockets.connect(url(one, "deaf", "reader"))
        inbox = ResumePoint()
        inbox.take(await recv_json(reader))
        writer = await websockets.connect(url(two, "deaf", "writer"))
        await recv_json(writer)
        await publish(writer, ["before"])
        await read_until(reader, inbox, 1)
        killed = time.monotonic()
        assert redis_command(redis, "CLIENT", "KILL", "TYPE", "pubsub").startswith(b":")
        await publish(writer, [f"during {n}" for n in range(20)])  # into the silence
        await read_until(reader, inbox, 21, timeout=15)
        print("HEALED", time.monotonic() - killed)
        assert time.monotonic() - killed < 5
        assert sorted(inbox.texts) == list(range(1, 22)) and inbox.repeats == 0
        # Both workers' subscriptions were killed; the writer's may still be reconnecting
        # when the reader has everything (its health says so until then): within the 5 s.
        for server in (one, two):
            while _redis_health(server) != "linked":
                assert time.monotonic() - killed < 5, server.log()
                await asyncio.sleep(0.05)
        await reader.close()
        await writer.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "without persistence"])
async def test_a_redis_restart(tmp_path: Path, persistent: bool) -> None:
    with _redis(tmp_path, persistent) as redis, running_server(tmp_path, on_redis(redis)) as server:
        writer = await websockets.connect(url(server, "restart", "writer"))
        welcome = await recv_json(writer)
        await publish(writer, ["one", "two", "three"])
        await writer.close()
        redis.restart()
        writer = await websockets.connect(url(server, "restart", "writer"))
        await recv_json(writer)
        await publish(writer, ["four"])
        reader = await websockets.connect(
            url(server, "restart", "reader", since="2", epoch=welcome["epoch"])
        )
        resumed = await recv_json(reader)
        texts = [m["text"] for m in resumed["history"]]
        if persistent:
            assert (resumed["recovered"], texts) == (True, ["three", "four"])
        else:  # the history is gone, and the client is told so: not silently short
            assert (resumed["recovered"], texts) == (False, ["four"])
        for ws in (writer, reader):
            await ws.close()


def _redis(tmp_path: Path, persistent: bool) -> Any:
    directory = tmp_path / "redis"
    directory.mkdir(exist_ok=True)
    return running_redis(directory, persistent)


def test_workers_without_redis_stop_with_exit_code_2() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WSCHAT_")}
    result = subprocess.run(
        [str(WSCHAT), "serve", "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=30,
    )
    assert result.returncode == 2 and "WSCHAT_REDIS_URL" in result.stderr


@pytest.mark.timeout(120)
async def test_two_workers_share_their_rooms(tmp_path: Path, redis: RedisServer) -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WSCHAT_")}
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(WSCHAT), "serve", "--port", str(port), "--workers", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**environment, **on_redis(redis)},
        )
    server = Server(port, process, log)
    try:
        deadline = time.monotonic() + 30
        while len(worker_ids(redis)) < 2:  # both workers started and registered
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.2)
        # Members join until both workers hold some: the kernel picks the accepting worker.
        members: list[Any] = []
        inboxes: list[ResumePoint] = []
        while not all(connections_of(redis, w) for w in worker_ids(redis)):
            assert len(members) < 60, "every connection went to one worker"
            members.append(await websockets.connect(url(server, "shared", f"m{len(members)}")))
            inboxes.append(ResumePoint())
            welcome = await recv_json(members[-1])
            assert welcome["type"] == "welcome"  # first: no presence gets ahead of it
            inboxes[-1].take(welcome)
        await members[0].send(json.dumps({"action": "sendmessage", "text": "to everyone"}))
        for ws, inbox in zip(members, inboxes, strict=True):
            await read_until(ws, inbox, 1)
            assert list(inbox.texts.values()) == ["to everyone"]
        # Either worker's /metrics covers both (prometheus-client's multiprocess mode). The
        # sender's worker counts its frame once it has handled it, which may be after the
        # other worker delivered the message: a moment to count it.
        deadline = time.monotonic() + 5
        samples = scrape(server)
        while value(samples, "wschat_messages_received_total") < 1:
            assert time.monotonic() < deadline, samples
            await asyncio.sleep(0.05)
            samples = scrape(server)
        assert value(samples, "wschat_connections") == len(members)
        assert value(samples, "wschat_messages_received_total") == 1
        for ws in members:
            await ws.close()
    finally:
        process.terminate()
        process.wait(15)


@pytest.mark.timeout(120)
async def test_a_burst_of_handshakes_outnumbering_the_redis_pool_all_get_in(
    tmp_path: Path, redis: RedisServer
) -> None:
    """More members joining at once than the pool has connections: they wait their turn for
    one, instead of failing (redis-py's default pool raises "Too many connections")."""
    with running_server(tmp_path, on_redis(redis)) as server:
        members = await asyncio.gather(
            *(websockets.connect(url(server, "burst", f"m{i}")) for i in range(250))
        )
        welcomes = await asyncio.gather(*(recv_json(ws) for ws in members))
        assert {welcome["type"] for welcome in welcomes} == {"welcome"}
        await asyncio.gather(*(ws.close() for ws in members))
        assert "Too many connections" not in server.log()


@pytest.mark.timeout(120)
async def test_a_socket_that_closes_while_redis_is_down_leaves_nothing_behind(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Its disconnect cannot reach Redis; the socket's outbox and writer go all the same
    (they used to stay for ever, and /healthz counted the connection)."""
    with running_server(tmp_path, on_redis(redis)) as server:
        member = await websockets.connect(url(server, "down", "m"))
        await recv_json(member)
        assert json.loads(server.get("/healthz"))["connections"] == 1
        redis.stop()
        await member.close()
        deadline = time.monotonic() + 30
        while health(server)["connections"] != 0:  # 503 meanwhile: Redis is unreachable
            assert time.monotonic() < deadline, server.log()
            await asyncio.sleep(0.2)
        redis.start()


def health(server: Server) -> Any:
    """/healthz's report, whether it answers 200 or 503."""
    try:
        return json.loads(server.get("/healthz"))
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


@pytest.mark.timeout(120)
async def test_healthz_fails_within_a_second_or_so_of_losing_redis(
    tmp_path: Path, redis: RedisServer
) -> None:
    """/healthz answered 200 `linked` for 4.3 to 5.1 s after Redis was killed: only the
    canary's 5 s of silence told, while the subscription's and the canary's calls were
    failing all along (inside redis-py's retries). The first failed call tells now; the
    canary stays for a link that fails silently. Once Redis is back, so is the worker."""
    with running_server(tmp_path, on_redis(redis)) as server:
        member = await websockets.connect(url(server, "health", "m"))  # a subscription
        await recv_json(member)
        assert health(server)["redis"] == "linked"
        redis.stop(kill=True)
        lost = time.monotonic()
        while (report := health(server))["redis"] == "linked":
            await asyncio.sleep(0.05)
        noticed = time.monotonic() - lost
        print("NOTICED", noticed)
        assert report["status"] == "degraded" and report["redis"] == "unreachable"
        assert noticed < 2  # the canary's tick (1 s) and a margin, not its 5 s of silence
        redis.start()
        deadline = time.monotonic() + 30
        while health(server)["redis"] != "linked":
            assert time.monotonic() < deadline, server.log()
            await asyncio.sleep(0.2)
        await member.close()


def rest(server: Server, method: str, path: str, body: Any = None) -> tuple[int, str, float]:
    """A REST call's status, its `Retry-After`, and how long it took."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": "Bearer rest", "Content-Type": "application/json"}
    request = urllib.request.Request(server.http + path, data, headers, method=method)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, retry_after = response.status, response.headers.get("Retry-After", "")
    except urllib.error.HTTPError as error:
        status, retry_after = error.code, error.headers.get("Retry-After", "")
    return status, retry_after, time.monotonic() - started


@pytest.mark.timeout(120)
async def test_rest_answers_503_while_redis_is_down_or_frozen(
    tmp_path: Path, redis: RedisServer
) -> None:
    """A REST read or publish whose call to Redis failed answered 500, with a traceback at
    ERROR, after 7.5 s (Redis down: redis-py's retries) or 10 s (Redis frozen: the call's
    deadline). It answers 503 with `Retry-After`, as a socket is closed with 1013, and logs
    one line for it; and so does the socket (it logged a traceback at ERROR too)."""
    messages = "/rooms/outage/messages"
    with running_server(tmp_path, on_redis(redis)) as server:
        assert rest(server, "POST", messages, {"text": "before"})[0] == 201
        assert redis.process is not None
        frozen = redis.process.pid
        sockets = []
        for who in ("frozen", "killed"):
            sockets.append(await websockets.connect(url(server, "outage", who)))
            while (await recv_json(sockets[-1]))["type"] != "welcome":
                pass

        def freeze() -> None:
            os.kill(frozen, signal.SIGSTOP)

        def kill() -> None:
            redis.stop(kill=True)

        for stop, ws in zip((freeze, kill), sockets, strict=True):
            stop()
            try:
                await ws.send(json.dumps({"action": "sendmessage", "text": "during"}))
                answers = await asyncio.gather(
                    asyncio.to_thread(rest, server, "GET", messages),
                    asyncio.to_thread(rest, server, "POST", messages, {"text": "during"}),
                )
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), 15)
            finally:
                if redis.process is not None:
                    os.kill(frozen, signal.SIGCONT)
            for status, retry_after, took in answers:
                assert (status, retry_after) == (503, "5") and took < 12, answers
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        redis.start()
        log = server.log()
        assert "Traceback" not in log and "ERROR" not in log, log
        assert log.count("REST answered 503") == 4, log
        assert log.count("unavailable (Redis") == 6 and log.count("closing with 1013") == 2, log


@pytest.mark.timeout(120)
async def test_each_worker_batches_the_presence_it_delivers_to_its_members(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Joins and leaves through two servers on one Redis: a watcher on each hears them in at
    most one frame per interval, those through both servers together, and ends with the room
    as `members` has it. (Before, one frame per join and leave: 31 and 30 of them.)"""
    interval = 0.5
    env = on_redis(redis, WSCHAT_PRESENCE_INTERVAL=str(interval))
    with running_server(tmp_path, env) as one, running_server(tmp_path, env) as two:
        watchers, counted = [], []
        for server in (one, two):
            watchers.append(await websockets.connect(url(server, "storm", f"w{server.port}")))
            counted.append((await recv_json(watchers[-1]))["user"]["id"])
        started = time.monotonic()
        joiners = [
            await websockets.connect(url((one, two)[n % 2], "storm", f"j{n}")) for n in range(20)
        ]
        through: list[set[str]] = [set(), set()]  # who joined through each server
        ids = []
        for n, ws in enumerate(joiners):
            ids.append((await recv_json(ws))["user"]["id"])
            through[n % 2].add(ids[-1])
        for ws in joiners[:10]:  # five through each server
            await ws.close()
        # Each watcher ends with the room as it is: the second watcher and those who stayed,
        # each once, but itself and those its welcome counted.
        staying = [{counted[1], *ids[10:]}, set(ids[10:])]
        heard: list[list[dict[str, Any]]] = [[], []]
        for ws, frames, expected in zip(watchers, heard, staying, strict=True):
            while presence.present(frames) != dict.fromkeys(expected, 1):
                frame = await recv_json(ws, 10)
                if frame["type"] == "presence":
                    frames.append(frame)
            assert frames[-1]["count"] == 12
        elapsed = time.monotonic() - started
        await watchers[0].send(json.dumps({"action": "members"}))
        members = {user["id"] for user in (await until(watchers[0], "members"))["members"]}
        assert members == {*counted, *ids[10:]}
        for frames in heard:
            assert len(frames) <= elapsed / interval + 1, (elapsed, frames)
            joined = [{user["id"] for user in frame["joins"]} for frame in frames]
            assert any(j & through[0] and j & through[1] for j in joined), frames
        for ws in [*watchers, *joiners[10:]]:
            await ws.close()


def _redis_health(server: Server) -> str:
    """/healthz's `redis`: a worker not linked answers 503, with the same body."""
    try:
        body = server.get("/healthz")
    except urllib.error.HTTPError as error:
        body = error.read()
    return str(json.loads(body)["redis"])
