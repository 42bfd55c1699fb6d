"""AWS test helpers: moto tables made from infra/deploy/resources.yml and real-shaped events."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).resolve().parent.parent / "events"


def create_table(client: Any, name: str) -> None:
    """The chat table, made by the same code the emulator uses, from infra/deploy/resources.yml."""
    from infra.local_aws.dynamodb import create_chat_table

    create_chat_table(client, name)


def event(name: str, **changes: Any) -> dict[str, Any]:
    """A fixture event from tests/events, with top-level or requestContext fields replaced."""
    body: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    body = copy.deepcopy(body)
    for key, value in changes.items():
        if key in body.get("requestContext", {}) or key in {
            "connectionId",
            "authorizer",
            "routeKey",
        }:
            body["requestContext"][key] = value
        else:
            body[key] = value
    return body


def reset_caches() -> None:
    """Forget the Lambda runtime and the settings, as a cold start would."""
    from handler.aws.runtime import reset_runtime

    reset_runtime()


@contextmanager
def running_moto_server() -> Iterator[str]:
    """moto's server on a free loopback port, as a separate process; yields its URL."""
    from tests.support.servers import free_port

    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


class FirstWriteStall:
    """Holds a publisher's first DynamoDB write (of `operations`) until `release()`: the
    moment for another publisher to go ahead of it, or a welcome to run in between."""

    def __init__(self, client: Any, *operations: str) -> None:
        import threading

        self._reached, self._released = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        for operation in operations:
            client.meta.events.register(f"before-call.dynamodb.{operation}", self._hold)

    def start(self, publish: Any) -> Any:
        """Run `publish` in a thread of its own, and return that thread once its first write
        is held."""
        import threading

        self._thread = threading.Thread(target=publish)
        self._thread.start()
        assert self._reached.wait(10)
        return self._thread

    def release(self) -> None:
        self._released.set()

    def _hold(self, **_: Any) -> None:
        import threading

        if threading.current_thread() is self._thread and not self._reached.is_set():
            self._reached.set()
            assert self._released.wait(10)
