"""An example custom backend, loaded with WSCHAT_AUTH=tests.auth.example_backend:build, and an
example room policy, loaded with WSCHAT_ROOM_POLICY=tests.auth.example_backend:read_only_policy.

It lets in whoever sends an `X-Api-Key` header listed in EXAMPLE_API_KEYS, naming them after
the key's owner. A real backend would look the key up in its own store.
"""

from __future__ import annotations

from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal
from auth.rooms import Right, Rights
from infra.settings import Settings

EXAMPLE_API_KEYS = {"key-for-robot": "robot"}


class ApiKeyAuthenticator:
    accepts_cookies = False

    def authenticate(self, handshake: Handshake) -> Principal:
        owner = EXAMPLE_API_KEYS.get(handshake.headers.get("x-api-key", ""))
        if owner is None:
            raise AuthError("unknown API key")
        return Principal(id=f"svc:{owner}", name=owner, echo=owner)


def build(settings: Settings) -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator()


def not_an_authenticator(settings: Settings) -> object:
    return object()


class ReadOnlyPolicy:
    """Everyone may read every room; nobody may post (a broadcast-only deployment)."""

    def rights(self, principal: Principal, room: str) -> Rights:
        return frozenset({Right.READ})


def read_only_policy(settings: Settings | None) -> ReadOnlyPolicy:
    return ReadOnlyPolicy()
