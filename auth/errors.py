"""The exception an authenticator raises, carrying the status a transport answers with, and
the one that refuses unusable auth settings."""

from __future__ import annotations


class AuthError(Exception):
    """A handshake was refused.

    `status` is the HTTP status to answer (401: credential missing or invalid;
    403: credential fine but not allowed here, e.g. a foreign Origin). `reason` is safe to log
    and to return: it never contains the credential.
    """

    def __init__(self, reason: str, status: int = 401) -> None:
        # A reason may quote a token's own text (PyJWT's errors do): a lone surrogate there
        # would fail every response and log line that carries it.
        reason = reason.encode("utf-8", "backslashreplace").decode()
        super().__init__(reason)
        self.reason = reason
        self.status = status


class AuthConfigError(ValueError):
    """The auth settings cannot work; the message says which setting to change."""
