"""A local API Gateway WebSocket emulator: `wschat emulate`.

One loopback port serves what API Gateway would: WebSocket clients at `/{stage}`, each turned
into `$connect` / `$default` / `$disconnect` Lambda events for the project's handlers (run
in-process, in worker threads, as Lambda would run them), and the Management API at
`/{stage}/@connections/{id}` that those handlers' real client calls over HTTP. It also
answers the Lambda Invoke API for the asynchronous welcome, under a path secret to this run
that only the handlers are told, and serves the chat page. DynamoDB is moto's server, started
in-process, unless a real endpoint is given.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from handler.chat.wire import MAX_SEND_BYTES, CloseCode
from handler.local.delivery import Outbox
from infra.settings import get_settings

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]

API_ID = "emulator"
# API Gateway's limits: frames of 32 KiB (clients send a message as one frame), 2 h per
# connection, 10 min idle (EmulatorConfig).
MAX_FRAME_BYTES = 32 * 1024


@dataclass
class _Socket:
    websocket: WebSocket
    outbox: Outbox
    source_ip: str
    user_agent: str
    connected_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.time)


@dataclass
class EmulatorConfig:
    """How the emulated API behaves; `wschat emulate`'s options default to these."""

    stage: str = "local"
    authorizer: bool = False
    # The authorizer's identity sources (`route.request.querystring.NAME`,
    # `route.request.header.NAME`), as serverless.yml lists them: API Gateway invokes the
    # authorizer only when every one is present and not empty, and answers 401 itself otherwise.
    identity_sources: tuple[str, ...] = ()
    idle_timeout: float = 600.0
    max_duration: float = 7200.0
    send_queue_frames: int = field(default_factory=lambda: get_settings().send_queue_frames)
    # The Lambda Invoke API is served under this path, new each run, which only the handlers
    # are told (WSCHAT_LAMBDA_ENDPOINT): the port is open to whatever reaches the WebSocket
    # API (a web page in the developer's browser; the LAN with --host 0.0.0.0), and an invoke
    # runs a function with the event its caller chose.
    lambda_path: str = field(default_factory=lambda: "/" + secrets.token_urlsafe(24))


class QuietPlumbing(logging.Filter):
    """Keeps uvicorn's access log to what a developer did: not the calls the handlers make to
    the emulator itself (Management API posts, Lambda invokes), which API Gateway does not log
    either. There is one per recipient of every message; formatting them cost a seventh of the
    emulator's CPU during a burst of connects (py-spy). At DEBUG the Management API's are
    kept; the invokes never are, since their path is the run's secret. Paths are matched as
    uvicorn writes them (percent-encoded: `@` is `%40`)."""

    def __init__(self, config: EmulatorConfig) -> None:
        super().__init__()
        self._management = (quote(f"/{config.stage}/@connections/"), quote("/@connections/"))
        self._invoke = quote(f"{config.lambda_path}/2015-03-31/functions/")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        path = args[2] if isinstance(args, tuple) and len(args) > 2 else None
        if not isinstance(path, str):
            return True
        if path.startswith(self._invoke):
            return False
        return not path.startswith(self._management) or logging.getLogger().isEnabledFor(
            logging.DEBUG
        )


