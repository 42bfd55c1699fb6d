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
from auth.credentials import find_credential
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal
from auth.rooms import Rights, RoomPolicy, readable, rights_from_text, rights_text

log = logging.getLogger(__name__)

# The context's `echoFrom` when the seed's echo is the credential (token auth).
ECHO_FROM_CREDENTIAL = "credential"


class Unauthorized(Exception):
    """Raised with exactly this message, it makes API Gateway answer 401."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


def authorize(
    authenticator: Callable[[], Authenticator],
    policy: Callable[[], RoomPolicy],
    room_of: Callable[[Handshake], str],
    event: Any,
) -> dict[str, Any]:
    """The authorizer's answer to a REQUEST event: Allow with the principal's context and its
    rights in the room, Deny (403: no credential, a foreign Origin, a handshake the chat
    refuses, or a room the principal may not read), or Unauthorized raised (401). `room_of`
    applies the chat's handshake rules: the room, or AuthError (403)."""
    if not isinstance(event, Mapping) or not isinstance(event.get("methodArn"), str):
        log.warning("authorizer event without methodArn; denying")
        raise Unauthorized()
    try:
        handshake = Handshake.from_apigw(event)
        room = room_of(handshake)
        principal = authenticator().authenticate(handshake)
        rights = readable(policy().rights(principal, room))
    except AuthError as error:
        log.info("authorizer refused (%d): %s", error.status, error.reason)
        if error.status == 403:
            return _policy("anonymous", "Deny", event["methodArn"])
        raise Unauthorized() from None
    except Exception:
        log.exception("authorizer failed; denying")
        raise Unauthorized() from None
    response = _policy(principal.id, "Allow", event["methodArn"])
    credential = find_credential(handshake)
    response["context"] = principal_context(
        principal, rights, credential.value if credential else None
    )
    return response


def principal_context(
    principal: Principal, rights: Rights, credential: str | None
) -> dict[str, str | float]:
    """The principal, and its rights in the room it connects to, as an authorizer context.
    Values must be flat strings, numbers or booleans; API Gateway hands them, with the
    principalId, to `$connect` as requestContext.authorizer, for the connection's life.

    Never the credential: where the echo is the credential itself (token auth), the context
    says so, and `$connect` takes it from its own request, which carries it too."""
    context: dict[str, str | float] = {
        "name": principal.name,
        "expiresAt": principal.expires_at if principal.expires_at is not None else "",
        "rights": rights_text(rights),
    }
    if principal.echo == credential:
        context["echoFrom"] = ECHO_FROM_CREDENTIAL
    elif principal.echo != principal.id:
        context["echo"] = principal.echo
    return context


def principal_from_context(
    context: Mapping[str, Any], credential: str | None
) -> tuple[Principal, Rights]:
    """The principal an authorizer's context describes, and its rights in the room;
    `credential` is the one `$connect`'s own request carries. Raises AuthError for a context
    we did not write: no principal, an expiry that is not a time, rights we do not know."""
    principal_id = context.get("principalId")
    if not isinstance(principal_id, str) or not principal_id:
        raise AuthError("authorizer context has no principal")
    expires = context.get("expiresAt")
    try:
        expires_at = float(expires) if expires not in (None, "") else None
    except (TypeError, ValueError):
        raise AuthError("authorizer context has an unreadable expiry") from None
    try:
        rights = rights_from_text(str(context.get("rights", "")))
    except ValueError:
        raise AuthError("authorizer context has unknown rights") from None
    if context.get("echoFrom") == ECHO_FROM_CREDENTIAL and credential is not None:
        echo = credential
    else:
        echo = str(context.get("echo") or principal_id)
    principal = Principal(
        id=principal_id,
        name=str(context.get("name") or principal_id),
        echo=echo,
        expires_at=expires_at,
    )
    return principal, rights


def _policy(principal_id: str, effect: str, resource: str) -> dict[str, Any]:
    return {
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
    }
