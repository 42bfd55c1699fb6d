"""`wschat check URL`: passes against each transport, fails (1) against a server that breaks
the contract, and says so (2) when nothing answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import websockets
import websockets.sync.server

from handler.check import run
from tests.support.servers import WSCHAT, Server, free_port, running_server

FAST = {"WSCHAT_RATE_PER_SECOND": "1000", "WSCHAT_RATE_BURST": "1000"}


async def checked(url: str, token: str | None = None, **options: Any) -> tuple[int, list[str]]:
    lines: list[str] = []
    status = await run(url, token, lines.append, **options)
    return status, lines


async def test_it_passes_against_wschat_serve(server: Server) -> None:
    status, lines = await checked(f"ws://127.0.0.1:{server.port}")
    assert status == 0 and len(lines) == 5 and all(line.startswith("ok") for line in lines)


async def test_it_passes_against_the_emulator(tmp_path: Path) -> None:
    with running_server(tmp_path, FAST, "emulate") as emulator:
        status, lines = await checked(f"ws://127.0.0.1:{emulator.port}/local")
    assert status == 0, lines


async def test_it_passes_with_a_token_against_a_jwt_deployment(start_server: Any) -> None:
    secret = "s" * 48
    server: Server = start_server(
        WSCHAT_AUTH="jwt", WSCHAT_JWT_ALGORITHMS="HS256", WSCHAT_JWT_SECRET=secret
    )
    token = subprocess.run(
        [str(WSCHAT), "token", "--sub", "checker"],
        env={"WSCHAT_JWT_SECRET": secret, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    status, lines = await checked(f"ws://127.0.0.1:{server.port}", token)
    assert status == 0, lines
    assert token not in "\n".join(lines)


async def test_it_fails_against_a_server_that_breaks_the_contract(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("handler.check.CHECK_TIMEOUT", 1.0)  # each check waits for what never comes

    async def echo(ws: Any) -> None:  # accepts anyone, and only echoes
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in ws:
                await ws.send(frame)

    async with websockets.serve(echo, "127.0.0.1", 0) as impostor:
        port = next(iter(impostor.sockets)).getsockname()[1]
        status, lines = await checked(f"ws://127.0.0.1:{port}/prod")
    assert status == 1
    assert lines[0].startswith("FAIL 1") and lines[-1].startswith("FAIL 5")


async def test_an_unreachable_url_exits_2() -> None:
    status, lines = await checked(f"ws://127.0.0.1:{free_port()}")
    assert status == 2 and len(lines) == 1 and "cannot be reached" in lines[0]


def test_the_command_and_make_smoke_exit_with_its_status(server: Server) -> None:
    done = subprocess.run(
        ["make", "-s", "smoke", f"URL=ws://127.0.0.1:{server.port}"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("\nok") + done.stdout.startswith("ok") == 5


# --- against broken or hostile servers, started here on loopback ------------------------------

TOKEN = "SeCrEt-check-token-7f3a"


@contextmanager
def hostile(handler: Any, **options: Any) -> Iterator[str]:
    """A server running `handler` in threads of its own (a flood must not starve the check,
    as it would on one event loop); yields its URL, in API Gateway's shape."""
    with websockets.sync.server.serve(handler, "127.0.0.1", 0, **options) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/prod"
        finally:
            server.shutdown()
            thread.join(10)


