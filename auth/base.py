"""The Authenticator protocol every backend satisfies."""

from __future__ import annotations

from typing import Protocol

from auth.handshake import Handshake
from auth.principal import Principal


class Authenticator(Protocol):
    """Turns a handshake into a Principal, or raises `AuthError`.

    `authenticate` may block (a JWKS fetch, say): async callers run it in a worker thread.
    It must never put the credential into an exception message or a log line.
    `accepts_cookies` tells whether a `session` cookie can authenticate, which is when a
    browser's ambient credential makes an Origin check necessary.
    """

    accepts_cookies: bool

    def authenticate(self, handshake: Handshake) -> Principal: ...
