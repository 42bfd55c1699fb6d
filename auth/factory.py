"""Build the authenticator that `WSCHAT_AUTH` names, wrapped in the Origin check, from values
the wiring hands in (auth reads no settings of its own)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from auth.base import Authenticator
from auth.errors import AuthConfigError
from auth.jwt_config import JwtConfig
from auth.origin import OriginCheck
from auth.plugins import load_factory
from auth.token import TokenAuthenticator, parse_token_list

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuthConfig:
    """Which backend authenticates, and with what: `kind` is `token`, `jwt` or
    `package.module:factory`; `tokens` the `WSCHAT_TOKENS` list; `jwt` the verifier's
    configuration (needed for `jwt`); `settings` what a custom factory is called with."""

    kind: str = "token"
    tokens: str = ""
    allowed_origins: tuple[str, ...] = ()
    jwt: JwtConfig | None = None
    settings: object = None


def build_authenticator(config: AuthConfig, warn: bool = True) -> Authenticator:
    """Build the configured backend. Raises AuthConfigError with a message a user can act on.
    `warn=False` skips the startup warnings, for a build that only checks the settings."""
    inner = _backend(config)
    if not config.allowed_origins:
        if inner.accepts_cookies and warn:
            log.warning(
                "cookies are accepted but WSCHAT_ALLOWED_ORIGINS is empty: any web page can "
                "open a socket with a visitor's cookie; list your page's origin"
            )
        return inner
    return OriginCheck(inner, list(config.allowed_origins))


def _backend(config: AuthConfig) -> Authenticator:
    if config.kind == "token":
        try:
            return TokenAuthenticator(parse_token_list(config.tokens))
        except ValueError as error:
            raise AuthConfigError(str(error)) from None
    if config.kind == "jwt":
        if config.jwt is None:
            raise AuthConfigError("WSCHAT_AUTH=jwt needs the JWT settings")
        # Imported here: PyJWT and cryptography add over 100 ms to a Lambda cold start, which
        # token auth never needs.
        from auth.jwt import JwtAuthenticator

        return JwtAuthenticator(config.jwt)
    factory = load_factory("WSCHAT_AUTH", config.kind, "`token`, `jwt`")
    backend = factory(config.settings)
    if not callable(getattr(backend, "authenticate", None)):
        raise AuthConfigError(f"WSCHAT_AUTH={config.kind!r} did not return an Authenticator")
    if not hasattr(backend, "accepts_cookies"):
        raise AuthConfigError(f"WSCHAT_AUTH={config.kind!r}: backend lacks `accepts_cookies`")
    return backend  # type: ignore[no-any-return]
