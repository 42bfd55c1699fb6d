"""What the local benchmarks share: the three servers (wschat and two baselines) started on
their own core, their CPU time and memory read from /proc, and a load generator on the other
core whose receivers time every delivery.

Every message carries `m<seq> <perf_counter at send>`; the sender and the receivers live in
this one process, so one clock times each delivery end to end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import uvloop  # uvicorn[standard] brings it
from websockets.asyncio.client import ClientConnection, connect

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = Path(os.environ.get("BENCH_RESULTS", BENCH / "results"))  # tests point it elsewhere
SERVER_CORE, CLIENT_CORE = 0, min(1, (os.cpu_count() or 1) - 1)  # one core: share it
STAMP = re.compile(rb"\bm(\d+) (\d+\.\d+)")
PYTHON = sys.executable
UVICORN_AS_WSCHAT = [  # the protocol settings `wschat serve` uses, so only the app differs
    "--http", "h11", "--ws", "websockets-sansio", "--ws-max-size", "32768",
    "--ws-max-queue", "16", "--ws-per-message-deflate", "false", "--log-level", "warning",
]  # fmt: skip


@dataclass(frozen=True)
class Subject:
    """A server under test: how to start it and where a room's sockets go."""

    key: str
    label: str
    command: tuple[str, ...]
    path: str  # format fields: room, user (a name), index (an integer)
    env: tuple[tuple[str, str], ...] = ()

    def target(self, room: str, index: int) -> str:
        """The request path (and query) of socket `index` in `room`."""
        return self.path.format(room=room, user=f"u{index}", index=index)


WSCHAT = Subject(
    "wschat",
    "wschat (uvicorn)",
    (str(Path(PYTHON).parent / "wschat"), "serve"),
    "/items/{room}/ws?token={user}",
    # Benchmarks send faster than one person types: lift the per-connection rate limit.
    (
        ("WSCHAT_RATE_PER_SECOND", "1000000"),
        ("WSCHAT_RATE_BURST", "1000000"),
        ("WSCHAT_LOG_LEVEL", "warning"),
    ),
)
FASTAPI_DOCS = Subject(
    "fastapi-docs",
    "FastAPI docs ConnectionManager (baseline)",
    (PYTHON, "-m", "uvicorn", "--app-dir", str(BENCH), "baseline_fastapi_docs:app",
     *UVICORN_AS_WSCHAT),
    "/ws/{index}",
)  # fmt: skip
WEBSOCKETS = Subject(
    "websockets",
    "websockets + broadcast() (reference)",
    (PYTHON, str(BENCH / "baseline_websockets.py")),
    "/{room}",
)
SUBJECTS = (WSCHAT, FASTAPI_DOCS, WEBSOCKETS)


T = TypeVar("T")


def run_client(main: Coroutine[Any, Any, T]) -> T:
    """Run the load generator on uvloop, as the servers under test run: on asyncio's own
    loop the client took longer to read a message off 100 or 1,000 sockets than the
    servers took to write it, and the paced p99 was the client's (every server's p99 alike,
    whatever its CPU per delivery)."""
    return uvloop.run(main)


def pin_to_client_core() -> None:
    os.sched_setaffinity(0, {CLIENT_CORE})


@dataclass
class Server:
    subject: Subject
    port: int
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process, from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def url(self, room: str, index: int) -> str:
        return f"ws://127.0.0.1:{self.port}{self.subject.target(room, index)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(subject: Subject, core: int = SERVER_CORE) -> Iterator[Server]:
    """The server on `core` (taskset execs, so the pid is the server's own)."""
    port = free_port()
    env = {**os.environ, **dict(subject.env)}
    command = ["taskset", "-c", str(core), *subject.command, "--port", str(port)]
    with tempfile.TemporaryFile() as log:  # shown only if the server fails to start
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            _wait_listening(process, port, log)
            yield Server(subject, port, process)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@asynccontextmanager
async def serving_in_process() -> AsyncIterator[int]:
    """`wschat serve`'s app and protocols on this process's event loop (for tracemalloc or
    cProfile to see them); yields its port, and stops it at the end."""
    import uvicorn

    from handler.cli import server_config
    from infra.settings import get_settings

    os.environ.setdefault("WSCHAT_LOG_LEVEL", "warning")
    port = free_port()
    server = uvicorn.Server(server_config(get_settings(), "127.0.0.1", port))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        await serving


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
    deadline = time.monotonic() + 30
    while process.poll() is None:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    log.seek(0)
    raise RuntimeError(f"{process.args!r} is not listening:\n{log.read().decode(errors='replace')}")


