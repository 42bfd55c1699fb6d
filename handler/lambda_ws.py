"""API Gateway WebSocket handlers: `$connect`, `$default`, `$disconnect` and the welcome.

Each translates an event into one call of the chat core, exactly as the uvicorn endpoint does.
Nothing here imports FastAPI: this is the cold-start path.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from auth.base import Authenticator
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal
from handler.apigw_event import MalformedEvent, WebSocketEvent
from handler.core import ConnectParams
from handler.ports import Dialect
from handler.serverless import core_for, endpoint_for, welcome_core_for
from handler.wire import choose_subprotocol, room_problem
from infra.settings import get_settings

log = logging.getLogger(__name__)
logging.getLogger().setLevel(logging.INFO)

Response = dict[str, Any]


def _respond(status: int, body: str = "") -> Response:
    return {"statusCode": status, "body": body} if body else {"statusCode": status}


LambdaHandler = Callable[[Any, Any], Response]


def _route(name: str) -> Callable[[Callable[[WebSocketEvent, Any], Response]], LambdaHandler]:
    """Make a Lambda handler of `handle(event, raw_event)`: a malformed event gets a 400 and a
    log line, never an exception."""

    def wrap(handle: Callable[[WebSocketEvent, Any], Response]) -> LambdaHandler:
        def handler(event: Any, context: Any = None) -> Response:
            try:
                ws = WebSocketEvent.parse(event)
            except MalformedEvent as error:
                log.warning("malformed %s event: %s", name, error)
                return _respond(400, str(error))
            return handle(ws, event)

        return handler

    return wrap


@_route("$connect")
def connect(ws: WebSocketEvent, event: Any) -> Response:
    return _connect(ws, event)


@_route("message")
def default(ws: WebSocketEvent, event: Any) -> Response:
    if ws.body is None:
        log.warning("message event for %s has no body", ws.connection_id)
        return _respond(400, "message event has no body")
    _core(ws).message(ws.connection_id, ws.body)
    return _respond(200)


@_route("$disconnect")
def disconnect(ws: WebSocketEvent, event: Any) -> Response:
    log.info("%s disconnected (status %s)", ws.connection_id, ws.disconnect_status)
    _core(ws).disconnect(ws.connection_id)
    return _respond(200)


ROUTES = {"$connect": connect, "$disconnect": disconnect, "$default": default}


def handle(event: Any, context: Any = None) -> Response:
    """All routes in one function: dispatch on `routeKey`."""
    route = event.get("requestContext", {}).get("routeKey") if isinstance(event, dict) else None
    handler = ROUTES.get(route) if isinstance(route, str) else None
    if handler is None:
        log.warning("event with unknown routeKey %r", route)
        return _respond(400, "unknown routeKey")
    return handler(event, context)


def welcome(event: Any, context: Any = None) -> Response:
    """Invoked asynchronously by `$connect`, after it returned, when API Gateway accepts sends:
    gives a JSON-dialect connection its `welcome` frame."""
    if not isinstance(event, Mapping) or not isinstance(event.get("connectionId"), str):
        log.warning("malformed welcome event")
        return _respond(400, "welcome needs connectionId and endpoint")
    since = event.get("since")
    core = welcome_core_for(str(event.get("endpoint", "")))
    core.welcome(event["connectionId"], since if isinstance(since, int) else None)
    return _respond(200)


def _core(ws: WebSocketEvent) -> Any:
    return core_for(endpoint_for(ws.domain_name, ws.stage, ws.api_id))


def _connect(ws: WebSocketEvent, event: Any) -> Response:
    settings = get_settings()
    room = ws.query.get("room") or ws.query.get("item_id")
    if room is None:
        return _respond(400, "the `room` query parameter is required")
    problem = room_problem(room, settings.max_room_length)
    if problem is not None:
        return _respond(403, problem)
    try:
        q = _optional_int(ws.query, "q")
        since = _optional_int(ws.query, "since")
    except ValueError as error:
        return _respond(403, str(error))
    requested = ws.query.get("format")
    if requested not in (None, "text", "json"):
        return _respond(403, "`format` must be text or json")
    offered_dialect, subprotocol = choose_subprotocol(
        list(Handshake.from_apigw(event).subprotocols)
    )
    dialect = Dialect(requested) if requested else (offered_dialect or Dialect.TEXT)

    try:
        principal = _principal(ws, event)
    except AuthError as error:
        log.info("$connect refused (%d): %s", error.status, error.reason)
        return _respond(error.status, error.reason)

    core = _core(ws)
    core.connect(ws.connection_id, room, principal, ConnectParams(dialect, q))
    if dialect is Dialect.JSON:
        _schedule_welcome(ws, since)
    response = _respond(200)
    if subprotocol:
        response["headers"] = {"Sec-WebSocket-Protocol": subprotocol}
    return response


def _optional_int(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"`{name}` must be an integer") from None
    if name == "since" and value < 0:
        raise ValueError("`since` must be a non-negative integer")
    return value


def _principal(ws: WebSocketEvent, event: Any) -> Principal:
    """The authorizer's verdict when one is attached; otherwise authenticate here."""
    context = ws.authorizer
    if context:
        principal_id = context.get("principalId")
        if not isinstance(principal_id, str) or not principal_id:
            raise AuthError("authorizer context has no principal")
        expires = context.get("expiresAt")
        try:
            expires_at = float(expires) if expires not in (None, "") else None
        except (TypeError, ValueError):
            raise AuthError("authorizer context has an unreadable expiry") from None
        return Principal(
            id=principal_id,
            name=str(context.get("name") or principal_id),
            echo=str(context.get("echo") or principal_id),
            expires_at=expires_at,
        )
    return _authenticator().authenticate(Handshake.from_apigw(event))


@lru_cache(maxsize=1)
def _authenticator() -> Authenticator:
    from auth.factory import build_authenticator

    return build_authenticator(get_settings())


@lru_cache(maxsize=1)
def _lambda_client() -> Any:
    import boto3

    settings = get_settings()
    endpoint = settings.lambda_endpoint or None
    if endpoint is None and os.environ.get("IS_OFFLINE"):
        endpoint = f"http://localhost:{settings.offline_lambda_port}"  # serverless offline
    return boto3.client("lambda", endpoint_url=endpoint)


def reset_caches() -> None:
    """Forget settings, clients and cores, as a cold start would (tests, the emulator)."""
    from handler import serverless

    for cached in (
        get_settings,
        serverless.dynamodb_client,
        serverless.management_client,
        serverless.core_for,
        serverless.welcome_core_for,
        serverless.rest_backend,
        _authenticator,
        _lambda_client,
    ):
        cached.cache_clear()


def _schedule_welcome(ws: WebSocketEvent, since: int | None) -> None:
    function = get_settings().welcome_function
    if not function:
        # Without the function the welcome frame cannot arrive (API Gateway refuses sends
        # during $connect), but the connection must still be opened to live messages.
        log.warning("WSCHAT_WELCOME_FUNCTION is not set: %s gets no welcome", ws.connection_id)
        _core(ws).welcome(ws.connection_id, since)
        return
    payload = {
        "connectionId": ws.connection_id,
        "endpoint": endpoint_for(ws.domain_name, ws.stage, ws.api_id),
        "since": since,
    }
    try:
        _lambda_client().invoke(
            FunctionName=function, InvocationType="Event", Payload=json.dumps(payload).encode()
        )
    except Exception as error:
        log.error("could not schedule the welcome for %s: %s", ws.connection_id, error)
