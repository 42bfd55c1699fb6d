"""AWS test helpers: moto tables made from infra/resources.yml, real-shaped events, and a
recorder of what the real boto3 Management API client posted."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).resolve().parent / "events"
ENDPOINT = "https://abcdef123.execute-api.us-east-1.amazonaws.com/prod"


def create_table(client: Any, name: str) -> None:
    """The chat table, made by the same code the emulator uses, from infra/resources.yml."""
    from infra.dynamodb import create_chat_table

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


class PostRecorder:
    """Hooks the real client's event system; every call still goes to moto."""

    def __init__(self, client: Any) -> None:
        self.frames: dict[str, list[str]] = defaultdict(list)
        client.meta.events.register(
            "provide-client-params.apigatewaymanagementapi.PostToConnection", self._record
        )

    def _record(self, params: dict[str, Any], **kwargs: Any) -> None:
        data = params["Data"]
        self.frames[params["ConnectionId"]].append(
            data.decode() if isinstance(data, bytes) else data
        )

    def take(self, connection_id: str) -> list[str]:
        frames, self.frames[connection_id] = self.frames[connection_id], []
        return frames

    def take_json(self, connection_id: str) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame in self.take(connection_id)]


def reset_caches() -> None:
    """Forget the Lambda runtime and the settings, as a cold start would."""
    from handler.aws.runtime import reset_runtime

    reset_runtime()


@contextmanager
def running_moto_server() -> Iterator[str]:
    """moto's server on a free loopback port, as a separate process; yields its URL."""
    from tests.servers import free_port

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
