"""The seed's cookie-or-token check, optionally restricted to an allow-list of named tokens."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from auth.credentials import find_credential
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal


def anonymous_name(token: str) -> str:
    """A short, stable name derived from a token, so the token itself never names a user."""
    digest = hashlib.sha256(b"wschat-user:" + token.encode()).hexdigest()
    return f"user-{digest[:8]}"


class TokenAuthenticator:
    """Any present credential is accepted (the seed's semantics) unless `tokens` is given,
    in which case only those tokens are, each under its configured display name."""

    accepts_cookies = True

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        # token -> name
        self._names = dict(tokens or {})

    def authenticate(self, handshake: Handshake) -> Principal:
        credential = find_credential(handshake)
        if credential is None:
            raise AuthError(
                "no credential: send a `session` cookie or a `token` query parameter", status=403
            )
        if not self._names:
            name = anonymous_name(credential.value)
            return Principal(id=name, name=name, echo=credential.value)
        for token, name in self._names.items():
            if hmac.compare_digest(token.encode(), credential.value.encode()):
                return Principal(id=name, name=name, echo=credential.value)
        raise AuthError(f"unknown token (from {credential.source})")


def parse_token_list(spec: str) -> dict[str, str]:
    """Parse `name:token,name:token` into {token: name}. Raises ValueError on a bad entry."""
    names: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, token = entry.partition(":")
        if not sep or not name.strip() or not token.strip():
            raise ValueError("WSCHAT_TOKENS entries must look like name:token")
        names[token.strip()] = name.strip()
    return names
