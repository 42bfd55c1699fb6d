from __future__ import annotations

import pytest

from auth.errors import AuthError
from auth.handshake import Handshake
from auth.token import TokenAuthenticator, anonymous_name, parse_token_list


def test_any_token_gets_a_stable_hashed_name() -> None:
    principal = TokenAuthenticator().authenticate(Handshake(query={"token": "some-key-token"}))
    assert principal.echo == "some-key-token"
    assert principal.name == anonymous_name("some-key-token")
    assert principal.name.startswith("user-") and len(principal.name) == 13
    assert "some-key-token" not in principal.name + principal.id


def test_allow_list_names_tokens_and_refuses_others() -> None:
    auth = TokenAuthenticator(parse_token_list("alice:t-alice, bob:t-bob"))
    assert auth.authenticate(Handshake(cookies={"session": "t-bob"})).name == "bob"
    with pytest.raises(AuthError) as refused:
        auth.authenticate(Handshake(query={"token": "t-carol"}))
    assert refused.value.status == 401
    assert "t-carol" not in refused.value.reason


def test_missing_credential_is_403() -> None:
    with pytest.raises(AuthError) as refused:
        TokenAuthenticator().authenticate(Handshake())
    assert refused.value.status == 403


@pytest.mark.parametrize("spec", ["alice", ":t", "alice:", "alice:t,bob"])
def test_bad_token_lists(spec: str) -> None:
    with pytest.raises(ValueError, match="name:token"):
        parse_token_list(spec)
