"""The REQUEST authorizer: the same authenticators, an IAM policy out, closed on any error."""

from __future__ import annotations

import pytest

from auth import lambda_authorizer
from auth.errors import AuthError
from auth.lambda_authorizer import principal_context, principal_from_context
from auth.principal import Principal
from auth.rooms import ALL, Right, Rights
from handler.aws.authorizer import handler
from tests.auth.keys import SECRET, hs256
from tests.support.aws import event, reset_caches

READ_ONLY: Rights = frozenset({Right.READ})
ARN = "arn:aws:execute-api:us-east-1:123456789012:abcdef123/prod/$connect"


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("WSCHAT_"):
            monkeypatch.delenv(key)
    reset_caches()


def jwt_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_AUTH", "jwt")
    monkeypatch.setenv("WSCHAT_JWT_ALGORITHMS", "HS256")
    monkeypatch.setenv("WSCHAT_JWT_SECRET", SECRET)
    monkeypatch.setenv("WSCHAT_JWT_ISSUER", "https://issuer.example")
    monkeypatch.setenv("WSCHAT_JWT_AUDIENCE", "wschat")
    reset_caches()


def test_token_mode_allows_with_a_flat_context() -> None:
    result = handler(event("authorizer"))
    statement = result["policyDocument"]["Statement"][0]
    assert statement == {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": ARN}
    assert result["principalId"].startswith("user-")
    context = result["context"]
    assert all(isinstance(v, str | int | float | bool) for v in context.values())
    assert context["name"] == result["principalId"] and context["expiresAt"] == ""
    token = event("authorizer")["queryStringParameters"]["token"]
    assert token not in str(result)  # API Gateway keeps the context for the connection's life


def test_jwt_mode_carries_subject_name_and_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    jwt_mode(monkeypatch)
    token = hs256()
    result = handler(event("authorizer", queryStringParameters={"room": "foo", "token": token}))
    assert result["principalId"] == "alice-123"
    assert result["context"]["name"] == "Alice" and result["context"]["expiresAt"] > 0
    assert token not in str(result)


def test_invalid_token_is_unauthorized(monkeypatch: pytest.MonkeyPatch) -> None:
    jwt_mode(monkeypatch)
    with pytest.raises(lambda_authorizer.Unauthorized, match=r"^Unauthorized$"):
        handler(event("authorizer", queryStringParameters={"room": "foo", "token": "garbage"}))


def test_missing_credential_is_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    # 403, like the seed's policy violation (API Gateway itself answers 401 when an identity
    # source is absent, before the authorizer runs).
    jwt_mode(monkeypatch)
    result = handler(event("authorizer", queryStringParameters={"room": "x"}))
    assert result["policyDocument"]["Statement"][0]["Effect"] == "Deny"


def test_foreign_origin_is_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_ALLOWED_ORIGINS", "https://other.example")
    reset_caches()
    result = handler(event("authorizer"))
    assert result["policyDocument"]["Statement"][0]["Effect"] == "Deny"


@pytest.mark.parametrize("bad", [{}, None, "x", {"methodArn": 5}])
def test_malformed_events_fail_closed(bad: object) -> None:
    with pytest.raises(lambda_authorizer.Unauthorized):
        handler(bad)


def test_misconfiguration_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_AUTH", "jwt")  # no algorithms: the backend cannot be built
    reset_caches()
    with pytest.raises(lambda_authorizer.Unauthorized):
        handler(event("authorizer"))


@pytest.mark.parametrize(
    ("principal", "rights"),
    [
        (Principal(id="alice-123", name="Alice", echo="alice-123", expires_at=1.9e9), ALL),
        (Principal(id="user-0a1b2c3d", name="user-0a1b2c3d", echo="some token"), READ_ONLY),
    ],
)
def test_the_context_round_trips(principal: Principal, rights: Rights) -> None:
    context = {"principalId": principal.id, **principal_context(principal, rights, "some token")}
    assert principal_from_context(context, "some token") == (principal, rights)
    assert "some token" not in str(context)


@pytest.mark.parametrize(
    "context",
    [
        {},
        {"principalId": ""},
        {"principalId": "a", "expiresAt": "soon"},
        {"principalId": 5},
        {"principalId": "a", "rights": "read,admin"},
    ],
)
def test_a_context_we_did_not_write_is_refused(context: dict[str, object]) -> None:
    with pytest.raises(AuthError):
        principal_from_context(context, None)


def test_a_room_the_principal_may_not_read_is_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_ROOM_POLICY", "claims")
    monkeypatch.setenv("WSCHAT_TOKENS", "alice:tok-a|support-*=read+write;news=read")
    reset_caches()

    def verdict(room: str) -> tuple[str, str | None]:
        query = {"room": room, "token": "tok-a"}
        result = handler(event("authorizer", queryStringParameters=query))
        effect = result["policyDocument"]["Statement"][0]["Effect"]
        return effect, result.get("context", {}).get("rights")

    assert verdict("support-1") == ("Allow", "read,write")
    assert verdict("news") == ("Allow", "read")
    assert verdict("random") == ("Deny", None)


@pytest.mark.parametrize(
    "query",
    [
        {"room": "a/b"},
        {"room": "r" * 200},
        {"room": "lobby\x00"},
        {"room": "lobby", "format": "xml"},
        {"room": "lobby", "q": "nope"},
        {"item_id": ""},
    ],
    ids=["slash", "long", "control", "format", "q", "no room"],
)
def test_a_handshake_the_chat_refuses_is_denied(query: dict[str, str]) -> None:
    # The same rules as `$connect` (handler/chat/handshake.py): the authorizer used to ask the
    # room policy about any room name, and allow what `$connect` would then refuse.
    result = handler(event("authorizer", queryStringParameters={**query, "token": "t"}))
    assert result["policyDocument"]["Statement"][0]["Effect"] == "Deny"
