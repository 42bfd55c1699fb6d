"""The `$connect` REQUEST authorizer's Lambda entry point (serverless.yml: `authorizer`)."""

from __future__ import annotations

from typing import Any

from auth.errors import AuthError
from auth.handshake import Handshake
from auth.lambda_authorizer import authorize
from handler.chat.handshake import Refused, negotiate


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    from handler.aws.runtime import runtime  # on first call: the import is the cold start

    def room_of(handshake: Handshake) -> str:
        """The handshake's rules, as `$connect` applies them: a handshake it would refuse is
        denied here, before the principal's rights are asked for a room it would not open."""
        limit = runtime().settings.max_room_length
        asked = negotiate(None, handshake.query, handshake.subprotocols, limit)
        if isinstance(asked, Refused):
            raise AuthError(asked.reason, status=403)
        return asked.room

    return authorize(lambda: runtime().authenticator(), lambda: runtime().policy(), room_of, event)
