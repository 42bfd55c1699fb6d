"""JWT authentication, identical on both transports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from tests.auth.keys import SECRET, claims
from tests.contract.conftest import Transport, transport_with, transports_for
from tests.support.clients import recv

JWT_ENV = {"WSCHAT_AUTH": "jwt", "WSCHAT_JWT_SECRET": SECRET, "WSCHAT_JWT_ALGORITHMS": "HS256"}


def token(**overrides: Any) -> str:
    return jwt.encode(claims(iss=None, aud=None, **overrides), SECRET, algorithm="HS256")


@pytest.fixture(scope="module", params=transports_for(__name__))
def jwt_transport(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Transport]:
    with transport_with(request, tmp_path_factory, JWT_ENV) as transport:
        yield transport


async def test_a_valid_token_shows_its_subject(jwt_transport: Transport) -> None:
    async with jwt_transport.connect("jwt", token=token(sub="alice")) as ws:
        await ws.send("hi")
        assert await recv(ws) == "Session cookie or query token value is: alice"


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": "4102444800"},  # a numeric string: read as "never expires" before the fix
        {"nbf": "0"},
        {"iat": "1700000000"},
        {"sub": "x\ud800y"},  # a lone surrogate: no frame could carry this user
        {"exp": 10**400},  # no float: an OverflowError and a 500
        {"exp": 1e308},  # a float DynamoDB cannot store: $connect failed with a 500
    ],
    ids=["exp string", "nbf string", "iat string", "sub lone surrogate", "exp huge", "exp 1e308"],
)
async def test_unreadable_claims_are_refused_with_401(
    jwt_transport: Transport, overrides: dict[str, Any]
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with jwt_transport.connect("jwt", token=token(**overrides)):
            pass
    assert refused.value.response.status_code == 401


async def test_a_respelled_signature_is_refused(jwt_transport: Transport) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with jwt_transport.connect("jwt", token=token() + "="):
            pass
    assert refused.value.response.status_code == 401
