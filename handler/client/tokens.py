"""When a client renews its token: read from the JWT's own claims, without verifying them
(the server verifies; the client only needs to know when the token runs out)."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Lifetime:
    exp: float  # epoch seconds
    iat: float | None

    def renew_at(self, margin: float) -> float:
        """When to renew: `margin` seconds before `exp`, or a tenth of the lifetime (from
        `iat`) when that is shorter."""
        if self.iat is not None:
            margin = min(margin, (self.exp - self.iat) / 10)
        return self.exp - margin


def lifetime_of(token: str | None) -> Lifetime | None:
    """A JWT's `exp` and `iat`; None for a token that is not a JWT or has no `exp`."""
    parts = token.split(".") if token else []
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict):
        return None
    exp, iat = _time(claims.get("exp")), _time(claims.get("iat"))
    return Lifetime(exp, iat) if exp is not None else None


def _time(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
