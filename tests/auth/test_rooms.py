"""Room grants and the room policies: patterns, precedence, and what a grant must look like."""

from __future__ import annotations

import pytest

from auth.errors import AuthConfigError
from auth.handshake import Handshake
from auth.principal import Principal
from auth.rooms import (
    ALL,
    NONE,
    Grants,
    GrantsPolicy,
    OpenPolicy,
    Right,
    build_room_policy,
    rights_from_text,
    rights_text,
)
from auth.token import TokenAuthenticator, parse_token_list

READ = frozenset({Right.READ})
WRITE = frozenset({Right.WRITE})

CLAIM = {
    "support-*": ["read", "write"],
    "support-archive-*": ["read"],
    "announcements": ["read"],
    "*": [],
    "team-*-private": ["read", "write"],
}


@pytest.mark.parametrize(
    ("room", "rights"),
    [
        ("support-42", ALL),
        ("support-archive-2025", READ),  # longer literal part: more specific
        ("announcements", READ),  # an exact name beats any pattern
        ("announcements-old", NONE),  # only `*` matches, and it grants nothing
        ("team-red-private", ALL),
        ("team-private", NONE),  # "team-*-private" needs both dashes
        ("anything", NONE),
    ],
)
def test_the_most_specific_pattern_decides(room: str, rights: frozenset[Right]) -> None:
    assert Grants.from_claim(CLAIM).rights(room) == rights


def test_a_star_matches_an_empty_run_too() -> None:
    assert Grants.from_claim({"team-*-private": ["read"]}).rights("team--private") == READ
    assert Grants.from_claim({"a*": ["read"]}).rights("a") == READ


def test_equally_specific_patterns_grant_only_what_they_all_grant() -> None:
    grants = Grants.from_claim({"support-*": ["read", "write"], "*-archive": ["read"]})
    assert grants.rights("support-archive") == READ  # 8 literal characters each


def test_matching_is_linear_whatever_the_pattern() -> None:
    pattern = "*a" * 40 + "b"  # exponential for a backtracking regular expression
    assert Grants.from_claim({pattern: ["read"]}).rights("a" * 128) == NONE


@pytest.mark.parametrize(
    "claim",
    [
        ["support-*"],
        {"support-*": "read"},
        {"support-*": ["read", "admin"]},
        {"": ["read"]},
        {f"r{i}": ["read"] for i in range(101)},
    ],
    ids=["a list", "a string of rights", "an unknown right", "an empty pattern", "too many"],
)
def test_a_malformed_claim_is_refused(claim: object) -> None:
    with pytest.raises(ValueError):
        Grants.from_claim(claim)


def test_token_entries_carry_grants() -> None:
    entries = parse_token_list("alice:t-a|support-*=read+write;news=read, bob:t-b")
    alice = TokenAuthenticator(entries).authenticate(Handshake(query={"token": "t-a"}))
    bob = TokenAuthenticator(entries).authenticate(Handshake(query={"token": "t-b"}))
    assert GrantsPolicy().rights(alice, "support-1") == ALL
    assert GrantsPolicy().rights(alice, "news") == READ
    assert GrantsPolicy().rights(bob, "news") == NONE  # no grants: nowhere, under `claims`
    assert OpenPolicy().rights(bob, "news") == ALL


@pytest.mark.parametrize("spec", ["alice:t|support-*", "alice:t|=read", "alice:t|x=admin"])
def test_a_malformed_token_grant_is_refused_without_the_token(spec: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_token_list(spec)
    assert "alice" in str(refused.value) and ":t" not in str(refused.value)


def test_rights_round_trip_as_text() -> None:
    for rights in (ALL, READ, WRITE, NONE):
        assert rights_from_text(rights_text(rights)) == rights


def test_policies_by_name_and_by_factory() -> None:
    assert isinstance(build_room_policy("open", None), OpenPolicy)
    assert isinstance(build_room_policy("claims", None), GrantsPolicy)
    custom = build_room_policy("tests.auth.example_backend:read_only_policy", None)
    principal = Principal(id="u", name="u", echo="u")
    assert custom.rights(principal, "any") == READ
    for spec in ("nope", "tests.auth.example_backend:missing", "tests.auth.example_backend:build"):
        with pytest.raises(AuthConfigError):
            build_room_policy(spec, None)
