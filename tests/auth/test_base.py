"""Which backends an event loop may call in place (auth/base.py, `may_block`)."""

from __future__ import annotations

from auth.base import may_block
from auth.jwt import JwtAuthenticator
from auth.jwt_config import JwtConfig
from auth.origin import OriginCheck
from auth.token import TokenAuthenticator
from tests.auth.example_backend import ApiKeyAuthenticator

SECRET = "s" * 32


def test_only_backends_that_never_wait_are_called_in_place() -> None:
    """A token check is a dict look-up; handing it to a worker thread and back cost more than
    a third of a text-dialect connect's CPU (docs/performance.md)."""
    assert not may_block(TokenAuthenticator())
    assert not may_block(JwtAuthenticator(JwtConfig(algorithms=("HS256",), secret=SECRET)))
    keys = JwtConfig(algorithms=("RS256",), jwks_url="https://keys.example/jwks.json")
    assert may_block(JwtAuthenticator(keys))  # a key set is fetched on a new `kid`
    assert may_block(ApiKeyAuthenticator())  # a backend that does not say: in a thread
    assert not may_block(OriginCheck(TokenAuthenticator(), ["https://chat.example"]))
    assert may_block(OriginCheck(JwtAuthenticator(keys), ["https://chat.example"]))
