"""wschat's Python client, on asyncio and the `websockets` client: the same model as the
JavaScript one (handler/web/wschat.mjs), with the same guarantees. docs/clients.md has the API.

    async with connect("ws://127.0.0.1:8000", "lobby", token="some-key-token") as room:
        stored = await room.send("hello")      # once, even across reconnects
        async for event in room:               # message, presence, typing, discontinuity, ...
            print(event)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from handler.client.sequence import Event, Sequencer
from handler.client.tokens import lifetime_of

GetToken = Callable[[], Awaitable[str] | str]
JSON_SUBPROTOCOL = "wschat.json"
# What the server refuses for good: a send refused with one of these is not retried.
FINAL_SEND_ERRORS = frozenset(
    {"forbidden", "message_too_large", "empty_message", "bad_request", "invalid_json"}
)
# Closes no retry heals: a credential that no longer opens the room, a frame always refused.
FINAL_CLOSES = frozenset({1009, 4403})
# What a subprotocol value may hold (RFC 7230 token characters).
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class Options:
    min_delay: float = 0.5  # backoff with full jitter: a random wait up to min(max, min * 2^n)
    max_delay: float = 20.0
    max_retries: float = math.inf
    ping_after: float = 30.0  # a ping after this long without a frame (API Gateway: 10 min)
    pong_timeout: float = 10.0  # no frame this long after a ping: the link is dead
    gap_wait: float = 1.0  # a missing id not filled in this long is asked for
    # Sends awaiting their answer at once: one keeps a sender's messages in the order sent on
    # every transport (on Lambda, frames in flight together are stored in any order).
    in_flight: int = 1
    max_frame_bytes: int = 32 * 1024  # WSCHAT_MAX_MESSAGE_BYTES: larger closes the socket
    refresh_margin: float = 60.0  # renew this long before `exp` (at most a tenth of it)
    typing_every: float = 2.0  # the server forwards one typing per user and room per 2 s
    retry_after_busy: float = 1.0  # a send refused as busy or rate limited goes again then
    # Sends are paced below the server's rate limit (WSCHAT_RATE_PER_SECOND 20, burst 40),
    # leaving room for the other frames: a burst of sends waits its turn instead of being
    # refused (and, refused often enough, closed).
    send_rate: float = 16.0
    send_burst: int = 30
    open_timeout: float = 10.0  # one handshake
    close_timeout: float = 1.0  # `close()`'s closing handshake, then the link is dropped
    room_in: Literal["path", "query"] | None = None  # None: path for a URL without one
    token_in: Literal["subprotocol", "header", "query"] | None = None


class ClientError(Exception):
    """A send, a request or the room itself refused: `code` is the server's error code, or
    `closed`, `token`, `unauthorized`, `forbidden`, `token_expired`."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail or code)
        self.code = code
        self.detail = detail


