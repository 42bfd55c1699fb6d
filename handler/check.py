"""`wschat check URL [--token T] [--token-in WHERE] [--timeout S]`: the contract's essentials
against any deployment.

URL is where clients connect: `ws://127.0.0.1:8000` (`wschat serve`; `/items/{room}/ws` is
added), `ws://127.0.0.1:3001/local` (`wschat emulate`), `ws://127.0.0.1:3001` (serverless
offline) or `wss://{api}.execute-api.{region}.amazonaws.com/{stage}`. Which of the two URL
shapes a server takes is asked of its `/healthz` (`wschat serve` says `local`); a URL with
`/items/` in it is taken as `wschat serve`'s as it is.

Each check prints one line. The exit status is 0 when all pass, 1 when one fails, 2 when the
URL cannot be reached at all. With `--token` every connection uses it (a JWT deployment);
without, each uses a made-up one (token mode accepts any). The credential goes in an
`Authorization` header unless `--token-in` says `subprotocol` (the `bearer` pair) or `query`
(`?token=`, which proxies and access logs keep; an API Gateway authorizer reads only that).

The server under test may be broken or hostile. Each check has a deadline, and so has the
whole run (`--timeout`); a frame that is not what the protocol says fails its check, and the
others still run; and a line never carries what the server sent back (a body, a frame, a
close reason), which may echo the credential.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from handler.client import Options, Room
from handler.client.room import NoRedirects

TIMEOUT = 60.0  # the whole run (--timeout)
CHECK_TIMEOUT = 20.0  # one check, within what is left of the run
# A connection left at a deadline is aborted at once; one that ends normally waits this long
# for the server's close frame.
CLOSE_TIMEOUT = 2.0
HEALTH_BYTES = 64 * 1024
CredentialIn = Literal["header", "subprotocol", "query"]
REDACTED = "[redacted]"


class CheckFailed(Exception):
    """A check's verdict, in words safe to print."""


@dataclass
class Target:
    url: str
    token: str | None
    items_style: bool  # `wschat serve`: /items/{room}/ws; else API Gateway's ?room=
    room: str = ""
    credential_in: CredentialIn = "header"
    _open: set[ClientConnection] = field(default_factory=set)

    @asynccontextmanager
    async def connect(self, who: str | None, **query: str) -> AsyncIterator[ClientConnection]:
        """A connection to the room as `who` (a made-up token unless --token was given); with
        None, without any credential."""
        headers: dict[str, str] = {}
        subprotocols: list[Subprotocol] | None = None
        if who is not None:
            token = self.token or f"wschat-check-{who}"
            if self.credential_in == "header":
                headers["Authorization"] = f"Bearer {token}"
            elif self.credential_in == "subprotocol":
                subprotocols = [Subprotocol("bearer"), Subprotocol(token)]
            else:
                query = {"token": token, **query}
        opened: ClientConnection | None = None
        try:
            async with NoRedirects(
                self._room_url(query),
                additional_headers=headers,
                subprotocols=subprotocols,
                close_timeout=CLOSE_TIMEOUT,
            ) as opened:
                self._open.add(opened)
                yield opened
        finally:  # after the closing handshake, which a deadline may cut short too
            self._open.discard(opened)

    def abort(self) -> None:
        """Drop every connection a check still holds, without waiting for its server."""
        for ws in self._open:
            ws.transport.abort()

    @property
    def base(self) -> str:
        """The server's URL without `/items/...`, where a URL given in that shape had it."""
        return self.url.split("/items/")[0].rstrip("/")

    def _room_url(self, query: dict[str, str]) -> str:
        if self.items_style:
            path = f"{self.base}/items/{quote(self.room, safe='')}/ws"
        else:
            path, query = self.url, {"room": self.room, **query}
        return f"{path}?{urlencode(query)}" if query else path


