"""Unsafe or unusable JWT settings are refused at startup with a message naming the fix."""

from __future__ import annotations

import pytest

from auth.errors import AuthConfigError
from infra.settings import Settings
from tests.auth.keys import SECRET, rsa_pair


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "WSCHAT_JWT_ALGORITHMS is required"),
        ({"jwt_algorithms": "none", "jwt_secret": SECRET}, "unsupported"),
        ({"jwt_algorithms": "HS256,RS256", "jwt_secret": SECRET}, "mixes HMAC"),
        ({"jwt_algorithms": "HS256"}, "need WSCHAT_JWT_SECRET"),
        ({"jwt_algorithms": "HS256", "jwt_secret": "short"}, "at least 32 bytes"),
        ({"jwt_algorithms": "HS512", "jwt_secret": SECRET}, "at least 64 bytes"),
        ({"jwt_algorithms": "RS256"}, "exactly one of"),
        (
            {"jwt_algorithms": "RS256", "jwt_jwks_url": "http://x", "jwt_public_key": "y"},
            "exactly one of",
        ),
        ({"jwt_algorithms": "RS256", "jwt_public_key": "not a pem"}, "not a PEM public key"),
    ],
)
def test_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(AuthConfigError) as refused:
        Settings(auth="jwt", **env).jwt_config()  # type: ignore[arg-type]
    assert message in str(refused.value)
    assert SECRET not in str(refused.value)


def test_lists_are_parsed() -> None:
    config = Settings(
        auth="jwt",
        jwt_algorithms="RS256, ES256",
        jwt_public_key=rsa_pair().public_pem,  # type: ignore[arg-type]
        jwt_audience="a, b",
        jwt_required_claims="exp,sub",
    ).jwt_config()
    assert config.algorithms == ("RS256", "ES256")
    assert config.audience == ("a", "b")
    assert config.required_claims == ("exp", "sub")