class NoRedirects(websockets.connect):
    """A client talks to the server it was given. websockets follows a redirect to any origin
    with the headers and subprotocols it was given, the token with them, so a hostile or
    misconfigured server's 302 elsewhere would carry the credential there: a redirect is an
    answer (a failed handshake), not a place to go."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


@dataclass
class _Send:
    id: str
    frame: str
    answer: asyncio.Future[Event]
    on: int | None = None  # the session it was last sent on


def connect(
    url: str,
    room: str,
    *,
    token: str | None = None,
    get_token: GetToken | None = None,
    **options: Any,
) -> Room:
    """Join `room` on the server at `url` (`ws://host:port` for `wschat serve`, API Gateway's
    `wss://.../stage`); use it as `async with`, which starts it at once."""
    return Room(url, room, token=token, get_token=get_token, options=Options(**options))


class Room:
    def __init__(
        self,
        url: str,
        room: str,
        *,
        token: str | None = None,
        get_token: GetToken | None = None,
        options: Options | None = None,
    ) -> None:
        if not room:
            raise ValueError("`room` must be a name")
        if not token and get_token is None:
            raise ValueError("give `token` or `get_token`")
        self.url, self.room = url, room
        self.state = "connecting"
        self.user: dict[str, str] | None = None  # {id, name}, from the welcome
        self.count: int | None = None  # the room's connections: welcome, presence, members
        # The `presence_seq` the count came with (Lambda numbers them: its frames can arrive
        # out of order), or None: a count with a lower number is older, and is not kept.
        self._count_seq: int | None = None
        self.epoch: str | None = None
        self.connection_id: str | None = None
        self.error: ClientError | None = None  # why the room closed, if not by `close()`
        self._o = options or Options()
        self._token, self._get_token = token, get_token
        self._seq = Sequencer()
        self._paging = False
        self._outbox: list[_Send] = []
        self._paused_until = 0.0
        self._tokens = float(self._o.send_burst)  # the pacing bucket, refilled at send_rate
        self._filled_at = time.monotonic()
        self._scrolls: dict[int, tuple[int, asyncio.Future[list[Event]], list[Event]]] = {}
        self._members: tuple[asyncio.Future[Event], list[dict[str, str]]] | None = None
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._out: asyncio.Queue[str] | None = None  # this session's frames, in order
        self._ws: ClientConnection | None = None  # this session's socket
        self._session = 0
        self._attempt = 0
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._last_typing = -math.inf
        self._opened: asyncio.Event = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Room:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"wschat-room-{self.room}")

    async def wait_open(self) -> None:
        """Until the room is open (a welcome came); ClientError if it closed instead."""
        await self._opened.wait()
        if self.state == "closed":
            raise ClientError("closed", "the room closed before it opened")

    async def close(self) -> None:
        """Leave for good: unanswered sends and requests fail with `closed`."""
        ws = self._ws
        if ws is not None and self.state != "closed":
            # A closing handshake, within a bound: a server that never answers it (one that
            # floods, say, and so never reads) must not hold the caller.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), self._o.close_timeout)
        self._finish(None)
        if self._task is not None and self._task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        """Each event as it comes: `message` (each id once, in id order), `presence`,
        `typing`, `members`, `discontinuity`, `state`, `error`; ends when the room closes."""
        while (event := await self._events.get()) is not None:
            yield event

    # --- the application's calls --------------------------------------------------------

    async def send(self, text: str) -> Event:
        """The stored message (its id, ts, ...), once, however often the link drops; or
        ClientError with the server's code (forbidden, message_too_large, empty_message,
        bad_request) or `closed`."""
        if self.state == "closed":
            raise ClientError("closed", "the room is closed")
        if not isinstance(text, str) or not text.strip():
            raise ClientError("empty_message", "`text` must not be empty")
        client_msg_id = secrets.token_hex(16)
        frame = json.dumps({"action": "sendmessage", "text": text, "client_msg_id": client_msg_id})
        try:
            size = len(frame.encode())
        except UnicodeEncodeError:
            raise ClientError("bad_request", "`text` has a lone surrogate") from None
        if size > self._o.max_frame_bytes:
            detail = f"message over {self._o.max_frame_bytes} bytes as a frame"
            raise ClientError("message_too_large", detail)
        entry = _Send(client_msg_id, frame, asyncio.get_running_loop().create_future())
        self._outbox.append(entry)
        self._flush()
        return await entry.answer

    async def history(self, before: int | None = None, limit: int = 50) -> list[Event]:
        """The messages before id `before` (default: the oldest handed over), at most
        `limit`, oldest first; an empty list: nothing older is kept."""
        if before is None:
            before = self._seq.oldest if self._seq.oldest is not None else self._seq.resume + 1
        if before not in self._scrolls:
            future: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
            self._scrolls[before] = (limit, future, [])
            self._emit_frame({"action": "history", "before": before, "limit": limit})
        return await asyncio.shield(self._scrolls[before][1])

    async def members(self) -> Event:
        """Who is in the room: {count, complete, members: [{id, name}, ...]}."""
        if self._members is None:
            self._members = (asyncio.get_running_loop().create_future(), [])
            self._emit_frame({"action": "members"})
        return await asyncio.shield(self._members[0])

    async def typing(self) -> None:
        """Tell the room you are typing (at most one goes out per 2 s)."""
        now = time.monotonic()
        if self.state == "open" and now - self._last_typing >= self._o.typing_every:
            self._last_typing = now
            self._emit_frame({"action": "typing"})

    @property
    def resume_point(self) -> int:
        return self._seq.resume

    # --- the connection -----------------------------------------------------------------

    async def _run(self) -> None:
        while self.state != "closed":
            try:
                token = await self._current_token()
            except Exception as error:
                self._finish(ClientError("token", f"get_token failed: {error!r}"))
                return
            code, reason = await self._connect_once(token)
            if self.state == "closed":
                return
            if code in FINAL_CLOSES:
                self._finish(ClientError("closed", f"closed by the server ({code} {reason})"))
                return
            if code == 4401:
                if self._get_token is None:
                    self._finish(ClientError("token_expired", "the token ran out"))
                    return
                self._token = None  # the next attempt asks get_token
            if self._attempt >= self._o.max_retries:
                self._finish(ClientError("closed", f"gave up after {self._attempt} retries"))
                return
            cap = min(self._o.max_delay, self._o.min_delay * 2**self._attempt)
            delay = random.random() * cap  # noqa: S311 (jitter, not a secret)
            self._attempt += 1
            state = "reconnecting" if self.user is not None else "connecting"
            self._set_state(state, retry_in=delay, reason=reason or f"closed ({code})")
            await asyncio.sleep(delay)

    async def _connect_once(self, token: str) -> tuple[int, str]:
        """One session, from the handshake to the close: the close code and reason."""
        url, subprotocols, headers = self._handshake(token)
        try:
            async with NoRedirects(
                url,
                subprotocols=subprotocols,
                additional_headers=headers,
                open_timeout=self._o.open_timeout,
                close_timeout=self._o.close_timeout,
                ping_interval=None,  # the JSON dialect's ping, below, reaches API Gateway too
                max_size=None,
            ) as ws:
                await self._serve(ws)
            return ws.close_code or 1006, ws.close_reason or ""
        except InvalidStatus as refused:
            status = refused.response.status_code
            if status == 401 and self._get_token is not None:
                self._token = None
            elif status in (401, 403):
                code = "unauthorized" if status == 401 else "forbidden"
                self._finish(ClientError(code, f"the handshake was refused with {status}"))
            return 1006, f"HTTP {status}"
        except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as error:
            return 1006, type(error).__name__

    def _handshake(self, token: str) -> tuple[str, list[Subprotocol], dict[str, str]]:
        scheme, host, path, query, _ = urlsplit(self.url)
        in_query = (self._o.room_in or ("query" if path not in ("", "/") else "path")) == "query"
        params = dict(parse_qsl(query))
        if in_query:
            params["room"] = self.room
        else:
            path = f"/items/{quote(self.room, safe='')}/ws"
        params["format"] = "json"
        if self._seq.started:  # from 0 too: everything after the first welcome is expected
            params["since"] = str(self._seq.resume)
            if self.epoch is not None:
                params["epoch"] = self.epoch
        # The token goes where no URL or access log keeps it (a header, or the subprotocol
        # pair), except for API Gateway's authorizer, which reads it from the query.
        where = self._o.token_in or ("query" if in_query else "header")
        subprotocols = [Subprotocol(JSON_SUBPROTOCOL)]
        headers: dict[str, str] = {}
        if where == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif where == "subprotocol" and _TOKEN_CHARS.fullmatch(token):
            subprotocols += [Subprotocol("bearer"), Subprotocol(token)]
        else:
            params["token"] = token
        return urlunsplit((scheme, host, path, urlencode(params), "")), subprotocols, headers

    async def _current_token(self) -> str:
        if self._get_token is None:
            assert self._token is not None
            return self._token
        lifetime = lifetime_of(self._token)
        renew = lifetime is not None and time.time() >= lifetime.renew_at(self._o.refresh_margin)
        if not self._token or renew:
            self._token = await self._ask_token()
        return self._token

    async def _ask_token(self) -> str:
        assert self._get_token is not None
        token = self._get_token()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise ValueError("get_token gave no token")
        return token

    async def _serve(self, ws: ClientConnection) -> None:
        """Read the session's frames, write its queue; ping when it goes quiet."""
        self._session += 1
        self._ws = ws
        out = self._out = asyncio.Queue()
        writer = asyncio.create_task(self._write(ws, out))
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), self._o.ping_after)
                except TimeoutError:
                    if self.state == "open":
                        out.put_nowait('{"action":"ping"}')
                    try:
                        raw = await asyncio.wait_for(ws.recv(), self._o.pong_timeout)
                    except TimeoutError:
                        ws.transport.abort()  # no answer: the link is dead
                        return
                self._on_frame(raw)
        except ConnectionClosed:
            return
        except asyncio.CancelledError:
            ws.transport.abort()  # leaving for good: no handshake a server could stall
            raise
        finally:
            self._out = self._ws = None
            writer.cancel()
            self._stop_timers("gap", "refresh", "resend")
            if self.state == "open":
                self._set_state("reconnecting")

    @staticmethod
    async def _write(ws: ClientConnection, out: asyncio.Queue[str]) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(await out.get())

    def _finish(self, error: ClientError | None) -> None:
        if self.state == "closed":
            return
        self._stop_timers(*self._timers)
        self.error = error
        why = error or ClientError("closed", "the room is closed")
        for entry in self._outbox:
            _fail(entry.answer, why)
        self._outbox.clear()
        for _, future, _ in self._scrolls.values():
            _fail(future, why)
        self._scrolls.clear()
        if self._members is not None:
            _fail(self._members[0], why)
            self._members = None
        self._set_state("closed", **({"error": error} if error else {}))
        if error is not None:
            self._events.put_nowait({"type": "error", "code": error.code, "detail": str(error)})
        self._events.put_nowait(None)
        self._opened.set()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _set_state(self, state: str, **extra: Any) -> None:
        previous, self.state = self.state, state
        if previous != state or extra:
            self._events.put_nowait(
                {"type": "state", "state": state, "previous": previous, **extra}
            )

    # --- frames in ----------------------------------------------------------------------

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        if kind == "welcome":
            self._on_welcome(frame)
        elif kind == "message":
            self._receive(frame)
        elif kind == "history" and "before" in frame:
            self._on_scroll(frame)
        elif kind == "history":
            self._on_reply(frame, frame["messages"])
        elif kind == "presence":
            self._keep_count(frame)
            # Its joins and leaves happened, whatever its order; its count may be older than
            # the one kept, so the app is given the room's count as the client keeps it.
            self._events.put_nowait({**frame, "count": self.count})
        elif kind == "typing":
            self._events.put_nowait(frame)
        elif kind == "members":
            self._on_members(frame)
        elif kind == "refreshed":
            self._schedule_refresh()
        elif kind == "error":
            self._on_error(frame)

    def _on_welcome(self, frame: Event) -> None:
        self._attempt = 0
        self.user = frame["user"]
        self._count_seq = None  # a new connection's count: whatever came before is older
        self._keep_count(frame)
        self.connection_id = frame["connection_id"]
        self._seq.continuing = self._paging = False
        if frame.get("recovered") is False:
            if self._seq.started:
                self._events.put_nowait(
                    {
                        "type": "discontinuity",
                        "reason": "history_lost",
                        "epoch": frame["epoch"],
                        "previous_epoch": self.epoch,
                    }
                )
            self._seq.restart()
        self.epoch = frame["epoch"]
        self._set_state("open")
        self._opened.set()
        self._on_reply(frame, frame["history"])
        self._schedule_refresh()
        for entry in self._outbox:
            entry.on = None  # unanswered: all go again, in order, with the same ids
        self._flush()
        for before, (limit, _, parts) in self._scrolls.items():
            parts.clear()
            self._emit_frame({"action": "history", "before": before, "limit": limit})
        if self._members is not None:
            self._members[1].clear()
            self._emit_frame({"action": "members"})

    def _keep_count(self, frame: Event) -> None:
        """Keep `frame`'s count unless the count kept is newer: on Lambda each join and leave
        is announced by its own invocation, so a room's `presence` frames arrive in any
        order, and each count comes with the number (`presence_seq`) its change drew before
        the count was read; the highest number's count includes every change
        (docs/protocol.md). A count without a number (memory, Redis: in order) is kept."""
        seq = frame.get("presence_seq")
        if not isinstance(seq, int):
            self.count = frame["count"]
        elif self._count_seq is None or seq > self._count_seq:
            self.count, self._count_seq = frame["count"], seq

    def _on_reply(self, frame: Event, messages: list[Event]) -> None:
        events, more = self._seq.reply(frame, messages)
        self._hand_over(events)
        if not self._seq.continuing:
            self._paging = False
            if more:
                self._ask_since()

    def _ask_since(self) -> None:
        if not self._paging:
            self._paging = self._emit_frame({"action": "history", "since": self._seq.resume})

    def _receive(self, message: Event) -> None:
        self._answer(message)
        self._hand_over(self._seq.receive(message))
        if self._seq.held and "gap" not in self._timers:
            self._start_timer("gap", self._o.gap_wait, self._ask_since)
        elif not self._seq.held:
            self._stop_timers("gap")

    def _hand_over(self, events: list[Event]) -> None:
        for event in events:
            self._events.put_nowait(event)

    def _answer(self, message: Event) -> None:
        user = message.get("user") or {}
        if (
            not message.get("client_msg_id")
            or self.user is None
            or user.get("id") != self.user["id"]
        ):
            return
        for entry in self._outbox:
            if entry.id == message["client_msg_id"]:
                self._outbox.remove(entry)
                if not entry.answer.done():
                    entry.answer.set_result(message)
                self._flush()
                return

    def _on_scroll(self, frame: Event) -> None:
        request = self._scrolls.get(frame["before"])
        if request is None:
            return
        _, future, parts = request
        parts.extend(frame["messages"])
        if frame.get("more"):
            return
        del self._scrolls[frame["before"]]
        if parts and (self._seq.oldest is None or parts[0]["id"] < self._seq.oldest):
            self._seq.oldest = parts[0]["id"]
        if not future.done():
            future.set_result(list(parts))

    def _on_members(self, frame: Event) -> None:
        if self._members is None:
            return
        future, parts = self._members
        parts.extend(frame["members"])
        self._keep_count(frame)
        if frame.get("more"):
            return
        self._members = None
        reply = {"count": frame["count"], "complete": frame["complete"], "members": list(parts)}
        if not future.done():
            future.set_result(reply)
        self._events.put_nowait({"type": "members", **reply})

    def _on_error(self, frame: Event) -> None:
        code = frame.get("code", "")
        entry = next((e for e in self._outbox if e.id == frame.get("client_msg_id")), None)
        if entry is not None and code in FINAL_SEND_ERRORS:
            self._outbox.remove(entry)
            _fail(entry.answer, ClientError(code, frame.get("detail", "")))
            self._flush()
            return
        if code in ("busy", "rate_limited"):
            # Dropped, not stored: what is unanswered goes again after a pause, with the same
            # client_msg_id (one stored after all is answered, not stored twice).
            for candidate in self._outbox:
                candidate.on = None
            self._paused_until = time.monotonic() + self._o.retry_after_busy
            self._start_timer("resend", self._o.retry_after_busy, self._flush)
            if entry is not None:
                return
        if code == "token_expired":
            self._token = None  # 4401 follows: the next session asks get_token
        self._events.put_nowait(frame)

    # --- frames out ---------------------------------------------------------------------

    def _emit_frame(self, body: Event) -> bool:
        if self._out is None or self.state != "open":
            return False
        self._out.put_nowait(json.dumps(body))
        return True

    def _flush(self) -> None:
        """Send what waits in the outbox, in order, at most `in_flight` unanswered."""
        if self._out is None or self.state != "open" or time.monotonic() < self._paused_until:
            return
        flying = sum(1 for entry in self._outbox if entry.on == self._session)
        for entry in self._outbox:
            if flying >= self._o.in_flight:
                return
            if entry.on != self._session:
                if not self._take_token():
                    self._start_timer("pace", 1 / self._o.send_rate, self._flush)
                    return
                self._out.put_nowait(entry.frame)
                entry.on = self._session
                flying += 1

    def _take_token(self) -> bool:
        now = time.monotonic()
        refill = (now - self._filled_at) * self._o.send_rate
        self._tokens = min(float(self._o.send_burst), self._tokens + refill)
        self._filled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _schedule_refresh(self) -> None:
        self._stop_timers("refresh")
        lifetime = lifetime_of(self._token)
        if self._get_token is None or lifetime is None:
            return
        wait = max(0.0, lifetime.renew_at(self._o.refresh_margin) - time.time())
        self._start_timer("refresh", wait, lambda: self._spawn(self._refresh()))

    async def _refresh(self) -> None:
        try:
            token = await self._ask_token()
        except Exception as error:
            self._finish(ClientError("token", f"get_token failed: {error!r}"))
            return
        self._token = token
        self._emit_frame({"action": "refresh", "token": token})

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_timer(self, name: str, seconds: float, call: Callable[[], object]) -> None:
        self._stop_timers(name)

        def fire() -> None:
            self._timers.pop(name, None)
            call()

        self._timers[name] = asyncio.get_running_loop().call_later(seconds, fire)

    def _stop_timers(self, *names: str) -> None:
        for name in list(names):
            timer = self._timers.pop(name, None)
            if timer is not None:
                timer.cancel()


def _fail(future: asyncio.Future[Any], error: ClientError) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: no warning for a caller that stopped waiting
