"""The same handlers under `serverless offline` (the serverless-offline plugin, run by osls)
from serverless.yml, on loopback, with DynamoDB from moto's server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import websockets

from tests.support.aws import create_table, running_moto_server
from tests.support.clients import recv, recv_json, until
from tests.support.js import live_room
from tests.support.servers import ROOT, free_port
from tests.support.tools import node_with_ws, require, the_build_directory

TABLE = "wschat-offline"


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"serverless offline exited:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"serverless offline not ready:\n{log.read_text()}") from None
            time.sleep(0.2)


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    require("npm", "run serverless offline through osls")
    with the_build_directory():
        yield from _offline(tmp_path_factory)


def _offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    # serverless-offline unpacks the artifact serverless.yml names: build a current one.
    subprocess.run(
        ["make", "node_modules", "lambda-zip"], cwd=ROOT, check=True, capture_output=True
    )
    ws_port, http_port, lambda_port = free_port(), free_port(), free_port()
    log = tmp_path_factory.mktemp("offline") / "offline.log"
    with running_moto_server() as dynamodb:
        create_table(
            boto3.client(
                "dynamodb",
                endpoint_url=dynamodb,
                region_name="us-east-1",
                aws_access_key_id="x",
                aws_secret_access_key="x",
            ),
            TABLE,
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WSCHAT_")},
            # serverless-offline runs Python handlers with this virtualenv's `python3`.
            "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "WSCHAT_TABLE": TABLE,
            "WSCHAT_DYNAMODB_ENDPOINT": dynamodb,
            "WSCHAT_OFFLINE_WS_PORT": str(ws_port),
            "WSCHAT_OFFLINE_LAMBDA_PORT": str(lambda_port),
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    "npx",
                    "osls",
                    "offline",
                    "start",
                    "--stage",
                    "offline",
                    "--websocketPort",
                    str(ws_port),
                    "--httpPort",
                    str(http_port),
                    "--lambdaPort",
                    str(lambda_port),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(ws_port, process, log)
            yield ws_port
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            # The plugin unpacks the artifact per function (about 17 MB) on every start.
            shutil.rmtree(ROOT / ".serverless-offline", ignore_errors=True)


@pytest.mark.timeout(180)
async def test_messages_flow_through_serverless_offline(offline: int) -> None:
    base = f"ws://127.0.0.1:{offline}"
    # Handler cold starts are slow under serverless-offline: generous timeouts.
    async with (
        websockets.connect(f"{base}?room=foo&token=some-key-token&q=3", open_timeout=60) as a,
        websockets.connect(f"{base}?room=foo&token=other&format=json", open_timeout=60) as b,
    ):
        welcome = await until(b, "welcome")
        assert (welcome["room"], welcome["count"]) == ("foo", 2)
        await a.send("hello")
        assert [await recv(a, 60) for _ in range(3)] == [
            "Session cookie or query token value is: some-key-token",
            "Query parameter q is: 3",
            "Message text was: hello, for item ID: foo",
        ]
        message = await recv_json(b, 60)
        assert (message["type"], message["text"]) == ("message", "hello")
        await b.send(json.dumps({"action": "sendmessage", "text": "hi"}))
        assert (await recv_json(b, 60))["text"] == "hi"
        assert (await recv(a, 60)).endswith(": hi")


@pytest.mark.timeout(180)
async def test_every_credential_form_of_wschat_serve_gets_in(offline: int) -> None:
    """serverless.yml's default attaches no authorizer (whose identity source would let only
    `?token=` through): $connect authenticates, with the same code as `wschat serve`."""
    # A room each: every socket hears only its own echo.
    base = f"ws://127.0.0.1:{offline}?room=creds"
    forms: dict[str, dict[str, Any]] = {
        "query": {"uri": f"{base}-q&token=by-query"},
        "empty query": {"uri": f"{base}-e&token="},
        "header": {"uri": f"{base}-h", "additional_headers": {"Authorization": "Bearer by-header"}},
        "subprotocol pair": {"uri": f"{base}-s", "subprotocols": ["bearer", "by-pair"]},
        "cookie": {"uri": f"{base}-c", "additional_headers": {"Cookie": "session=by-cookie"}},
    }
    expected = {
        "query": "by-query",
        "empty query": "",
        "header": "by-header",
        "subprotocol pair": "by-pair",
        "cookie": "by-cookie",
    }

    async def echo(options: dict[str, Any]) -> str:
        async with websockets.connect(**options, open_timeout=60) as ws:
            await ws.send("hi")
            return await recv(ws, 60)

    # One at a time: each is a Lambda cold start under serverless offline, and five at once
    # on a busy machine ran past the function's timeout (502).
    lines = [await echo(options) for options in forms.values()]
    assert dict(zip(forms, lines, strict=True)) == {
        form: f"Session cookie or query token value is: {credential}"
        for form, credential in expected.items()
    }
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(base, open_timeout=60):
            pass
    assert refused.value.response.status_code == 403  # no credential, as `wschat serve` says


async def test_a_binary_frame_is_dropped_not_closed_as_api_gateway_would(offline: int) -> None:
    """A known difference (docs/serverless.md): API Gateway closes with 1003 on a binary frame
    (`wschat emulate` does too); serverless offline hands it to $default as a body that is not
    a string, which refuses the event. Nothing comes back and the connection stays."""
    async with websockets.connect(
        f"ws://127.0.0.1:{offline}?room=offline-binary&token=t", open_timeout=60
    ) as ws:
        await ws.send(b"\xff\xfe")
        await ws.send("after")
        assert [await recv(ws, 60) for _ in range(2)] == [
            "Session cookie or query token value is: t",
            "Message text was: after, for item ID: offline-binary",
        ]


@pytest.mark.timeout(240)
async def test_wschat_check_passes_against_serverless_offline(
    offline: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from handler.check import run

    # Each frame is a Lambda started afresh under serverless offline, seconds apart when the
    # machine is busy: the client's check (welcome, send, members, scroll back) can take
    # longer than the 20 s a check has against a real deployment.
    monkeypatch.setattr("handler.check.CHECK_TIMEOUT", 60.0)
    lines: list[str] = []
    # In an Authorization header (wschat check's default): $connect reads every form.
    url = f"ws://127.0.0.1:{offline}"
    assert await run(url, None, lines.append, timeout=200) == 0, lines


@pytest.mark.timeout(180)
def test_the_js_client_through_serverless_offline(offline: int) -> None:
    """The JavaScript client (tests/js/live_room.mjs) with both sockets cut mid-stream:
    serverless offline serves at the root, with the room in the query."""
    node = node_with_ws()
    count = 12
    # Each frame is a Lambda started afresh under serverless offline, seconds apart when the
    # machine is busy: a ping's answer too, which must not be taken for a dead link.
    options = {"roomIn": "query", "pongTimeout": 60_000}
    url = f"ws://127.0.0.1:{offline}"
    seen = live_room(node, [url], "js-offline", count, options, waits=120, seconds=150)
    acked = seen["acked"]
    assert seen["texts"] == [f"m{n}" for n in range(count)]
    # Sent one at a time (the clients' default), they are stored in the order sent.
    assert len(set(acked)) == count and acked == sorted(acked)
    assert seen["alice"] == acked and seen["bob"] == acked
    assert seen["older"] == acked[2:5] and seen["count"] == 2
    assert seen["typing"] == [seen["aliceName"]]


BROWSER_ROUND_TRIP = """async ([source, url]) => {
  // The client as a page would load it, from its own source (a data: URL: no origin to serve it).
  const encoded = btoa(String.fromCharCode(...new TextEncoder().encode(source)));
  const { connect } = await import("data:text/javascript;base64," + encoded);
  // Each frame is a Lambda started afresh here, seconds apart when the machine is busy: a
  // ping's answer too, which must not be taken for a dead link.
  const options = {
    url, room: "browser-offline", roomIn: "query", minDelay: 100, maxDelay: 2000,
    pongTimeout: 60000,
  };
  const alice = connect({ ...options, token: "alice" });
  const bob = connect({ ...options, token: "bob" });
  const got = [];
  bob.on("message", (m) => got.push(m.text));
  const until = (check) => new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = setInterval(() => {
      if (check()) {
        clearInterval(poll);
        resolve();
      } else if (Date.now() - started > 150000) {
        clearInterval(poll);
        reject(new Error("timed out"));
      }
    }, 50);
  });
  await until(() => alice.state === "open" && bob.state === "open");
  const stored = await Promise.all([0, 1, 2, 3, 4].map((n) => alice.send(`b${n}`)));
  await until(() => got.length >= 5);
  alice.close();
  bob.close();
  return { stored: stored.map((m) => m.text), got };
}"""


@pytest.mark.timeout(240)
def test_the_js_client_in_chromium_through_serverless_offline(offline: int) -> None:
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM_ARGS

    chromium = require("chromium", "run the browser tests")
    source = (ROOT / "handler" / "web" / "wschat.mjs").read_text()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_content("<!DOCTYPE html><title>offline</title>")
            result = page.evaluate(BROWSER_ROUND_TRIP, [source, f"ws://127.0.0.1:{offline}"])
        finally:
            browser.close()
    assert result["stored"] == [f"b{n}" for n in range(5)]
    assert result["got"] == result["stored"]  # each once, in id order: the order they were sent
