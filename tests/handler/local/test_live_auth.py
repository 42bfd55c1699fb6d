"""Authentication end to end: `wschat serve` in JWT mode, Origin checks, expiry, clean logs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from tests.auth.jwks_server import jwks_server
from tests.auth.keys import SECRET, claims, rsa_pair
from tests.support.servers import WSCHAT, Server

JWT_ENV = {"WSCHAT_AUTH": "jwt", "WSCHAT_JWT_SECRET": SECRET, "WSCHAT_JWT_ALGORITHMS": "HS256"}
TIMEOUT = 10


def token(**overrides: Any) -> str:
    return jwt.encode(claims(iss=None, aud=None, **overrides), SECRET, algorithm="HS256")


async def recv_json(ws: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return body


@pytest.fixture
def jwt_server(start_server: Any) -> Server:
    server: Server = start_server(**JWT_ENV)
    return server


async def test_jwt_text_dialect_shows_the_subject_not_the_token(jwt_server: Server) -> None:
    alice, bob = token(sub="alice", name="Alice"), token(sub="bob", name="Bob")
    uri = jwt_server.ws("/items/j/ws")
    async with (
        websockets.connect(uri, additional_headers={"Authorization": f"Bearer {alice}"}) as a,
        websockets.connect(uri, subprotocols=["bearer", bob]) as b,  # type: ignore[list-item]
    ):
        assert b.subprotocol == "bearer" and b.response is not None
        assert bob not in str(b.response.headers)
        await a.send("hi")
        assert await a.recv() == "Session cookie or query token value is: alice"
        assert await a.recv() == "Message text was: hi, for item ID: j"
        assert await b.recv() == "Alice: hi"
    log = jwt_server.log()
    assert alice not in log and bob not in log


async def test_invalid_token_is_401_and_missing_is_403(jwt_server: Server) -> None:
    for query, status in [("?token=not.a.jwt", 401), (f"?token={token(exp=1)}", 401), ("", 403)]:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(jwt_server.ws(f"/items/j/ws{query}")):
                pass
        assert refused.value.response.status_code == status
    assert json.loads(jwt_server.get("/healthz"))["connections"] == 0


async def test_token_expiring_mid_session_closes_4401(jwt_server: Server) -> None:
    soon = int(time.time()) + 2
    async with (
        websockets.connect(jwt_server.ws(f"/items/x/ws?format=json&token={token(exp=soon)}")) as j,
        websockets.connect(jwt_server.ws(f"/items/x/ws?token={token(exp=soon, sub='t')}")) as t,
    ):
        assert (await recv_json(j))["type"] == "welcome"
        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(await recv_json(j))
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "token_expired"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert time.time() >= soon - 0.5
        with pytest.raises(ConnectionClosed) as closed_text:
            await asyncio.wait_for(t.recv(), TIMEOUT)
        assert closed_text.value.rcvd is not None and closed_text.value.rcvd.code == 4401


async def test_origin_allow_list(start_server: Any) -> None:
    server = start_server(WSCHAT_ALLOWED_ORIGINS="http://chat.example")
    uri = server.ws("/items/o/ws")
    cookie = {"Cookie": "session=c"}
    for origin in ["http://evil.example", "null", "http://chat.example.evil.com"]:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(uri, origin=Origin(origin), additional_headers=cookie):
                pass
        assert refused.value.response.status_code == 403
    async with websockets.connect(
        uri, origin=Origin("http://chat.example"), additional_headers=cookie
    ) as ws:
        await ws.send("ok")
        assert await ws.recv() == "Session cookie or query token value is: c"


async def test_slow_jwks_fetch_does_not_block_the_event_loop(start_server: Any) -> None:
    keys = [rsa_pair().jwk("k1", "RS256")]
    with jwks_server(keys) as jwks:
        server = start_server(
            WSCHAT_AUTH="jwt",
            WSCHAT_JWT_ALGORITHMS="RS256",
            WSCHAT_JWT_JWKS_URL=jwks.url,
            WSCHAT_JWKS_REFRESH_COOLDOWN="0",
            WSCHAT_JWKS_TIMEOUT="5",
        )

        def rs(kid: str) -> str:
            return jwt.encode(
                claims(iss=None, aud=None), rsa_pair().private, "RS256", headers={"kid": kid}
            )

        async with websockets.connect(server.ws(f"/items/s/ws?format=json&token={rs('k1')}")) as ws:
            await recv_json(ws)
            jwks.set("ok", delay=2)  # the next fetch hangs for 2 s
            pending = asyncio.create_task(
                websockets.connect(server.ws(f"/items/s/ws?token={rs('unknown-kid')}")).__aenter__()
            )
            while jwks.fetches < 2:
                await asyncio.sleep(0.01)
            await ws.send('{"action":"ping"}')
            assert await recv_json(ws) == {"type": "pong"}
            assert not pending.done()  # the loop answered while the fetch was still hanging
            with pytest.raises(InvalidStatus):
                await asyncio.wait_for(pending, TIMEOUT)


def test_wschat_token_mints_a_verifiable_token() -> None:
    env = {**os.environ, **JWT_ENV, "WSCHAT_JWT_AUDIENCE": "wschat"}
    out = subprocess.run(
        [str(WSCHAT), "token", "--sub", "alice", "--name", "Alice", "--ttl", "15m"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    minted = out.stdout.strip()
    body = jwt.decode(minted, SECRET, algorithms=["HS256"], audience="wschat")
    assert (body["sub"], body["name"], body["exp"] - body["iat"]) == ("alice", "Alice", 900)


def test_wschat_token_mints_room_grants() -> None:
    command = [str(WSCHAT), "token", "--sub", "bob", "--room", "support-*=read,write"]
    out = subprocess.run(
        [*command, "--room", "news=read"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **JWT_ENV},
    )
    body = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"])
    assert body["rooms"] == {"support-*": ["read", "write"], "news": ["read"]}
    refused = subprocess.run(
        [*command, "--room", "x=admin"],
        capture_output=True,
        text=True,
        env={**os.environ, **JWT_ENV},
    )
    assert refused.returncode == 2 and "--room" in refused.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {
                "WSCHAT_AUTH": "jwt",
                "WSCHAT_JWT_ALGORITHMS": "HS256,RS256",
                "WSCHAT_JWT_SECRET": SECRET,
            },
            "mixes HMAC",
        ),
        ({"WSCHAT_AUTH": "nope"}, "use `token`, `jwt`"),
    ],
)
def test_serve_refuses_bad_auth_settings(env: dict[str, str], message: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WSCHAT_")}
    out = subprocess.run(
        [str(WSCHAT), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=30,
    )
    assert out.returncode == 2
    assert message in out.stderr
    assert SECRET not in out.stderr


def test_token_command_needs_a_secret() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WSCHAT_")}
    out = subprocess.run(
        [str(WSCHAT), "token", "--sub", "a"], capture_output=True, text=True, env=clean
    )
    assert out.returncode == 2 and "WSCHAT_JWT_SECRET" in out.stderr
