"""No message lost: resume across a reconnect mid-stream, and order under concurrent publishers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from websockets.asyncio.client import ClientConnection

from tests.contract.conftest import Transport
from tests.support.clients import ResumePoint, recv_json, until

FAST = {"WSCHAT_RATE_PER_SECOND": "100000", "WSCHAT_RATE_BURST": "100000"}


@pytest.mark.timeout(300)  # the emulator runs 1,000 messages through the Lambda handlers
async def test_reconnect_mid_stream_misses_nothing_and_repeats_nothing(
    start_transport: Callable[..., Transport],
) -> None:
    transport = start_transport(**FAST)
    total = 1000
    async with transport.connect("stream", token="publisher", format="json") as publisher:
        await until(publisher, "welcome")

        # The publisher keeps at most 20 messages unacknowledged: a steady stream at whatever
        # pace the transport sustains, rather than a flood that trips flow control.
        window = asyncio.Semaphore(20)

        async def publish() -> None:
            for i in range(total):
                await window.acquire()
                await publisher.send(json.dumps({"action": "sendmessage", "text": str(i)}))

        async def drain() -> None:
            while True:
                if (await recv_json(publisher, timeout=60))["type"] == "message":
                    window.release()

        inbox = ResumePoint()
        async with transport.connect("stream", token="reader", format="json") as reader:
            await read_reply(reader, inbox)
            publishing = asyncio.create_task(publish())
            draining = asyncio.create_task(drain())
            while len(inbox.texts) < 300:
                inbox.take(await recv_json(reader))
        # Gone for a moment while messages keep flowing (perhaps more than a page of them);
        # back with `since`, paging on as docs/protocol.md says.
        async with transport.connect(
            "stream", token="reader", format="json", since=str(inbox.resume)
        ) as reader:
            await read_reply(reader, inbox)
            while len(inbox.texts) < total:
                if inbox.take(await recv_json(reader, timeout=30)):
                    await reader.send(json.dumps({"action": "history", "since": inbox.resume}))
            await publishing
            draining.cancel()
    assert [text for _, text in sorted(inbox.texts.items())] == [str(i) for i in range(total)]
    assert inbox.resume == max(inbox.texts)


@pytest.mark.timeout(180)
async def test_concurrent_publishers_keep_the_room_order(
    start_transport: Callable[..., Transport],
) -> None:
    transport = start_transport(**FAST)
    per_publisher, names = 60, ("p1", "p2", "p3")
    async with transport.connect("order", token="watcher", format="json") as watcher:
        await until(watcher, "welcome")

        async def publish(name: str) -> None:
            # Ten messages in flight per publisher: concurrent, but paced to what the slower
            # transport absorbs (a flood would stall its reads and time out the keepalive).
            async with transport.connect("order", token=name, format="json") as ws:
                await until(ws, "welcome")
                sent = own = 0
                while own < per_publisher:
                    while sent < per_publisher and sent - own < 10:
                        text = f"{name}:{sent}"
                        await ws.send(json.dumps({"action": "sendmessage", "text": text}))
                        sent += 1
                    frame = await recv_json(ws, timeout=60)
                    own += frame["type"] == "message" and frame["text"].startswith(name + ":")

        received: list[tuple[int, str]] = []

        async def watch() -> None:  # reading all along, as a real client does
            while len(received) < per_publisher * len(names):
                frame = await recv_json(watcher, timeout=30)
                if frame["type"] == "message":
                    received.append((frame["id"], frame["text"]))

        watching = asyncio.create_task(watch())
        await asyncio.gather(*(publish(name) for name in names))
        try:
            await watching
        except TimeoutError:
            texts = {text for _, text in received}
            missing = [f"{n}:{i}" for n in names for i in range(per_publisher)]
            pytest.fail(
                f"the watcher never got {[t for t in missing if t not in texts]}; "
                f"server log:\n{transport.server.log()[-6000:]}"
            )
        await watcher.send(json.dumps({"action": "history", "since": 0}))
        history = (await until(watcher, "history"))["messages"]
    ids = [m["id"] for m in history]
    assert ids == sorted(set(ids)) and len(ids) == per_publisher * len(names)
    assert sorted(received) == [(m["id"], m["text"]) for m in history]  # each exactly once
    for name in names:  # each publisher's messages in the order it sent them
        mine = [t for _, t in sorted(received) if t.startswith(name + ":")]
        assert mine == [f"{name}:{i}" for i in range(per_publisher)]


async def read_reply(ws: ClientConnection, inbox: ResumePoint) -> None:
    """Read frames into `inbox` until a welcome or history reply has ended, then page on with
    `history` requests until the inbox has caught up with the room."""
    while True:
        frame = await recv_json(ws)
        if len(json.dumps(frame).encode()) > 128 * 1024:
            pytest.fail(f"a {frame['type']} frame over API Gateway's 128 KiB")
        if frame["type"] in ("welcome", "history") and not frame.get("more"):
            if inbox.take(frame):
                await ws.send(json.dumps({"action": "history", "since": inbox.resume}))
                continue
            return
        inbox.take(frame)


async def test_large_history_arrives_whole_split_across_frames(
    start_transport: Callable[..., Transport],
) -> None:
    transport = start_transport(**FAST)
    texts = [f"{i}:" + chr(ord("a") + i) * 30_000 for i in range(6)]
    async with transport.connect("big-history", token="writer", format="json") as writer:
        await until(writer, "welcome")
        for text in texts:
            await writer.send(json.dumps({"action": "sendmessage", "text": text}))
            await until(writer, "message")
    for query in ({"since": "0"}, {}):  # a resume from the start, and a fresh join
        async with transport.connect("big-history", token="reader", format="json", **query) as ws:
            inbox = ResumePoint()
            await read_reply(ws, inbox)
            assert list(inbox.texts.values()) == texts
            # And the same through a `history` request.
            again = ResumePoint()
            await ws.send(json.dumps({"action": "history", "since": 0}))
            await read_reply(ws, again)
            assert list(again.texts.values()) == texts


@pytest.mark.timeout(180)
async def test_resume_after_out_of_order_arrival_skips_nothing(
    start_transport: Callable[..., Transport],
) -> None:
    """Concurrent publishers: on Lambda, ids can arrive out of order. A reader drops while it
    may hold a later id without an earlier one; resuming from its resume point (not from the
    highest id it saw), it ends with every id exactly as published."""
    transport = start_transport(**FAST)
    per_publisher, names = 40, ("p1", "p2", "p3")
    total = per_publisher * len(names)

    async def publish(name: str) -> None:
        async with transport.connect("ooo", token=name, format="json") as ws:
            await until(ws, "welcome")
            sent = own = 0
            while own < per_publisher:
                while sent < per_publisher and sent - own < 10:
                    await ws.send(json.dumps({"action": "sendmessage", "text": f"{name}:{sent}"}))
                    sent += 1
                frame = await recv_json(ws, timeout=60)
                own += frame["type"] == "message" and frame["text"].startswith(name + ":")

    inbox = ResumePoint()
    async with transport.connect("ooo", token="reader", format="json") as reader:
        await read_reply(reader, inbox)
        publishing = asyncio.gather(*(publish(name) for name in names))
        # Drop at the first moment the reader holds an id above a missing one (ids arrived
        # out of order), or after a third of the stream.
        while len(inbox.texts) < total // 3 and inbox.resume == max(inbox.texts, default=0):
            inbox.take(await recv_json(reader, timeout=60))
    if inbox.resume == max(inbox.texts):
        # Ids arrived in order this time (always, under uvicorn): make the case anyway, as if
        # the second-highest id were still in flight when the connection dropped.
        in_flight = sorted(inbox.texts)[-2]
        del inbox.texts[in_flight]
        inbox.resume = in_flight - 1
    assert inbox.resume < max(inbox.texts)  # resuming from the highest id would skip some
    async with transport.connect(
        "ooo", token="reader", format="json", since=str(inbox.resume)
    ) as reader:
        await read_reply(reader, inbox)
        while len(inbox.texts) < total:
            inbox.take(await recv_json(reader, timeout=60))
        await publishing
    assert inbox.resume == total
    for name in names:
        mine = [t for _, t in sorted(inbox.texts.items()) if t.startswith(name + ":")]
        assert mine == [f"{name}:{i}" for i in range(per_publisher)]
