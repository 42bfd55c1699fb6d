"""Who is on the other end of a connection, as established by an authenticator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user.

    `id` is stable and `name` is what other users see; neither is ever the raw credential.
    `echo` is the value the seed's first text-dialect line shows to the user themself: the
    token under token auth (the seed's behaviour), the verified subject under JWT.
    """

    id: str
    name: str
    echo: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float | None = None
