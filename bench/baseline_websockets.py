"""REFERENCE, not wschat: rooms on the `websockets` library alone, fanned out with
`websockets.broadcast` (no await per receiver, no per-connection queue of its own). The
near-limit figure for a Python WebSocket server.

    python bench/baseline_websockets.py --port 8765     # rooms are the request path
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict

from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: defaultdict[str, set[ServerConnection]] = defaultdict(set)


async def chat(websocket: ServerConnection) -> None:
    room = rooms[websocket.request.path if websocket.request else "/"]
    room.add(websocket)
    try:
        async for message in websocket:
            text = message if isinstance(message, str) else message.decode(errors="replace")
            broadcast((peer for peer in room if peer is not websocket), f"peer: {text}")
            await websocket.send(f"Message text was: {text}")
    finally:
        room.discard(websocket)


async def main(port: int) -> None:
    # The same frame limit and inbound queue as `wschat serve`; compression off.
    async with serve(
        chat, "127.0.0.1", port, max_size=32 * 1024, max_queue=16, compression=None
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
