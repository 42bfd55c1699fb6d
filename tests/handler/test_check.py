"""`wschat check URL`: passes against each transport, fails (1) against a server that breaks
the contract, and says so (2) when nothing answers."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import websockets

from handler.check import run
from tests.servers import WSCHAT, Server, free_port, running_server

FAST = {"WSCHAT_RATE_PER_SECOND": "1000", "WSCHAT_RATE_BURST": "1000"}


async def checked(url: str, token: str | None = None) -> tuple[int, list[str]]:
    lines: list[str] = []
    status = await run(url, token, lines.append)
    return status, lines


async def test_it_passes_against_wschat_serve(server: Server) -> None:
    status, lines = await checked(f"ws://127.0.0.1:{server.port}")
    assert status == 0 and len(lines) == 4 and all(line.startswith("ok") for line in lines)


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
    monkeypatch.setattr("handler.check.TIMEOUT", 1.0)  # each check waits for what never comes

    async def echo(ws: Any) -> None:  # accepts anyone, and only echoes
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in ws:
                await ws.send(frame)

    async with websockets.serve(echo, "127.0.0.1", 0) as impostor:
        port = next(iter(impostor.sockets)).getsockname()[1]
        status, lines = await checked(f"ws://127.0.0.1:{port}/prod")
    assert status == 1
    assert lines[0].startswith("FAIL 1") and lines[-1].startswith("FAIL 4")


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
    assert done.stdout.count("\nok") + done.stdout.startswith("ok") == 4