async def _in_daemon_thread(work: Callable[[], Any]) -> Any:
    """`work()` in a thread a deadline can abandon: asyncio's own threads would hold the
    process at exit until they finished, and a server can trickle its answer for ever."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)

    def run() -> None:
        result, error = None, None
        try:
            result = work()
        except Exception as failure:
            error = failure
        with suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="wschat-check", daemon=True).start()
    return await done


async def shape_of(url: str, seconds: float = 10) -> bool:
    """True if the server takes `wschat serve`'s URLs (/items/{room}/ws); asks for at most
    `seconds`."""
    if "/items/" in url:
        return True
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    health = urlunsplit((scheme, parts.netloc, "/healthz", "", ""))

    def ask() -> bool:
        try:
            with urllib.request.urlopen(health, timeout=5) as response:  # noqa: S310 (http/https)
                return bool(json.loads(response.read(HEALTH_BYTES)).get("transport") == "local")
        except urllib.error.HTTPError as error:
            error.close()
            return False

    try:
        return bool(await asyncio.wait_for(_in_daemon_thread(ask), seconds))
    except Exception:
        return False  # API Gateway and serverless offline have no /healthz on the socket's host


async def recv_text(ws: ClientConnection) -> str:
    frame = await ws.recv()
    if not isinstance(frame, str):
        raise CheckFailed("a binary frame came where text was expected")
    return frame


async def recv_json(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next JSON frame of type `kind`, skipping frames of other types."""
    while True:
        text = await recv_text(ws)
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            raise CheckFailed(f"a frame that is not JSON came while waiting for {kind}") from None
        if not isinstance(frame, dict):
            raise CheckFailed(
                f"a JSON {type(frame).__name__}, not an object, came while waiting for {kind}"
            )
        if frame.get("type") == kind:
            return frame


SEED_FIRST = "Session cookie or query token value is: "


async def seed_lines(target: Target) -> str:
    async with target.connect("a") as ws:
        await ws.send("hello")
        first, second = await recv_text(ws), await recv_text(ws)
    # The lines are not shown: the first carries the credential, and a server may echo it.
    if not first.startswith(SEED_FIRST):
        raise CheckFailed(f"the first line does not start with {SEED_FIRST!r}")
    expected = f"Message text was: hello, for item ID: {target.room}"
    if second != expected:
        raise CheckFailed(f"the second line is not {expected!r}")
    return "the seed's two lines"


async def two_members(target: Target) -> str:
    async with target.connect("b") as listener, target.connect("a") as talker:
        await asyncio.sleep(0.2)  # the listener's $connect is done on every transport
        await talker.send("are you there?")
        # Skipping what the room said before (on Lambda a member joining while an earlier
        # message fans out gets that one too).
        while not (await recv_text(listener)).endswith(": are you there?"):
            pass
    return "a second member got the message"


async def welcome_and_resume(target: Target) -> str:
    async with target.connect("c", format="json") as ws:
        welcome = await recv_json(ws, "welcome")
    latest = welcome.get("latest_id")
    if not isinstance(latest, int) or isinstance(latest, bool):
        raise CheckFailed("the welcome has no integer latest_id")
    async with target.connect("a") as talker:
        await talker.send("while you were away")
        await recv_text(talker)
        await recv_text(talker)
    async with target.connect("c", format="json", since=str(latest)) as ws:
        again = await recv_json(ws, "welcome")
    history = again.get("history")
    if not isinstance(history, list):
        raise CheckFailed("the resumed welcome has no history list")
    if not any(isinstance(m, dict) and m.get("text") == "while you were away" for m in history):
        raise CheckFailed(
            f"resuming after id {latest} did not bring the message sent meanwhile "
            f"({len(history)} message(s) came)"
        )
    return f"the JSON welcome (latest_id {latest}), and a resume with since brought the gap"


async def refused(target: Target) -> str:
    try:
        async with target.connect(None):
            pass
    except websockets.InvalidStatus as error:
        status = error.response.status_code
        if status in (401, 403):
            return f"a handshake without a credential is refused ({status})"
        raise CheckFailed(f"refused with {status}, not 401 or 403") from None
    raise CheckFailed("a handshake without a credential was accepted")


