"""The floor under a delivery: the CPU of one `transport.write` of a frame to a loopback
socket, on the event loop `wschat serve` runs (uvloop).
A reader thread drains the other end; only the writing thread's CPU is counted.

    taskset -c 0 .venv/bin/python bench/write_floor.py [--size 40] [--writes 200000]

Prints the microseconds of CPU per write. bench/local_fanout.py runs it on the servers' core
and reports each server's CPU per delivery as a multiple of it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time

import uvloop  # uvicorn[standard] brings it, and uvicorn then runs on it


def drain(sock: socket.socket) -> None:
    while sock.recv(1 << 16):
        pass


class Writer(asyncio.Protocol):
    def __init__(self) -> None:
        self.resumed = asyncio.Event()
        self.resumed.set()

    def pause_writing(self) -> None:
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.resumed.set()


async def cpu_per_write(frame: bytes, writes: int) -> float:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    threading.Thread(target=drain, args=(theirs,), daemon=True).start()
    transport, writer = await asyncio.get_running_loop().create_connection(Writer, sock=ours)
    started = time.thread_time()
    for _ in range(writes):
        if not writer.resumed.is_set():
            await writer.resumed.wait()
        transport.write(frame)
    spent = time.thread_time() - started
    transport.close()
    return spent / writes


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=40, help="the frame's payload in bytes")
    parser.add_argument("--writes", type=int, default=200_000)
    args = parser.parse_args()
    frame = bytes((0x81, args.size)) + b"m" * args.size
    print(f"{uvloop.run(cpu_per_write(frame, args.writes)) * 1e6:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
