"""Choose the authenticator that `WSCHAT_AUTH` names, wrapped in the Origin check."""

from __future__ import annotations

import importlib
import logging

from auth.base import Authenticator
from auth.errors import AuthConfigError
from auth.origin import OriginCheck
from auth.token import TokenAuthenticator, parse_token_list
from infra.settings import Settings, split_list

log = logging.getLogger(__name__)


def build_authenticator(settings: Settings, warn: bool = True) -> Authenticator:
    """Build the configured backend. Raises AuthConfigError with a message a user can act on.
    `warn=False` skips the startup warnings, for a build that only checks the settings."""
    inner = _backend(settings)
    allowed = split_list(settings.allowed_origins)
    if not allowed:
        if inner.accepts_cookies and warn:
            log.warning(
                "cookies are accepted but WSCHAT_ALLOWED_ORIGINS is empty: any web page can "
                "open a socket with a visitor's cookie; list your page's origin"
            )
        return inner
    return OriginCheck(inner, allowed)


def _backend(settings: Settings) -> Authenticator:
    if settings.auth == "token":
        try:
            return TokenAuthenticator(parse_token_list(settings.tokens))
        except ValueError as error:
            raise AuthConfigError(str(error)) from None
    if settings.auth == "jwt":
        # Imported here: PyJWT and cryptography add over 100 ms to a Lambda cold start, which
        # token auth never needs.
        from auth.jwt import JwtAuthenticator, JwtConfig

        return JwtAuthenticator(JwtConfig.from_settings(settings))
    module_name, sep, factory_name = settings.auth.partition(":")
    if not sep or not module_name or not factory_name:
        raise AuthConfigError(
            f"WSCHAT_AUTH={settings.auth!r}: use `token`, `jwt` or `package.module:factory`"
        )
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        raise AuthConfigError(f"WSCHAT_AUTH={settings.auth!r} cannot be loaded: {error}") from None
    backend = factory(settings)
    if not callable(getattr(backend, "authenticate", None)):
        raise AuthConfigError(f"WSCHAT_AUTH={settings.auth!r} did not return an Authenticator")
    if not hasattr(backend, "accepts_cookies"):
        raise AuthConfigError(f"WSCHAT_AUTH={settings.auth!r}: backend lacks `accepts_cookies`")
    return backend  # type: ignore[no-any-return]
