"""The seed's cookie-or-token check, optionally restricted to an allow-list of named tokens."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from auth.credentials import find_credential
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal
from auth.rooms import Grants


def anonymous_name(token: str) -> str:
    """A short, stable name derived from a token, so the token itself never names a user."""
    digest = hashlib.sha256(b"wschat-user:" + token.encode()).hexdigest()
    return f"user-{digest[:8]}"


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One `WSCHAT_TOKENS` entry: the name its holder is shown under, and the rooms it opens
    (for the `claims` room policy; None: no grants)."""

    name: str
    grants: Grants | None = None


class TokenAuthenticator:
    """Any present credential is accepted (the seed's semantics) unless `tokens` is given,
    in which case only those tokens are, each under its configured display name."""

    accepts_cookies = True
    may_block = False  # a dict look-up and a hash

    def __init__(self, tokens: Mapping[str, TokenEntry] | None = None) -> None:
        self._entries = dict(tokens or {})

    def authenticate(self, handshake: Handshake) -> Principal:
        credential = find_credential(handshake)
        if credential is None:
            raise AuthError(
                "no credential: send a `session` cookie or a `token` query parameter", status=403
            )
        if not self._entries:
            name = anonymous_name(credential.value)
            return Principal(id=name, name=name, echo=credential.value)
        offered = credential.value.encode(errors="replace")
        for token, entry in self._entries.items():
            if hmac.compare_digest(token.encode(), offered):
                return Principal(
                    id=entry.name, name=entry.name, echo=credential.value, grants=entry.grants
                )
        raise AuthError(f"unknown token (from {credential.source})")


def parse_token_list(spec: str) -> dict[str, TokenEntry]:
    """Parse `name:token,name:token|pattern=read+write;pattern=read` into {token: entry}.
    Raises ValueError on a bad entry (saying why, never showing a token)."""
    entries: dict[str, TokenEntry] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, rest = entry.partition(":")
        token, bar, grants = rest.partition("|")
        if not sep or not name.strip() or not token.strip():
            raise ValueError("WSCHAT_TOKENS entries must look like name:token")
        try:
            parsed = Grants.from_spec(grants) if bar else None
        except ValueError as error:
            raise ValueError(f"WSCHAT_TOKENS entry for {name.strip()!r}: {error}") from None
        entries[token.strip()] = TokenEntry(name.strip(), parsed)
    return entries
