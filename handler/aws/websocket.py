"""API Gateway WebSocket handlers: `$connect`, `$default`, `$disconnect` and the welcome.

Each translates an event into one call of the chat core, exactly as the uvicorn endpoint does,
after the same handshake rules (`handler.chat.handshake.negotiate`). Nothing here imports
FastAPI: this is the cold-start path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from auth.credentials import find_credential
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.lambda_authorizer import principal_from_context
from auth.principal import Principal
from auth.rooms import Rights, readable
from handler.aws.event import MalformedEvent, WebSocketEvent
from handler.aws.runtime import AwsRuntime, entry_point, runtime
from handler.chat.core import ChatCore, ConnectParams
from handler.chat.handshake import Refused, negotiate
from handler.chat.ports import Dialect
from handler.chat.wire import CloseCode, close_code_label

log = logging.getLogger(__name__)

Response = dict[str, Any]


def _respond(status: int, body: str = "") -> Response:
    return {"statusCode": status, "body": body} if body else {"statusCode": status}


class WebSocketHandlers:
    """The four Lambda entry points, on a runtime: this container's, or one a benchmark or a
    test builds. A malformed event gets a 400 and a log line, never an exception."""

    def __init__(self, runtime: Callable[[], AwsRuntime]) -> None:
        self._runtime = runtime

    def connect(self, event: Any, context: Any = None) -> Response:
        ws = self._parse("$connect", event)
        if not isinstance(ws, WebSocketEvent):
            return ws
        handshake = ws.handshake
        rt = self._runtime()
        asked = negotiate(
            None, handshake.query, handshake.subprotocols, rt.settings.max_room_length
        )
        if isinstance(asked, Refused):
            rt.metrics.count("handshakes_refused", status=str(asked.status))
            return _respond(asked.status, asked.reason)
        core = self._core(ws)
        try:
            principal, rights = self._principal(ws, handshake, core, asked.room)
        except AuthError as error:
            log.info("$connect refused (%d): %s", error.status, error.reason)
            rt.metrics.count("handshakes_refused", status=str(error.status))
            return _respond(error.status, error.reason)
        params = ConnectParams(asked.dialect, asked.q, rights)
        core.connect(ws.connection_id, asked.room, principal, params)
        rt.metrics.count("connects")
        if asked.dialect is Dialect.JSON:
            self._schedule_welcome(ws, asked.since, asked.epoch)
        response = _respond(200)
        if asked.subprotocol:
            response["headers"] = {"Sec-WebSocket-Protocol": asked.subprotocol}
        return response

    def default(self, event: Any, context: Any = None) -> Response:
        ws = self._parse("message", event)
        if not isinstance(ws, WebSocketEvent):
            return ws
        if ws.body is None:
            log.warning("message event for %s has no body", ws.connection_id)
            return _respond(400, "message event has no body")
        self._core(ws).message(ws.connection_id, ws.body)
        return _respond(200)

    def disconnect(self, event: Any, context: Any = None) -> Response:
        ws = self._parse("$disconnect", event)
        if not isinstance(ws, WebSocketEvent):
            return ws
        log.info("%s disconnected (status %s)", ws.connection_id, ws.disconnect_status)
        self._core(ws).disconnect(ws.connection_id)
        code = ws.disconnect_status or CloseCode.NO_STATUS
        self._runtime().metrics.count("disconnects", code=close_code_label(code))
        return _respond(200)

    def welcome(self, event: Any, context: Any = None) -> Response:
        """Invoked asynchronously by `$connect`, after it returned, when API Gateway accepts
        sends: gives a JSON-dialect connection its `welcome` (docs/welcome-seam.md).

        The event names the API as `$connect`'s did, and the Management API endpoint is found
        from it as for any event: never an endpoint the event spells out, which whoever can
        invoke the function (anything that reaches a local emulator's port) would choose."""
        fields = ("connectionId", "domainName", "stage", "apiId")
        if not isinstance(event, Mapping) or not all(isinstance(event.get(f), str) for f in fields):
            log.warning("malformed welcome event")
            return _respond(400, "welcome needs connectionId, domainName, stage and apiId")
        since, epoch = event.get("since"), event.get("epoch")
        rt = self._runtime()
        endpoint = rt.endpoint_for(event["domainName"], event["stage"], event["apiId"])
        core = rt.core(endpoint, welcome=True)
        core.welcome(
            event["connectionId"],
            since if isinstance(since, int) else None,
            epoch if isinstance(epoch, str) else None,
        )
        return _respond(200)

    def _parse(self, route: str, event: Any) -> WebSocketEvent | Response:
        try:
            return WebSocketEvent.parse(event)
        except MalformedEvent as error:
            log.warning("malformed %s event: %s", route, error)
            return _respond(400, str(error))

    def _core(self, ws: WebSocketEvent) -> ChatCore:
        rt = self._runtime()
        return rt.core(rt.endpoint_for(ws.domain_name, ws.stage, ws.api_id))

    def _principal(
        self, ws: WebSocketEvent, handshake: Handshake, core: ChatCore, room: str
    ) -> tuple[Principal, Rights]:
        """Who connects and what they may do in the room: the authorizer's verdict when one
        is attached (it asked the same room policy), otherwise decided here. No `read` in the
        room: refused with 403, as the authorizer would."""
        if ws.authorizer:
            credential = find_credential(handshake)
            principal, rights = principal_from_context(
                ws.authorizer, credential.value if credential else None
            )
        else:
            principal = self._runtime().authenticator().authenticate(handshake)
            rights = core.rights(principal, room)
        return principal, readable(rights)

    def _schedule_welcome(self, ws: WebSocketEvent, since: int | None, epoch: str | None) -> None:
        rt = self._runtime()
        function = rt.settings.welcome_function
        if not function:
            # Without the function the welcome frame cannot arrive (API Gateway refuses sends
            # during $connect), but the connection must still be opened to live messages.
            log.warning("WSCHAT_WELCOME_FUNCTION is not set: %s gets no welcome", ws.connection_id)
            rt.core(rt.endpoint_for(ws.domain_name, ws.stage, ws.api_id)).welcome(
                ws.connection_id, since, epoch
            )
            return
        payload = {
            "connectionId": ws.connection_id,
            "domainName": ws.domain_name,
            "stage": ws.stage,
            "apiId": ws.api_id,
            "since": since,
            "epoch": epoch,
        }
        try:
            rt.lambda_client().invoke(
                FunctionName=function, InvocationType="Event", Payload=json.dumps(payload).encode()
            )
        except Exception as error:
            log.error("could not schedule the welcome for %s: %s", ws.connection_id, error)


# The entry points serverless.yml names, on this container's runtime.
_handlers = WebSocketHandlers(runtime)
connect = entry_point(_handlers.connect)
default = entry_point(_handlers.default)
disconnect = entry_point(_handlers.disconnect)
welcome = entry_point(_handlers.welcome)