async def client_and_verbs(target: Target) -> str:
    """wschat's Python client against the deployment: a send answered with its stored
    message, then `members` and a scroll back (`history` with `before`) that hold it."""
    room_in: Literal["path", "query"] = "path" if target.items_style else "query"
    options = Options(token_in=target.credential_in, room_in=room_in, max_retries=3)
    token = target.token or "wschat-check-d"
    async with Room(target.base, target.room, token=token, options=options) as room:
        await room.wait_open()
        stored = await room.send("through the client")
        if not isinstance(stored.get("id"), int) or stored.get("text") != "through the client":
            raise CheckFailed("the client's send was not answered with its stored message")
        members = await room.members()
        if room.user is None or room.user not in members.get("members", []):
            raise CheckFailed("`members` does not list the client itself")
        older = await room.history(before=stored["id"] + 1, limit=1)
        if [m.get("id") for m in older] != [stored["id"]]:
            raise CheckFailed("a scroll back (`history` with `before`) missed the message")
    return "the Python client: a send answered once, members and a scroll back that hold it"


CHECKS: tuple[Callable[[Target], Awaitable[str]], ...] = (
    seed_lines,
    two_members,
    welcome_and_resume,
    refused,
    client_and_verbs,
)


def describe(error: BaseException, credential_in: CredentialIn | None = None) -> str:
    """What went wrong, with nothing the server sent: a response's body and headers, a close
    reason or a subprotocol it chose may all echo the request, credential included."""
    if isinstance(error, CheckFailed):
        return str(error)
    if isinstance(error, websockets.InvalidStatus):
        status = error.response.status_code
        hint = ""
        if status in (401, 403) and credential_in in ("header", "subprotocol"):
            hint = " (an API Gateway authorizer reads only ?token=: try --token-in query)"
        return f"the handshake was refused with HTTP {status}{hint}"
    if isinstance(error, websockets.ConnectionClosed):
        code = error.rcvd.code if error.rcvd is not None else "no close frame"
        return f"the server closed the connection ({code})"
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    return type(error).__name__


async def _within(check: Callable[[Target], Awaitable[str]], target: Target, seconds: float) -> str:
    """The check's verdict, or CheckFailed when it has none in `seconds`."""
    task = asyncio.ensure_future(check(target))
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        target.abort()  # so that cancelling does not wait for a server's close
        task.cancel()
        await asyncio.wait({task})  # what it raised on its way out is moot
        if not task.cancelled():
            task.exception()
        raise CheckFailed(f"no verdict within {seconds:g} s")
    return task.result()


async def _reachable(url: str) -> str | None:
    """None if a TCP connection to the URL's host and port opens; else why not."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(asyncio.Protocol, parts.hostname or "", port), 10
        )
    except (OSError, TimeoutError) as error:
        return f"{parts.hostname}:{port} cannot be reached: {describe(error)}"
    transport.close()
    return None


async def run(
    url: str,
    token: str | None,
    out: Callable[[str], None] = print,
    *,
    credential_in: CredentialIn = "header",
    timeout: float = TIMEOUT,
) -> int:
    """Run every check against `url` within `timeout` seconds; print a line per check."""

    def say(line: str) -> None:  # and should a line ever carry the token, not that
        out(line.replace(token, REDACTED) if token else line)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        unreachable = await asyncio.wait_for(_reachable(url), timeout)
    except TimeoutError:
        unreachable = f"no connection within --timeout {timeout:g} s"
    if unreachable is not None:
        say(f"FAIL {unreachable}")
        return 2
    room = f"wschat-check-{secrets.token_hex(4)}"
    items_style = await shape_of(url, min(10, max(deadline - loop.time(), 0)))
    target = Target(url.rstrip("/"), token, items_style, room, credential_in)
    failed = 0
    for number, check in enumerate(CHECKS, 1):
        left = deadline - loop.time()
        if left <= 0:
            failed += 1
            say(f"FAIL {number} {check.__name__}: not run: --timeout {timeout:g} s ran out")
            continue
        try:
            said = await _within(check, target, min(CHECK_TIMEOUT, left))
            say(f"ok   {number} {said}")
        except Exception as error:  # whatever the server did, the other checks still run
            failed += 1
            say(f"FAIL {number} {check.__name__}: {describe(error, credential_in)}")
    return 1 if failed else 0