async def open_many(
    server: Server, room: str, indexes: range, **options: Any
) -> list[ClientConnection]:
    """Open sockets, 50 handshakes at a time (a browser crowd arrives spread out too)."""
    gate = asyncio.Semaphore(50)

    async def one(index: int) -> ClientConnection:
        async with gate:
            return await connect(
                server.url(room, index),
                ping_interval=None,  # the server pings; a client ping only adds noise
                compression=None,
                open_timeout=60,
                **options,
            )

    return list(await asyncio.gather(*(one(index) for index in indexes)))


class Receiver(asyncio.Protocol):
    """A receiving client that does no more than a receiver must: frame, answer pings, and
    time each stamped message. websockets' full client costs more CPU per frame than the
    servers under test spend per delivery, which would leave them idle, and a server that
    is not kept busy spends more per delivery on waking up than on delivering. With this
    receiver the load generator outruns the server, so its CPU per delivery is its own.
    """

    def __init__(
        self,
        path: str,
        on_stamp: Callable[[int, float], None],
        on_text: Callable[[bytes], None] | None = None,
    ) -> None:
        """`on_text`, if given, sees every text frame (the storm counts welcomes and presence);
        stamped ones go to `on_stamp` as well."""
        self.path = path
        self.on_stamp = on_stamp
        self.on_text = on_text
        self.buffer = bytearray()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"{self.path}: closed in the handshake"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.opened.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(bytes(buffer[:end]).decode()))
                return
            del buffer[: end + 4]
            self.opened.set_result(None)
        offset = 0
        while len(buffer) - offset >= 2:
            opcode, length, start = buffer[offset] & 0x0F, buffer[offset + 1] & 0x7F, offset + 2
            if length == 126:
                length, start = int.from_bytes(buffer[start : start + 2]), start + 2
            elif length == 127:
                length, start = int.from_bytes(buffer[start : start + 8]), start + 8
            if len(buffer) < start + length:
                break
            if opcode == 0x1:
                if self.on_text is not None:
                    self.on_text(bytes(buffer[start : start + length]))
                stamp = STAMP.search(buffer, start, start + length)
                if stamp:
                    self.on_stamp(int(stamp.group(1)), time.perf_counter() - float(stamp.group(2)))
            elif opcode == 0x9:  # ping: a masked pong (all-zero mask) with the same payload
                payload = bytes(buffer[start : start + length])
                self.transport.write(bytes([0x8A, 0x80 | length]) + b"\0\0\0\0" + payload)
            offset = start + length
        del buffer[:offset]


async def open_receivers(
    server: Server, room: str, indexes: range, on_stamp: Callable[[int, float], None]
) -> list[Receiver]:
    """Open Receivers, 50 handshakes at a time."""
    paths = [server.subject.target(room, index) for index in indexes]
    return await connect_receivers(server.port, paths, on_stamp)


