"""Start a real `wschat serve` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WSCHAT = Path(sys.executable).parent / "wschat"


def free_port() -> int:
    """A free loopback port for a server a test starts (see `free_ports`)."""
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """`count` free loopback ports, all different, below the system's ephemeral range. A
    port the system hands out (bind to 0) comes from that range, which outgoing connections
    draw from too: between this check and the server's bind, one of the suite's thousands of
    client sockets took a Redis Cluster bus port once (`Address already in use`)."""
    low = _ephemeral_low()
    candidates = random.sample(range(max(1024, low - 12_000), low), 200)
    with ExitStack() as stack:
        found: list[int] = []
        for port in candidates:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))  # held until all are found
            except OSError:
                continue
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError(f"no {count} free ports below {low}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.http + path, timeout=5) as response:
            body: bytes = response.read()
            return body


def _wait_until_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"wschat serve exited early:\n{server.log()}")
        try:
            server.get("/healthz")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready in {timeout}s:\n{server.log()}") from None
            time.sleep(0.05)


@contextmanager
def running_server(
    tmp_dir: Path,
    env: Mapping[str, str] | None = None,
    command: str = "serve",
    port: int | None = None,
) -> Iterator[Server]:
    """`wschat serve` (or `wschat emulate`) as a user runs it, with `env` added to a clean
    WSCHAT_ environment, on `port` or a free one."""
    port = port or free_port()
    log_path = tmp_dir / f"wschat-{port}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WSCHAT_")}
    environment.update(env or {})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(WSCHAT), command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=ROOT,
        )
    server = Server(port, process, log_path)
    try:
        _wait_until_ready(server, timeout=20)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
