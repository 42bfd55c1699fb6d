"""Refuse browser handshakes from origins that are not explicitly allowed."""

from __future__ import annotations

from auth.base import Authenticator, may_block
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal


class OriginCheck:
    """Wraps an authenticator: an `Origin` header must be exactly one of `allowed`.

    Browsers always send `Origin` on a WebSocket handshake, and a cross-site page can make
    a browser attach its cookies; non-browser clients (services, mobile apps) usually send
    none, and carry no ambient credential, so a missing Origin is let through.
    """

    def __init__(self, inner: Authenticator, allowed: list[str]) -> None:
        self._inner = inner
        self._allowed = frozenset(allowed)
        self.accepts_cookies = inner.accepts_cookies
        self.may_block = may_block(inner)

    def authenticate(self, handshake: Handshake) -> Principal:
        origin = handshake.origin
        if origin is not None and origin not in self._allowed:
            raise AuthError("origin not allowed", status=403)
        return self._inner.authenticate(handshake)