class Emulator:
    def __init__(
        self,
        config: EmulatorConfig,
        routes: dict[str, Handler],
        authorizer: Handler | None,
        functions: dict[str, Handler],
        page: Callable[[str], str],
        http: ASGIApp | None = None,
    ) -> None:
        self.config = config
        self._routes = routes
        self._authorizer = authorizer
        self._functions = functions
        self._page = page
        self._http = http
        self._sockets: dict[str, _Socket] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def app(self) -> Starlette:
        stage = self.config.stage
        return Starlette(
            routes=[
                Route("/", self._index),
                Route("/healthz", self._healthz),
                Route(
                    f"/{stage}/@connections/{{connection_id:path}}",
                    self._manage,
                    methods=["POST", "GET", "DELETE"],
                ),
                Route(
                    "/@connections/{connection_id:path}",
                    self._manage,
                    methods=["POST", "GET", "DELETE"],
                ),
                Route(
                    f"{self.config.lambda_path}/2015-03-31/functions/{{name}}/invocations",
                    self._invoke,
                    methods=["POST"],
                ),
                WebSocketRoute(f"/{stage}", self._socket),
                # Everything else is the HTTP function: the FastAPI app (REST), as on AWS.
                *([Mount("/", app=self._http)] if self._http is not None else []),
            ]
        )

    # --- HTTP -----------------------------------------------------------------------------

    async def _index(self, request: Request) -> Response:
        scheme = "wss" if request.url.scheme == "https" else "ws"
        return HTMLResponse(self._page(f"{scheme}://{request.url.netloc}/{self.config.stage}"))

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "transport": "emulator", "connections": len(self._sockets)}
        )

    async def _manage(self, request: Request) -> Response:
        connection_id = request.path_params["connection_id"]
        socket = self._sockets.get(connection_id)
        if socket is None:
            return JSONResponse(
                {"message": "Gone"}, status_code=410, headers={"x-amzn-ErrorType": "GoneException"}
            )
        if request.method == "POST":
            data = await request.body()
            if len(data) > MAX_SEND_BYTES:
                return JSONResponse(
                    {"message": "Payload too large"},
                    status_code=413,
                    headers={"x-amzn-ErrorType": "PayloadTooLargeException"},
                )
            socket.outbox.offer(data.decode("utf-8", errors="replace"))
            return Response(status_code=200)
        if request.method == "DELETE":
            # API Gateway closes the socket with a code of its own choosing.
            socket.outbox.request_close(CloseCode.NORMAL, "")
            return Response(status_code=204)
        return JSONResponse(
            {
                "ConnectedAt": _iso(socket.connected_at),
                "LastActiveAt": _iso(socket.last_active),
                "Identity": {"SourceIp": socket.source_ip, "UserAgent": socket.user_agent},
            }
        )

    async def _invoke(self, request: Request) -> Response:
        """The Lambda Invoke API, for the functions the handlers invoke themselves."""
        function = self._functions.get(request.path_params["name"])
        if function is None:
            return JSONResponse(
                {"Message": "Function not found"},
                status_code=404,
                headers={"x-amzn-ErrorType": "ResourceNotFoundException"},
            )
        try:
            payload = json.loads(await request.body() or b"{}")
        except (ValueError, RecursionError):
            return JSONResponse(
                {"Message": "Could not parse request body into json"},
                status_code=400,
                headers={"x-amzn-ErrorType": "InvalidRequestContentException"},
            )
        if request.headers.get("x-amz-invocation-type") == "Event":
            task = asyncio.create_task(self._invoke_async(function, payload))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return Response(status_code=202)
        result = await run_in_threadpool(function, payload, None)
        return JSONResponse(result)

    async def _invoke_async(self, function: Handler, payload: Any) -> None:
        """An asynchronous invocation: like Lambda, retried twice if it raises."""
        for attempt in range(3):
            try:
                await run_in_threadpool(function, payload, None)
                return
            except Exception:
                log.exception("async invocation failed (attempt %d of 3)", attempt + 1)

    # --- WebSocket ------------------------------------------------------------------------

    async def _socket(self, websocket: WebSocket) -> None:
        connection_id = base64.b64encode(secrets.token_bytes(12)).decode()
        client = websocket.client
        source_ip = client.host if client else "127.0.0.1"
        connect = self._event("$connect", "CONNECT", connection_id, websocket, source_ip)
        # API Gateway's two views of a repeated name: every value in the multi-value maps, the
        # last one in the single-value maps.
        multi_headers = _multi(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in websocket.scope["headers"]
        )
        multi_query = _multi(
            parse_qsl(
                websocket.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
            )
        )
        headers = {k: v[-1] for k, v in multi_headers.items()}
        query = {k: v[-1] for k, v in multi_query.items()}
        connect["headers"] = headers
        connect["multiValueHeaders"] = multi_headers
        connect["queryStringParameters"] = query or None
        connect["multiValueQueryStringParameters"] = multi_query or None

        denial = await self._authorize(connect, query)
        if denial is not None:
            await websocket.send_denial_response(denial)
            return
        response = await self._call("$connect", connect)
        status = int(response.get("statusCode", 200)) if isinstance(response, dict) else 500
        if status != 200:
            body = response.get("body", "") if isinstance(response, dict) else ""
            await websocket.send_denial_response(PlainTextResponse(str(body), status_code=status))
            return
        subprotocol = (response.get("headers") or {}).get("Sec-WebSocket-Protocol")
        await websocket.accept(subprotocol=subprotocol)

        outbox = Outbox(websocket.send_text, websocket.close, self.config.send_queue_frames)
        socket = _Socket(websocket, outbox, source_ip, headers.get("user-agent", ""))
        self._sockets[connection_id] = socket
        status_code: int = CloseCode.ABNORMAL  # unless the client's close frame says otherwise
        try:
            writer = outbox.start()
            reader = asyncio.create_task(self._read(connection_id, socket))
            timer = asyncio.create_task(self._expire(socket))
            try:
                ends: list[asyncio.Future[Any]] = [reader, writer]
                done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, writer, timer):
                    task.cancel()
            if reader in done and reader.exception() is None:
                status_code = reader.result()
            elif reader in done:
                log.error("reading from %s failed", connection_id, exc_info=reader.exception())
            else:  # the server side closed it, with the code it chose
                status_code = socket.outbox.close_code or CloseCode.NORMAL
        finally:
            # API Gateway runs $disconnect for every connection it accepted, whatever ended it.
            self._sockets.pop(connection_id, None)
            disconnect = self._event(
                "$disconnect", "DISCONNECT", connection_id, websocket, source_ip
            )
            disconnect["requestContext"]["disconnectStatusCode"] = status_code
            disconnect["requestContext"]["disconnectReason"] = ""
            await asyncio.shield(self._call("$disconnect", disconnect))

    async def _read(self, connection_id: str, socket: _Socket) -> int:
        """Feed frames to `$default` one at a time, in order. Returns the client's close code."""
        websocket = socket.websocket
        closing = False
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code", CloseCode.NO_STATUS))
            text = message.get("text")
            if closing:
                continue  # sent before the client saw our close: API Gateway drops it too
            if text is None:
                # API Gateway takes no binary frame: it closes the connection with 1003 and
                # invokes no route (docs/serverless.md, "Binary frames").
                socket.outbox.request_close(CloseCode.UNSUPPORTED_DATA, "")
                closing = True
                continue
            socket.last_active = time.time()
            event = self._event("$default", "MESSAGE", connection_id, websocket, socket.source_ip)
            event["body"], event["isBase64Encoded"] = text, False
            event["requestContext"]["messageId"] = secrets.token_urlsafe(9)
            event["requestContext"]["routeKey"] = self._route_for(text)
            response = await self._call(event["requestContext"]["routeKey"], event)
            if response is None:
                socket.outbox.offer(
                    json.dumps({"message": "Internal server error", "connectionId": connection_id})
                )

    async def _expire(self, socket: _Socket) -> None:
        """API Gateway's idle timeout and maximum connection duration."""
        while True:
            deadline = min(
                socket.last_active + self.config.idle_timeout,
                socket.connected_at + self.config.max_duration,
            )
            if time.time() >= deadline:
                socket.outbox.request_close(CloseCode.GOING_AWAY, "Going away")
                return
            await asyncio.sleep(deadline - time.time())

    def _route_for(self, body: str | None) -> str:
        """Route selection on `$request.body.action`. A frame whose route cannot be selected
        (not JSON, too deeply nested to parse, no string `action`, no such route) goes to
        `$default`, as API Gateway sends it."""
        if body is None:
            return "$default"
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return "$default"
        action = parsed.get("action") if isinstance(parsed, dict) else None
        return action if isinstance(action, str) and action in self._routes else "$default"

    async def _authorize(self, connect: dict[str, Any], query: dict[str, str]) -> Response | None:
        """Run the REQUEST authorizer as API Gateway does; None when the connection may go on."""
        if not self.config.authorizer or self._authorizer is None:
            return None
        headers = {name.lower(): value for name, value in connect["headers"].items()}
        for source in self.config.identity_sources:
            kind, _, name = source.removeprefix("route.request.").partition(".")
            value = query.get(name) if kind == "querystring" else headers.get(name.lower())
            if not value:  # an identity source is missing or empty: 401, no invocation
                return PlainTextResponse("Unauthorized", status_code=401)
        request = {
            **connect,
            "type": "REQUEST",
            "methodArn": f"arn:aws:execute-api:local:000000000000:{API_ID}/"
            f"{self.config.stage}/$connect",
        }
        try:
            result = await run_in_threadpool(self._authorizer, request, None)
        except Exception:
            return PlainTextResponse("Unauthorized", status_code=401)
        statement = result.get("policyDocument", {}).get("Statement", [{}])[0]
        if statement.get("Effect") != "Allow":
            return PlainTextResponse("Forbidden", status_code=403)
        connect["requestContext"]["authorizer"] = {
            "principalId": result.get("principalId"),
            **(result.get("context") or {}),
        }
        return None

    async def _call(self, route: str, event: dict[str, Any]) -> Any:
        handler = self._routes.get(route) or self._routes["$default"]
        try:
            return await run_in_threadpool(handler, event, None)
        except Exception:
            log.exception("handler for %s raised", route)
            return None

    def _event(
        self, route: str, event_type: str, connection_id: str, websocket: WebSocket, source_ip: str
    ) -> dict[str, Any]:
        now = time.time()
        host = websocket.headers.get("host", "127.0.0.1")
        return {
            "requestContext": {
                "routeKey": route,
                "eventType": event_type,
                "extendedRequestId": secrets.token_urlsafe(12),
                "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "messageDirection": "IN",
                "stage": self.config.stage,
                "connectedAt": int(now * 1000),
                "requestTimeEpoch": int(now * 1000),
                "identity": {"sourceIp": source_ip},
                "requestId": secrets.token_urlsafe(12),
                "domainName": host,
                "connectionId": connection_id,
                "apiId": API_ID,
            },
            "isBase64Encoded": False,
        }


def _multi(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        values.setdefault(name, []).append(value)
    return values


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
