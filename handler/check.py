"""`wschat check URL [--token T]`: the contract's essentials against any deployment.

URL is where clients connect: `ws://127.0.0.1:8000` (`wschat serve`; `/items/{room}/ws` is
added), `ws://127.0.0.1:3001/local` (`wschat emulate`), `ws://127.0.0.1:3001` (serverless
offline) or `wss://{api}.execute-api.{region}.amazonaws.com/{stage}`. Which of the two URL
shapes a server takes is asked of its `/healthz` (`wschat serve` says `local`); a URL with
`/items/` in it is taken as `wschat serve`'s as it is.

Each check prints one line. The exit status is 0 when all pass, 1 when one fails, 2 when the
URL cannot be reached at all. With `--token` every connection uses it (a JWT deployment);
without, each uses a made-up one (token mode accepts any).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import websockets

TIMEOUT = 10.0


class CheckFailed(Exception):
    pass


@dataclass
class Target:
    url: str
    token: str | None
    items_style: bool  # `wschat serve`: /items/{room}/ws; else API Gateway's ?room=
    room: str = ""

    def socket(self, who: str, **query: str) -> str:
        token = self.token or f"wschat-check-{who}"
        return self._room_url({"token": token, **query})

    def bare(self) -> str:
        """The room's address with no credential at all."""
        return self._room_url({})

    def _room_url(self, query: dict[str, str]) -> str:
        if self.items_style:
            base = self.url.split("/items/")[0].rstrip("/")
            path = f"{base}/items/{quote(self.room, safe='')}/ws"
        else:
            path, query = self.url, {"room": self.room, **query}
        return f"{path}?{urlencode(query)}" if query else path


def shape_of(url: str) -> bool:
    """True if the server takes `wschat serve`'s URLs (/items/{room}/ws)."""
    if "/items/" in url:
        return True
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    health = urlunsplit((scheme, parts.netloc, "/healthz", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=5) as response:  # noqa: S310 (http/https)
            return bool(json.loads(response.read()).get("transport") == "local")
    except Exception:
        return False  # API Gateway and serverless offline have no /healthz on the socket's host


async def recv_text(ws: Any) -> str:
    return str(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def recv_json(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(await recv_text(ws))
        if frame.get("type") == kind:
            return frame


async def seed_lines(target: Target) -> str:
    async with websockets.connect(target.socket("a")) as ws:
        await ws.send("hello")
        first, second = await recv_text(ws), await recv_text(ws)
    if not first.startswith("Session cookie or query token value is: "):
        raise CheckFailed(f"first line was {first!r}")
    if second != f"Message text was: hello, for item ID: {target.room}":
        raise CheckFailed(f"second line was {second!r}")
    return "the seed's two lines"


async def two_members(target: Target) -> str:
    async with (
        websockets.connect(target.socket("b")) as listener,
        websockets.connect(target.socket("a")) as talker,
    ):
        await asyncio.sleep(0.2)  # the listener's $connect is done on every transport
        await talker.send("are you there?")
        # Skipping what the room said before (on Lambda a member joining while an earlier
        # message fans out gets that one too).
        while not (await recv_text(listener)).endswith(": are you there?"):
            pass
    return "a second member got the message"


async def welcome_and_resume(target: Target) -> str:
    async with websockets.connect(target.socket("c", format="json")) as ws:
        welcome = await recv_json(ws, "welcome")
    latest = welcome.get("latest_id")
    if not isinstance(latest, int):
        raise CheckFailed(f"the welcome has no latest_id: {welcome}")
    async with websockets.connect(target.socket("a")) as talker:
        await talker.send("while you were away")
        await recv_text(talker)
        await recv_text(talker)
    async with websockets.connect(target.socket("c", format="json", since=str(latest))) as ws:
        again = await recv_json(ws, "welcome")
    missed = [m.get("text") for m in again.get("history", [])]
    if "while you were away" not in missed:
        raise CheckFailed(f"resuming after id {latest} brought {missed}")
    return f"the JSON welcome (latest_id {latest}), and a resume with since brought the gap"


async def refused(target: Target) -> str:
    try:
        async with websockets.connect(target.bare()):
            pass
    except websockets.InvalidStatus as error:
        status = error.response.status_code
        if status in (401, 403):
            return f"a handshake without a credential is refused ({status})"
        raise CheckFailed(f"refused with {status}, not 401 or 403") from None
    raise CheckFailed("a handshake without a credential was accepted")


CHECKS: tuple[Callable[[Target], Awaitable[str]], ...] = (
    seed_lines,
    two_members,
    welcome_and_resume,
    refused,
)


def reachable(url: str) -> str | None:
    """None if a TCP connection to the URL's host and port opens; else why not."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=TIMEOUT).close()
    except OSError as error:
        return repr(error)
    return None


async def run(url: str, token: str | None, out: Callable[[str], None] = print) -> int:
    unreachable = reachable(url)
    if unreachable is not None:
        out(f"FAIL {url} cannot be reached: {unreachable}")
        return 2
    target = Target(url.rstrip("/"), token, shape_of(url), f"wschat-check-{secrets.token_hex(4)}")
    failed = 0
    for number, check in enumerate(CHECKS, 1):
        try:
            said = await check(target)
            out(f"ok   {number} {said}")
        except (CheckFailed, OSError, TimeoutError, websockets.WebSocketException) as error:
            failed += 1
            out(f"FAIL {number} {check.__name__}: {error!r}")
    return 1 if failed else 0
