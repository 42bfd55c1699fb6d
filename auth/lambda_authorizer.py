"""The API Gateway `$connect` REQUEST authorizer: the same authenticators, behind an IAM policy.

It fails closed: any error, ours or the event's, denies the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from auth.base import Authenticator
from auth.errors import AuthError
from auth.handshake import Handshake

log = logging.getLogger(__name__)


class Unauthorized(Exception):
    """Raised with exactly this message, it makes API Gateway answer 401."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


@lru_cache(maxsize=1)
def _authenticator() -> Authenticator:
    from auth.factory import build_authenticator
    from infra.settings import get_settings

    return build_authenticator(get_settings())


def _policy(principal_id: str, effect: str, resource: str) -> dict[str, Any]:
    return {
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
    }


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    if not isinstance(event, Mapping) or not isinstance(event.get("methodArn"), str):
        log.warning("authorizer event without methodArn; denying")
        raise Unauthorized()
    try:
        principal = _authenticator().authenticate(Handshake.from_apigw(event))
    except AuthError as error:
        log.info("authorizer refused (%d): %s", error.status, error.reason)
        if error.status == 403:
            return _policy("anonymous", "Deny", event["methodArn"])
        raise Unauthorized() from None
    except Exception:
        log.exception("authorizer failed; denying")
        raise Unauthorized() from None
    response = _policy(principal.id, "Allow", event["methodArn"])
    # Context values must be flat strings, numbers or booleans. API Gateway hands them, with
    # the principalId, to $connect as requestContext.authorizer.
    response["context"] = {
        "name": principal.name,
        "echo": principal.echo,
        "expiresAt": principal.expires_at if principal.expires_at is not None else "",
    }
    return response
