"""`wschat serve`: safe WebSocket settings, credential-free logs, nothing done at import."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import websockets
from websockets.typing import Subprotocol

from handler.cli import main
from tests.support.servers import Server


async def test_per_message_deflate_is_off_by_default(server: Server) -> None:
    # The client offers permessage-deflate; the server must decline it.
    async with websockets.connect(server.ws("/items/z/ws?token=t"), compression="deflate") as ws:
        assert ws.protocol.extensions == []


async def test_deflate_can_be_turned_on(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(WSCHAT_WS_PER_MESSAGE_DEFLATE="true")
    async with websockets.connect(server.ws("/items/z/ws?token=t"), compression="deflate") as ws:
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]


async def test_access_log_never_shows_the_token(server: Server) -> None:
    secret = "sekrit-token-4f9a1c"
    async with websockets.connect(server.ws(f"/items/log/ws?token={secret}&q=1")) as ws:
        await ws.send("hello")
        for _ in range(3):
            await ws.recv()
    async with websockets.connect(
        server.ws("/items/log/ws"), additional_headers={"Authorization": f"Bearer {secret}"}
    ) as ws:
        await ws.send("hi")
        await ws.recv()
    log = server.log()
    assert "/items/log/ws?token=[redacted]&q=1" in log  # the line is there, the token is not
    assert secret not in log


async def test_a_debug_log_shows_no_credential(start_server: Any) -> None:
    """At WSCHAT_LOG_LEVEL=debug, websockets would log every header and frame: cookies, bearer
    tokens, the seed's echo of the credential, a refresh's token."""
    server = start_server(WSCHAT_LOG_LEVEL="debug")
    secrets = ["COOKIE-s3cret", "BEARER-s3cret!2", "SUBPROTOCOL-s3cret", "REFRESH-s3cret"]
    cookie, bearer, subprotocol, refresh = secrets
    for headers, protocols in (
        ({"Cookie": f"session={cookie}"}, None),
        ({"Authorization": f"Bearer {bearer}"}, None),
        (None, [Subprotocol("bearer"), Subprotocol(subprotocol)]),
    ):
        async with websockets.connect(
            server.ws("/items/debug/ws"), additional_headers=headers, subprotocols=protocols
        ) as ws:
            await ws.send("hello")
            await ws.recv()
            await ws.send(json.dumps({"action": "refresh", "token": refresh}))
            await ws.recv()
    await asyncio.sleep(0.2)
    log = server.log()
    assert "DEBUG:" in log  # the level took
    assert [s for s in secrets if s in log] == []


def test_importing_the_app_reads_no_settings() -> None:
    code = (
        "import handler.local.service, handler.cli, infra.settings;"
        "print(infra.settings.get_settings.cache_info().currsize)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_serve_help_lists_its_options(capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        main(["serve", "--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    help_text = capsys.readouterr().out
    for option in ("--host", "--port", "--reload"):
        assert option in help_text


def test_the_open_origin_warning_is_logged_once(server: Server) -> None:
    assert server.log().count("WSCHAT_ALLOWED_ORIGINS is empty") == 1
