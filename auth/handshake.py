"""A transport-neutral view of a WebSocket handshake, built from ASGI or API Gateway."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl


@dataclass(frozen=True, slots=True)
class Handshake:
    """What an authenticator may look at. Header names are lower-case.

    When a name repeats (a header, a query parameter, a cookie), the last one counts: that is
    what API Gateway puts in an event's single-value `headers` and `queryStringParameters`,
    and what Starlette's query parameters return, so both transports read the same request
    the same way. Only the offered subprotocols are gathered from every header.
    """

    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    subprotocols: tuple[str, ...] = ()

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin")

    @classmethod
    def bearer(cls, token: str) -> Handshake:
        """A handshake whose only credential is `token`: how an in-band refresh is verified."""
        return cls(headers={"authorization": f"Bearer {token}"})

    @classmethod
    def from_asgi(cls, scope: Mapping[str, Any]) -> Handshake:
        """Build the view from an ASGI `websocket` scope (uvicorn, Starlette's TestClient)."""
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        query_string = scope.get("query_string", b"").decode("latin-1")
        return cls(
            headers=headers,
            query=dict(parse_qsl(query_string, keep_blank_values=True)),
            cookies=parse_cookies(headers.get("cookie", "")),
            subprotocols=tuple(scope.get("subprotocols", ())),
        )

    @classmethod
    def from_apigw(cls, event: Mapping[str, Any]) -> Handshake:
        """Build the view from an API Gateway WebSocket `$connect` (or authorizer) event."""
        raw_headers = event.get("headers") or {}
        headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
        query = {str(k): str(v) for k, v in (event.get("queryStringParameters") or {}).items()}
        offered = [headers.get("sec-websocket-protocol", "")]
        for name, values in (event.get("multiValueHeaders") or {}).items():
            if str(name).lower() == "sec-websocket-protocol" and isinstance(values, list):
                offered = [str(v) for v in values]
        return cls(
            headers=headers,
            query=query,
            cookies=parse_cookies(headers.get("cookie", "")),
            subprotocols=split_subprotocols(offered),
        )


def split_subprotocols(header_values: list[str]) -> tuple[str, ...]:
    """The subprotocols offered in `Sec-WebSocket-Protocol` headers, in order."""
    return tuple(p.strip() for value in header_values for p in value.split(",") if p.strip())


def parse_cookies(header: str) -> dict[str, str]:
    """Parse a Cookie header leniently: one malformed cookie does not hide the others. A
    repeated name: the last one counts, as for headers and query parameters."""
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(chunk)
        except CookieError:
            continue
        for key, morsel in jar.items():
            cookies[key] = morsel.value
    return cookies
