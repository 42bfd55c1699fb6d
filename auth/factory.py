"""Choose the authenticator that `WSCHAT_AUTH` names."""

from __future__ import annotations

from auth.base import Authenticator
from auth.token import TokenAuthenticator, parse_token_list
from infra.settings import Settings


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.auth == "token":
        return TokenAuthenticator(parse_token_list(settings.tokens))
    raise ValueError(f"WSCHAT_AUTH={settings.auth!r} is not a known backend")
