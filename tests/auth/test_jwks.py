"""JWKS caching, cooldown, failure modes and rotation, against a real HTTP server on loopback."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import jwt
import pytest

from auth.errors import AuthError
from auth.handshake import Handshake
from auth.jwks import JwksCache, JwksUnavailable
from auth.jwt import JwtAuthenticator
from auth.jwt_config import JwtConfig
from tests.auth.jwks_server import JwksServer, jwks_server
from tests.auth.keys import AUDIENCE, ISSUER, claims, rsa_pair, unsigned


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def token(kid: str, seed: int = 0) -> str:
    return jwt.encode(claims(), rsa_pair(seed).private, "RS256", headers={"kid": kid})


@pytest.fixture
def server() -> Iterator[JwksServer]:
    with jwks_server([rsa_pair().jwk("k1", "RS256")]) as running:
        yield running


def cache(server: JwksServer, clock: Clock, timeout: float = 2.0) -> JwksCache:
    return JwksCache(server.url, lifespan=600, cooldown=30, timeout=timeout, clock=clock)


def authenticator(url: str, cooldown: float = 30, timeout: float = 2.0) -> JwtAuthenticator:
    return JwtAuthenticator(
        JwtConfig(
            algorithms=("RS256",),
            jwks_url=url,
            audience=(AUDIENCE,),
            issuer=ISSUER,
            jwks_refresh_cooldown=cooldown,
            jwks_timeout=timeout,
        )
    )


def test_keys_are_cached_for_their_lifespan(server: JwksServer) -> None:
    clock = Clock()
    keys = cache(server, clock)
    for _ in range(5):
        keys.key("k1")
    assert server.fetches == 1
    clock.now += 601
    keys.key("k1")
    assert server.fetches == 2


def test_unknown_kid_flood_fetches_at_most_once_per_cooldown(server: JwksServer) -> None:
    clock = Clock()
    keys = cache(server, clock)
    keys.key("k1")
    clock.now = 31  # past the first fetch's cooldown
    for _ in range(200):
        with pytest.raises(JwksUnavailable):
            keys.key(uuid.uuid4().hex)
        clock.now += 0.1  # 20 s of random kids, inside one 30 s cooldown
    assert server.fetches == 2
    assert keys.key("k1") is not None  # the real key still works


def test_cold_cache_with_endpoint_down_fails_closed(server: JwksServer) -> None:
    server.set("error")
    with pytest.raises(AuthError) as refused:
        authenticator(server.url).authenticate(Handshake(query={"token": token("k1")}))
    assert refused.value.status == 401


def test_nothing_listening_fails_closed() -> None:
    from tests.support.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    with pytest.raises(AuthError):
        authenticator(url).authenticate(Handshake(query={"token": token("k1")}))


def test_html_instead_of_json_fails_closed(server: JwksServer) -> None:
    server.set("html")
    with pytest.raises(AuthError):
        authenticator(server.url).authenticate(Handshake(query={"token": token("k1")}))


def test_slow_endpoint_times_out_quickly(server: JwksServer) -> None:
    server.set("ok", delay=3)
    started = time.monotonic()
    with pytest.raises(AuthError):
        authenticator(server.url, timeout=0.3).authenticate(Handshake(query={"token": token("k1")}))
    assert time.monotonic() - started < 2.5  # the 0.3 s timeout, not the 3 s response


def test_cached_keys_keep_working_while_the_endpoint_is_down(server: JwksServer) -> None:
    clock = Clock()
    keys = cache(server, clock)
    first = keys.key("k1")
    server.set("error")
    clock.now += 601  # stale: a refresh is attempted and fails
    assert keys.key("k1").key_id == first.key_id
    assert server.fetches == 2


def test_key_rotation(server: JwksServer) -> None:
    auth = authenticator(server.url, cooldown=0)
    assert auth.authenticate(Handshake(query={"token": token("k1")})).id == "alice-123"
    server.keys = [rsa_pair(1).jwk("k2", "RS256")]  # the issuer rotates
    assert auth.authenticate(Handshake(query={"token": token("k2", seed=1)})).id == "alice-123"
    assert server.fetches == 2


def test_kid_that_is_not_a_string_is_malformed(server: JwksServer) -> None:
    bad = unsigned({"alg": "RS256", "kid": 7}, claims(), b"signature")
    with pytest.raises(AuthError) as refused:
        authenticator(server.url).authenticate(Handshake(query={"token": bad}))
    assert refused.value.reason.startswith("malformed token")
    assert server.fetches == 0
