"""The API Gateway `$connect` REQUEST authorizer's verdict, both ways: `authorize` turns a
handshake into an IAM policy and a context, `principal_from_context` turns that context back
into the Principal when `$connect` receives it. One module, so the two cannot drift apart.

It fails closed: any error, ours or the event's, denies the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from auth.base import Authenticator
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal

log = logging.getLogger(__name__)


class Unauthorized(Exception):
    """Raised with exactly this message, it makes API Gateway answer 401."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


def authorize(authenticator: Callable[[], Authenticator], event: Any) -> dict[str, Any]:
    """The authorizer's answer to a REQUEST event: Allow with the principal's context, Deny
    (403), or Unauthorized raised (401)."""
    if not isinstance(event, Mapping) or not isinstance(event.get("methodArn"), str):
        log.warning("authorizer event without methodArn; denying")
        raise Unauthorized()
    try:
        principal = authenticator().authenticate(Handshake.from_apigw(event))
    except AuthError as error:
        log.info("authorizer refused (%d): %s", error.status, error.reason)
        if error.status == 403:
            return _policy("anonymous", "Deny", event["methodArn"])
        raise Unauthorized() from None
    except Exception:
        log.exception("authorizer failed; denying")
        raise Unauthorized() from None
    response = _policy(principal.id, "Allow", event["methodArn"])
    response["context"] = principal_context(principal)
    return response


def principal_context(principal: Principal) -> dict[str, str | float]:
    """The principal as an authorizer context. Values must be flat strings, numbers or
    booleans; API Gateway hands them, with the principalId, to `$connect` as
    requestContext.authorizer."""
    return {
        "name": principal.name,
        "echo": principal.echo,
        "expiresAt": principal.expires_at if principal.expires_at is not None else "",
    }


def principal_from_context(context: Mapping[str, Any]) -> Principal:
    """The principal an authorizer's context describes. Raises AuthError for a context we did
    not write: no principal, or an expiry that is not a time."""
    principal_id = context.get("principalId")
    if not isinstance(principal_id, str) or not principal_id:
        raise AuthError("authorizer context has no principal")
    expires = context.get("expiresAt")
    try:
        expires_at = float(expires) if expires not in (None, "") else None
    except (TypeError, ValueError):
        raise AuthError("authorizer context has an unreadable expiry") from None
    return Principal(
        id=principal_id,
        name=str(context.get("name") or principal_id),
        echo=str(context.get("echo") or principal_id),
        expires_at=expires_at,
    )


def _policy(principal_id: str, effect: str, resource: str) -> dict[str, Any]:
    return {
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
    }
