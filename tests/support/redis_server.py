"""A real `redis-server` on a free loopback port, for the tests that need one (no fakes)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port
from tests.support.tools import require


@dataclass
class RedisServer:
    port: int
    directory: Path
    persistent: bool
    process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        # Persistence, when asked for, is an append-only file fsynced on every write, so a
        # restart finds everything that was acknowledged.
        persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        command = [
            require("redis-server", "run the Redis engine's tests"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--enable-debug-command", "local",  # DEBUG SLEEP: a Redis that stalls
            *(persistence if self.persistent else ["--appendonly", "no"]),
        ]  # fmt: skip
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
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


@contextmanager
def running_redis(directory: Path, persistent: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), directory, persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()
