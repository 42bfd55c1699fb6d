"""Who is on the other end of a connection, as established by an authenticator."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from auth.errors import AuthError

if TYPE_CHECKING:
    from auth.rooms import Grants


def is_text(value: str) -> bool:
    """False for a string that UTF-8 cannot carry: one with a lone surrogate, which a JSON
    `\\ud800` escape or an undecodable environment variable can produce. Such a string would
    fail every frame it is written into."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user.

    `id` is stable and `name` is what other users see; neither is ever the raw credential.
    `echo` is the value the seed's first text-dialect line shows to the user themself: the
    token under token auth (the seed's behaviour), the verified subject under JWT.
    `expires_at` is when the credential runs out (epoch seconds), or None if it never does.
    `grants` are the rooms the credential itself opens (a JWT's rooms claim, a token's
    grants), for the `claims` room policy; `claims` are a JWT's verified claims, for a custom
    policy to read.

    Every backend's principal is checked here, so a custom backend cannot let through a
    user the chat could not write into a frame, or an expiry that is not a time.
    """

    id: str
    name: str
    echo: str
    expires_at: float | None = None
    grants: Grants | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.id or not all(is_text(v) for v in (self.id, self.name, self.echo)):
            raise AuthError("the credential names a user that is not valid Unicode text")
        expires = self.expires_at
        if expires is not None and (
            isinstance(expires, bool)
            or not isinstance(expires, float | int)
            or not math.isfinite(expires)
        ):
            raise AuthError("the credential's expiry is not a time")
