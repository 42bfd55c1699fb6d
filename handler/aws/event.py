"""API Gateway WebSocket events, read and checked once at the edge."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auth.handshake import Handshake


class MalformedEvent(Exception):
    """The event is not a WebSocket event API Gateway would send; the reason says why."""


def _text(context: Mapping[str, Any], name: str) -> str:
    value = context.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"requestContext.{name} is missing")
    return value


@dataclass(frozen=True, slots=True)
class WebSocketEvent:
    route_key: str
    connection_id: str
    domain_name: str
    stage: str
    api_id: str
    authorizer: Mapping[str, Any] = field(default_factory=dict)
    handshake: Handshake = field(default_factory=Handshake)  # $connect only
    body: str | bytes | None = None  # messages only; bytes when the frame was binary
    disconnect_status: int | None = None  # $disconnect only

    @classmethod
    def parse(cls, event: Any) -> WebSocketEvent:
        if not isinstance(event, Mapping):
            raise MalformedEvent("event is not a JSON object")
        context = event.get("requestContext")
        if not isinstance(context, Mapping):
            raise MalformedEvent("no requestContext: not an API Gateway WebSocket event")
        body: str | bytes | None = event.get("body")
        if body is not None and not isinstance(body, str):
            raise MalformedEvent("body must be a string")
        if body is not None and event.get("isBase64Encoded"):
            try:
                body = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError):
                raise MalformedEvent("body is not valid base64") from None
        status = context.get("disconnectStatusCode")
        authorizer = context.get("authorizer")
        route_key = _text(context, "routeKey")
        return cls(
            route_key=route_key,
            connection_id=_text(context, "connectionId"),
            domain_name=str(context.get("domainName") or ""),
            stage=str(context.get("stage") or ""),
            api_id=str(context.get("apiId") or ""),
            authorizer=authorizer if isinstance(authorizer, Mapping) else {},
            # Only `$connect` carries the request's headers and query.
            handshake=Handshake.from_apigw(event) if route_key == "$connect" else Handshake(),
            body=body,
            disconnect_status=status if isinstance(status, int) else None,
        )
