"""A TCP proxy on loopback, in a thread of its own: what stands between clients and servers in
a deployment (a load balancer), for tests that need to cut every connection at once or lose a
backend. Each new connection goes to the next backend that answers, in turn."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.servers import free_port


class Proxy:
    def __init__(self, backends: list[int]) -> None:
        self.port = free_port()
        self.backends = backends
        self.connections = 0  # accepted so far
        self._turn = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)

    def ws(self, path: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def cut(self) -> int:
        """Drop every connection through the proxy, as a network failure does (no close
        frame); returns how many."""
        return asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(10)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _cut(self) -> int:
        writers = list(self._open)
        for writer in writers:
            writer.transport.abort()
        return len(writers)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream = await self._connect()
        if upstream is None:
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            self._open -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            port = self.backends[self._turn % len(self.backends)]
            self._turn += 1
            try:
                return await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue  # that backend is down: the next one
        return None

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()  # one side gone: both are


@contextmanager
def running_proxy(backends: list[int]) -> Iterator[Proxy]:
    proxy = Proxy(backends)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
