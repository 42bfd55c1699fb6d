"""A transport-neutral view of a WebSocket handshake, built from ASGI or API Gateway."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl


@dataclass(frozen=True, slots=True)
class Handshake:
    """What an authenticator may look at. Header names are lower-case."""

    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    subprotocols: tuple[str, ...] = ()

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin")

    @classmethod
    def from_asgi(cls, scope: Mapping[str, Any]) -> Handshake:
        """Build the view from an ASGI `websocket` scope (uvicorn, Starlette's TestClient)."""
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            # Repeated headers are joined as HTTP allows; cookies use "; " as their separator.
            if name in headers:
                headers[name] += ("; " if name == "cookie" else ", ") + value
            else:
                headers[name] = value
        query_string = scope.get("query_string", b"").decode("latin-1")
        return cls(
            headers=headers,
            query=_first_values(parse_qsl(query_string, keep_blank_values=True)),
            cookies=parse_cookies(headers.get("cookie", "")),
            subprotocols=tuple(scope.get("subprotocols", ())),
        )

    @classmethod
    def from_apigw(cls, event: Mapping[str, Any]) -> Handshake:
        """Build the view from an API Gateway WebSocket `$connect` (or authorizer) event."""
        raw_headers = event.get("headers") or {}
        headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
        query = {str(k): str(v) for k, v in (event.get("queryStringParameters") or {}).items()}
        offered = headers.get("sec-websocket-protocol", "")
        return cls(
            headers=headers,
            query=query,
            cookies=parse_cookies(headers.get("cookie", "")),
            subprotocols=tuple(p.strip() for p in offered.split(",") if p.strip()),
        )


def _first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    # The first occurrence wins, as Starlette's QueryParams.get does.
    result: dict[str, str] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def parse_cookies(header: str) -> dict[str, str]:
    """Parse a Cookie header leniently: one malformed cookie does not hide the others."""
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(chunk)
        except CookieError:
            continue
        for key, morsel in jar.items():
            cookies.setdefault(key, morsel.value)
    return cookies
