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
