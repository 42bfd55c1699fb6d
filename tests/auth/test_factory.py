"""WSCHAT_AUTH picks the backend; WSCHAT_ALLOWED_ORIGINS wraps it in the Origin check."""

from __future__ import annotations

import logging

import pytest

from auth.errors import AuthConfigError, AuthError
from auth.factory import build_authenticator
from auth.handshake import Handshake
from auth.jwt import JwtAuthenticator
from auth.token import TokenAuthenticator
from infra.settings import Settings
from tests.auth.keys import SECRET


def test_token_is_the_default() -> None:
    assert isinstance(build_authenticator(Settings().auth_config()), TokenAuthenticator)


def test_jwt_backend() -> None:
    settings = Settings(auth="jwt", jwt_algorithms="HS256", jwt_secret=SECRET)  # type: ignore[arg-type]
    assert isinstance(build_authenticator(settings.auth_config()), JwtAuthenticator)


def test_custom_backend_is_loaded_and_used() -> None:
    auth = build_authenticator(Settings(auth="tests.auth.example_backend:build").auth_config())
    principal = auth.authenticate(Handshake(headers={"x-api-key": "key-for-robot"}))
    assert (principal.id, principal.name) == ("svc:robot", "robot")
    with pytest.raises(AuthError):
        auth.authenticate(Handshake(query={"token": "anything"}))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("kerberos", "use `token`, `jwt` or `package.module:factory`"),
        ("no.such.module:build", "cannot be loaded"),
        ("tests.auth.example_backend:missing", "cannot be loaded"),
        ("tests.auth.example_backend:not_an_authenticator", "did not return an Authenticator"),
    ],
)
def test_bad_backend_names_are_refused(spec: str, message: str) -> None:
    with pytest.raises(AuthConfigError) as refused:
        build_authenticator(Settings(auth=spec).auth_config())
    assert message in str(refused.value)


def test_bad_token_list_is_refused() -> None:
    with pytest.raises(AuthConfigError):
        build_authenticator(Settings(tokens="alice:t1,broken").auth_config())


def test_cookies_without_allowed_origins_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        build_authenticator(Settings().auth_config())
    assert "WSCHAT_ALLOWED_ORIGINS is empty" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_authenticator(Settings(allowed_origins="https://chat.example").auth_config())
    assert caplog.text == ""


ALLOWED = "https://chat.example,http://localhost:8000"


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://chat.example", True),
        ("http://localhost:8000", True),
        (None, True),  # not a browser: no ambient cookie to abuse
        ("https://evil.example", False),
        ("null", False),
        ("https://chat.example.evil.com", False),
        ("https://chat.example:443", False),
        ("http://chat.example", False),
        ("https://CHAT.example", False),
        ("https://chat.example/", False),
        ("", False),
    ],
)
def test_origin_must_match_exactly(origin: str | None, allowed: bool) -> None:
    auth = build_authenticator(Settings(allowed_origins=ALLOWED).auth_config())
    headers = {"origin": origin} if origin is not None else {}
    view = Handshake(headers=headers, cookies={"session": "s"})
    if allowed:
        assert auth.authenticate(view).echo == "s"
    else:
        with pytest.raises(AuthError) as refused:
            auth.authenticate(view)
        assert refused.value.status == 403