def flood(ws: Any) -> None:
    """Accepts anyone, reads nothing, and sends frames that are never the one awaited."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            ws.send(json.dumps({"type": "noise"}))


async def test_each_check_has_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("handler.check.CHECK_TIMEOUT", 1.0)
    with hostile(flood) as url:
        started = time.monotonic()
        status, lines = await asyncio.wait_for(checked(url), 30)
        took = time.monotonic() - started
    assert status == 1 and [line[:6] for line in lines] == [f"FAIL {n}" for n in range(1, 6)]
    assert "no verdict within 1 s" in lines[1] and "no verdict within 1 s" in lines[2]
    assert took < 15  # three checks of 1 s; the flood held it until killed before


async def test_the_whole_run_has_a_deadline() -> None:
    with hostile(flood) as url:
        started = time.monotonic()
        status, lines = await asyncio.wait_for(checked(url, timeout=1.5), 30)
        took = time.monotonic() - started
    assert status == 1 and len(lines) == 5 and all(line.startswith("FAIL") for line in lines)
    assert lines[-1].endswith("client_and_verbs: not run: --timeout 1.5 s ran out")
    assert took < 5


async def test_the_command_ends_at_its_timeout() -> None:
    with hostile(flood) as url:
        started = time.monotonic()
        command = await asyncio.create_subprocess_exec(
            str(WSCHAT), "check", url, "--timeout", "2", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(command.communicate(), 60)
        took = time.monotonic() - started
    assert command.returncode == 1 and out.decode().count("FAIL") == 5
    assert took < 10  # 2 s, the interpreter's start and exit


@pytest.mark.parametrize(
    "frame",
    ["not json at all", "[1, 2]", '"a string"', "[" * 20000, b"\x00binary"],
    ids=["text", "array", "string", "deep", "binary"],
)
async def test_a_malformed_frame_fails_its_check_and_the_rest_run(
    monkeypatch: pytest.MonkeyPatch, frame: str | bytes
) -> None:
    monkeypatch.setattr("handler.check.CHECK_TIMEOUT", 1.0)

    def malformed(ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            ws.send(frame)
            ws.recv(10)

    with hostile(malformed) as url:
        status, lines = await asyncio.wait_for(checked(url), 30)
    assert status == 1 and [line[:6] for line in lines] == [f"FAIL {n}" for n in range(1, 6)]
    assert "welcome_and_resume: a " in lines[2]
    assert ("binary frame" if isinstance(frame, bytes) else "JSON") in lines[2]


def _dump(request: Any) -> str:
    """The request as an echoing server or proxy sends it back, credential and all."""
    return f"ECHOED {request.path} {dict(request.headers.raw_items())}"


def _echo_in_error_responses(connection: Any, request: Any) -> Any:
    return connection.respond(HTTPStatus.UNAUTHORIZED, _dump(request))


def _echo_in_frames(ws: Any) -> None:
    """Accepts anyone, and sends the request back in every frame a check reads."""
    dump = _dump(ws.request)
    with contextlib.suppress(websockets.ConnectionClosed):
        if "format=json" in ws.request.path:
            ws.send(json.dumps({"type": "welcome", "echo": dump}))
        else:
            ws.send(dump)
            ws.send(dump)
        ws.close(4000, dump[:100])


def _bearer(ws: Any, offered: list[str]) -> str | None:
    return "bearer" if "bearer" in offered else None


@pytest.mark.parametrize("where", ["header", "subprotocol", "query"])
async def test_nothing_the_server_sent_back_is_printed(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setattr("handler.check.CHECK_TIMEOUT", 2.0)
    printed: list[str] = []
    with hostile(flood, process_request=_echo_in_error_responses) as url:
        printed += (await checked(url, TOKEN, credential_in=where))[1]
    with hostile(_echo_in_frames, select_subprotocol=_bearer) as url:
        printed += (await checked(url, TOKEN, credential_in=where))[1]
    assert len(printed) == 10 and sum(line.startswith("FAIL") for line in printed) >= 8, printed
    output = "\n".join(printed)
    assert "ECHOED" not in output and TOKEN not in output and "[redacted]" not in output


@pytest.mark.parametrize("where", ["header", "subprotocol", "query"])
async def test_a_redirect_elsewhere_is_not_followed(where: str) -> None:
    """A server that answers 302 to another origin: websockets would follow it with the
    `bearer` subprotocol pair, the token with it."""
    elsewhere: list[Any] = []

    def record(connection: Any, request: Any) -> None:
        elsewhere.append(request)

    with hostile(flood, process_request=record) as other:
        target = other.replace("127.0.0.1", "localhost")  # another origin, same listener

        def redirect(connection: Any, request: Any) -> Any:
            response = connection.respond(302, "elsewhere\n")
            response.headers["Location"] = target
            return response

        with hostile(flood, process_request=redirect) as url:
            status, lines = await asyncio.wait_for(
                checked(url, TOKEN, timeout=5, credential_in=where), 30
            )
    assert status != 0 and elsewhere == []
    assert all(TOKEN not in line for line in lines)


async def test_the_credential_goes_in_a_header_unless_asked_otherwise(server: Server) -> None:
    requests: list[Any] = []

    def record(connection: Any, request: Any) -> None:
        requests.append(request)

    with hostile(flood, process_request=record, select_subprotocol=_bearer) as url:
        await asyncio.wait_for(checked(url, TOKEN, timeout=1), 30)
        assert requests and all(TOKEN not in request.path for request in requests)
        assert f"Bearer {TOKEN}" in [r.headers.get("Authorization") for r in requests]
        requests.clear()
        await asyncio.wait_for(checked(url, TOKEN, timeout=1, credential_in="subprotocol"), 30)
        assert all(TOKEN not in r.path and "Authorization" not in r.headers for r in requests)
        assert f"bearer, {TOKEN}" in [r.headers.get("Sec-WebSocket-Protocol") for r in requests]
        requests.clear()
        await asyncio.wait_for(checked(url, TOKEN, timeout=1, credential_in="query"), 30)
        assert any(f"token={TOKEN}" in r.path for r in requests)
    # And wschat serve takes each.
    for where in ("header", "subprotocol", "query"):
        status, lines = await checked(f"ws://127.0.0.1:{server.port}", credential_in=where)
        assert status == 0, (where, lines)
