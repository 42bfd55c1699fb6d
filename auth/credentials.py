"""Where a credential may come from in a handshake, in the documented order of precedence."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from auth.handshake import Handshake

BEARER_SUBPROTOCOL = "bearer"


class Source(StrEnum):
    AUTHORIZATION_HEADER = "authorization"
    SUBPROTOCOL = "subprotocol"
    QUERY = "query"
    COOKIE = "cookie"


@dataclass(frozen=True, slots=True)
class Credential:
    value: str
    source: Source


def find_credential(handshake: Handshake) -> Credential | None:
    """Return the first credential present: `Authorization: Bearer`, the subprotocol pair
    `bearer, <token>`, the `token` query parameter, then the `session` cookie."""
    scheme, _, value = handshake.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return Credential(value.strip(), Source.AUTHORIZATION_HEADER)
    offered = handshake.subprotocols
    for index, protocol in enumerate(offered[:-1]):
        if protocol == BEARER_SUBPROTOCOL and offered[index + 1]:
            return Credential(offered[index + 1], Source.SUBPROTOCOL)
    # Present-but-empty counts as given, as in the seed (`session or token` after a None check).
    if "token" in handshake.query:
        return Credential(handshake.query["token"], Source.QUERY)
    if "session" in handshake.cookies:
        return Credential(handshake.cookies["session"], Source.COOKIE)
    return None