async def connect_receivers(
    port: int,
    paths: Sequence[str],
    on_stamp: Callable[[int, float], None] = lambda seq, latency: None,
    in_flight: int = 50,
    timeout: float = 60,
) -> list[Receiver]:
    """A Receiver on each of `paths` (request targets) of the server on `port`, with at most
    `in_flight` handshakes at a time, each within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(in_flight)

    async def one(path: str) -> Receiver:
        async with gate:
            _, receiver = await loop.create_connection(
                lambda: Receiver(path, on_stamp), "127.0.0.1", port
            )
            await asyncio.wait_for(receiver.opened, timeout)
            return receiver

    return list(await asyncio.gather(*(one(path) for path in paths)))


def abort_all(sockets: Sequence[ClientConnection | Receiver]) -> None:
    """Drop the sockets without a closing handshake: the run is over, and a server busy
    telling everyone who left would only slow the teardown."""
    for socket_ in sockets:
        socket_.transport.abort()


@dataclass
class Tally:
    """Deliveries of one phase: each seq is complete once every receiver has it."""

    receivers: int
    first_seq: int = 0  # a message of an earlier phase, arriving late, is not this one's
    latencies: list[float] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)
    completed: int = 0
    expected: int = 0
    window: asyncio.Semaphore | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, seq: int, latency: float) -> None:
        if seq < self.first_seq:
            return
        self.latencies.append(latency)
        count = self.counts[seq] = self.counts.get(seq, 0) + 1
        if count == self.receivers:
            self.completed += 1
            if self.window is not None:
                self.window.release()
            if self.completed == self.expected:
                self.done.set()


class Room:
    """Senders and receivers in one room; the receivers feed whichever Tally is current. The
    senders take turns, one message each. Receivers are dealt round robin across `spread`,
    senders across `senders_spread` (both by default `server`). Senders are members too:
    each message also reaches the other senders, which read it and let it go."""

    def __init__(
        self,
        server: Server,
        name: str,
        spread: Sequence[Server] = (),
        senders: int = 1,
        senders_spread: Sequence[Server] = (),
    ) -> None:
        self.server = server
        self.spread = list(spread) or [server]
        self.senders_spread = list(senders_spread) or [server]
        self.name = name
        self.tally = Tally(0)
        self.seq = 0
        self.receivers: list[Receiver] = []
        self.senders: list[ClientConnection] = []
        self._sender_count = senders

    async def open(self, receivers: int, first_index: int = 1) -> Room:
        indexes = range(first_index, first_index + receivers)
        hosts = len(self.spread)
        self.receivers = []
        for i, host in enumerate(self.spread):
            share = indexes[i::hosts]
            self.receivers += await open_receivers(host, self.name, share, self._stamped)
        self.senders = []
        first_sender, hosts = indexes.stop, len(self.senders_spread)
        for i, host in enumerate(self.senders_spread):
            share = range(first_sender, first_sender + self._sender_count)[i::hosts]
            self.senders += await open_many(host, self.name, share)
        self.drains = [asyncio.create_task(self._drain(ws)) for ws in self.senders]
        await self._joined()
        return self

    async def _joined(self) -> None:
        """Wait until a message reaches every receiver. A receiver's handshake completes
        before the server has it in the room (on Redis, a round trip or two later), and a
        message sent in between is not owed to it."""
        tally = self.new_phase(1)
        while not tally.done.is_set():
            await self.send()
            with suppress(TimeoutError):
                await asyncio.wait_for(tally.done.wait(), 0.2)

    def _stamped(self, seq: int, latency: float) -> None:
        self.tally.record(seq, latency)

    async def _drain(self, ws: ClientConnection) -> None:
        with suppress(Exception):  # what reaches a sender: read so it never stalls
            async for _ in ws:
                pass

    def new_phase(self, messages: int, window: int | None = None) -> Tally:
        self.tally = Tally(len(self.receivers), first_seq=self.seq + 1, expected=messages)
        if window is not None:
            self.tally.window = asyncio.Semaphore(window)
        return self.tally

    async def send(self, padding: str = "") -> None:
        self.seq += 1
        sender = self.senders[self.seq % len(self.senders)]
        await sender.send(f"m{self.seq} {time.perf_counter():.6f}{padding}")

    async def close(self) -> None:
        for drain in self.drains:
            drain.cancel()
        await asyncio.gather(*self.drains, return_exceptions=True)
        abort_all([*self.receivers, *self.senders])


async def closed_loop(room: Room, messages: int, window: int) -> Tally:
    """Send as fast as deliveries complete, at most `window` messages in flight."""
    tally = room.new_phase(messages, window)
    assert tally.window is not None
    for _ in range(messages):
        await tally.window.acquire()
        await room.send()
    await tally.done.wait()
    return tally


async def paced(room: Room, rate: float, messages: int, settle: float, padding: str = "") -> Tally:
    """Send at a steady rate, then wait up to `settle` seconds for the stragglers."""
    tally = room.new_phase(messages)
    started = time.perf_counter()
    for i in range(messages):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await room.send(padding)
    with suppress(TimeoutError):
        await asyncio.wait_for(tally.done.wait(), settle)
    return tally


def percentiles(latencies: list[float], expected: int | None = None) -> dict[str, float]:
    """p50, p99 and max in milliseconds; a delivery still missing counts as never (inf)."""
    missing = max(0, (expected or 0) - len(latencies))
    ordered = sorted(latencies) + [math.inf] * missing
    if not ordered:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max": ordered[-1] * 1000,
    }


def ms(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.1f} ms"


def publish(name: str, lines: list[str], rows: list[dict[str, Any]]) -> int:
    """Print the table, and keep it with its rows in bench/results/<name>.json, which
    bench/report.py turns into results.md and the chart. Returns the exit status."""
    markdown = "\n".join(lines)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"markdown": markdown, "rows": rows}, indent=1) + "\n"
    )
    return 0
