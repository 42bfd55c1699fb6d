"""The JWT security matrix: each case is a token (or handshake) and its asserted outcome."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jwt
import pytest

from auth.errors import AuthError
from auth.handshake import Handshake
from auth.jwt import JwtAuthenticator
from auth.jwt_config import JwtConfig
from auth.rooms import Right
from tests.auth.keys import (
    AUDIENCE,
    ISSUER,
    SECRET,
    b64url,
    claims,
    ec_pair,
    ed_pair,
    hs256,
    rsa_pair,
    unsigned,
)

HS = JwtConfig(algorithms=("HS256",), secret=SECRET, audience=(AUDIENCE,), issuer=ISSUER)


def rs_config() -> JwtConfig:
    return JwtConfig(
        algorithms=("RS256",), public_key=rsa_pair().public_pem, audience=(AUDIENCE,), issuer=ISSUER
    )


def bearer(token: str) -> Handshake:
    return Handshake(query={"token": token})


def verify(config: JwtConfig, token: str) -> str:
    """The subject on success, or 'rejected: <reason>'."""
    try:
        return JwtAuthenticator(config).authenticate(bearer(token)).id
    except AuthError as error:
        assert error.status == 401
        return f"rejected: {error.reason}"


def hmac_with_public_key() -> str:
    # The classic confusion attack: HS256 keyed with the server's RSA public key.
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        b64url(json.dumps(part).encode()) for part in (header, claims())
    ).encode()
    key = rsa_pair().public_pem.encode()
    return (
        signing_input.decode() + "." + b64url(hmac.new(key, signing_input, hashlib.sha256).digest())
    )


def signed_raw(payload: bytes, **headers: Any) -> str:
    """HS256 over arbitrary payload bytes: shapes PyJWT's claim encoder refuses to make."""
    return jwt.api_jws.encode(payload, SECRET, algorithm="HS256", headers=headers or None)


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def respelled(token: str, segment: int, change: Callable[[str], str]) -> str:
    parts = token.split(".")
    parts[segment] = change(parts[segment])
    return ".".join(parts)


def same_bytes_other_spelling(segment: str) -> str:
    """The segment with its unused trailing bits set: it decodes to the same bytes."""
    last = ALPHABET.index(segment[-1])
    return segment[:-1] + ALPHABET[last | (1 if len(segment) % 4 == 3 else 0b1111)]


def raw_claims(**replace_: str) -> bytes:
    """The claims as JSON text, with some values replaced by raw JSON (NaN, 1e400, ...)."""
    text = json.dumps({**claims(), **dict.fromkeys(replace_, "@")})
    for name, raw in replace_.items():
        text = text.replace(f'"{name}": "@"', f'"{name}": {raw}')
    return text.encode()


def with_crit() -> str:
    return hs256(claims(), crit=["exp-ext"])


def now() -> int:
    return int(time.time())


OK = "alice-123"

CASES: list[tuple[str, Callable[[], JwtConfig], Callable[[], str], str]] = [
    ("valid HS256", lambda: HS, lambda: hs256(), OK),
    ("alg none", lambda: HS, lambda: unsigned({"alg": "none"}, claims()), "not allowed"),
    (
        "alg None spelled oddly",
        lambda: HS,
        lambda: unsigned({"alg": "NONE"}, claims()),
        "not allowed",
    ),
    ("HS256 keyed with RSA public key", rs_config, hmac_with_public_key, "not allowed"),
    (
        "HS512 not on allow-list",
        lambda: HS,
        lambda: jwt.encode(claims(), SECRET * 2, algorithm="HS512"),
        "not allowed",
    ),
    ("wrong secret", lambda: HS, lambda: hs256(secret="x" * 40), "Signature verification failed"),
    ("expired", lambda: HS, lambda: hs256(claims(exp=now() - 5)), "token expired"),
    (
        "expired inside leeway",
        lambda: replace(HS, leeway=30),
        lambda: hs256(claims(exp=now() - 20)),
        OK,
    ),
    (
        "expired past leeway",
        lambda: replace(HS, leeway=30),
        lambda: hs256(claims(exp=now() - 40)),
        "token expired",
    ),
    ("missing exp", lambda: HS, lambda: hs256(claims(exp=None)), '"exp"'),
    ("missing iat", lambda: HS, lambda: hs256(claims(iat=None)), '"iat"'),
    ("missing sub", lambda: HS, lambda: hs256(claims(sub=None)), '"sub"'),
    ("sub not a string", lambda: HS, lambda: hs256(claims(sub=123)), "rejected"),
    ("nbf in the future", lambda: HS, lambda: hs256(claims(nbf=now() + 600)), "not yet valid"),
    ("iat in the future", lambda: HS, lambda: hs256(claims(iat=now() + 600)), "not yet valid"),
    ("wrong issuer", lambda: HS, lambda: hs256(claims(iss="https://evil.example")), "issuer"),
    ("issuer superstring", lambda: HS, lambda: hs256(claims(iss=ISSUER + ".evil")), "issuer"),
    ("issuer substring", lambda: HS, lambda: hs256(claims(iss=ISSUER[:-1])), "issuer"),
    (
        "issuer as a list",
        lambda: HS,
        lambda: signed_raw(json.dumps(claims(iss=[ISSUER])).encode()),
        "issuer",
    ),
    ("missing audience", lambda: HS, lambda: hs256(claims(aud=None)), '"aud"'),
    ("wrong audience", lambda: HS, lambda: hs256(claims(aud="other")), "Audience"),
    ("audience list with ours", lambda: HS, lambda: hs256(claims(aud=["x", AUDIENCE])), OK),
    ("audience list without ours", lambda: HS, lambda: hs256(claims(aud=["x", "y"])), "Audience"),
    ("one segment", lambda: HS, lambda: "abc", "malformed"),
    ("two segments", lambda: HS, lambda: "abc.def", "malformed"),
    ("bad base64", lambda: HS, lambda: "!!!.@@@.###", "malformed"),
    ("empty token", lambda: HS, lambda: "", "malformed"),
    ("100 KB token", lambda: HS, lambda: hs256(claims(pad="x" * 100_000)), "larger than"),
    (
        "deeply nested payload",
        lambda: replace(HS, max_token_bytes=1 << 20),
        lambda: signed_raw(b'{"sub": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "invalid token",
    ),
    ("unknown crit header", lambda: HS, with_crit, "critical"),
    (
        "exp as a numeric string",
        lambda: HS,
        lambda: hs256(claims(exp=str(now() + 600))),
        "NumericDate",
    ),
    ("nbf as a string", lambda: HS, lambda: hs256(claims(nbf=str(now() - 5))), "NumericDate"),
    ("iat as a string", lambda: HS, lambda: hs256(claims(iat=str(now()))), "NumericDate"),
    ("exp as a boolean", lambda: HS, lambda: hs256(claims(exp=True)), "rejected"),
    ("exp NaN", lambda: HS, lambda: signed_raw(raw_claims(exp="NaN")), "rejected"),
    ("exp Infinity", lambda: HS, lambda: signed_raw(raw_claims(exp="1e400")), "rejected"),
    ("exp as a float", lambda: HS, lambda: hs256(claims(exp=now() + 600.5)), OK),
    (
        "signature padded with =",
        lambda: HS,
        lambda: respelled(hs256(), 2, lambda s: s + "="),
        "malformed",
    ),
    (
        "signature with non-zero trailing bits",
        lambda: HS,
        lambda: respelled(hs256(), 2, same_bytes_other_spelling),
        "canonical",
    ),
    (
        "payload padded with ==",
        lambda: HS,
        lambda: respelled(hs256(), 1, lambda s: s + "=" * (-len(s) % 4 or 4)),
        "malformed",
    ),
    (
        "signature in standard base64",
        lambda: HS,
        lambda: respelled(hs256(), 2, lambda s: s.replace("-", "+").replace("_", "/") + "+/"),
        "malformed",
    ),
    ("whitespace in a segment", lambda: HS, lambda: respelled(hs256(), 1, " ".join), "malformed"),
    ("four segments", lambda: HS, lambda: hs256() + ".e30", "malformed"),
    ("sub with a lone surrogate", lambda: HS, lambda: hs256(claims(sub="x\ud800y")), "Unicode"),
    ("rooms claim, valid", lambda: HS, lambda: hs256(claims(rooms={"a-*": ["read"]})), OK),
    ("rooms claim as a list", lambda: HS, lambda: hs256(claims(rooms=["a-*"])), "`rooms` claim"),
    (
        "rooms claim with an unknown right",
        lambda: HS,
        lambda: hs256(claims(rooms={"a-*": ["admin"]})),
        "`rooms` claim",
    ),
    ("header not JSON", lambda: HS, lambda: b64url(b"{nope") + ".e30.c2ln", "malformed"),
    ("valid RS256", rs_config, lambda: jwt.encode(claims(), rsa_pair().private, "RS256"), OK),
    (
        "RS256 by another key",
        rs_config,
        lambda: jwt.encode(claims(), rsa_pair(1).private, "RS256"),
        "Signature verification failed",
    ),
    (
        "valid ES256",
        lambda: replace(rs_config(), algorithms=("ES256",), public_key=ec_pair().public_pem),
        lambda: jwt.encode(claims(), ec_pair().private, "ES256"),
        OK,
    ),
    (
        "valid EdDSA",
        lambda: replace(rs_config(), algorithms=("EdDSA",), public_key=ed_pair().public_pem),
        lambda: jwt.encode(claims(), ed_pair().private, "EdDSA"),
        OK,
    ),
    (
        "Cognito token_use mismatch",
        lambda: replace(HS, token_use="access"),
        lambda: hs256(claims(token_use="id")),
        "token_use",
    ),
    (
        "Cognito client_id mismatch",
        lambda: replace(HS, audience=(), client_ids=("app1",)),
        lambda: hs256(claims(aud=None, client_id="app2", token_use="access")),
        "another client",
    ),
    (
        "Cognito access token",
        lambda: replace(HS, audience=(), token_use="access", client_ids=("app1",)),
        lambda: hs256(claims(aud=None, client_id="app1", token_use="access")),
        OK,
    ),
]


@pytest.mark.parametrize(
    ("config", "token", "outcome"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_matrix(config: Callable[[], JwtConfig], token: Callable[[], str], outcome: str) -> None:
    result = verify(config(), token())
    if outcome == OK:
        assert result == OK
    else:
        assert result.startswith("rejected") and outcome.lower() in result.lower(), result


def test_no_credential_is_refused_with_403() -> None:
    with pytest.raises(AuthError) as refused:
        JwtAuthenticator(HS).authenticate(Handshake())
    assert refused.value.status == 403


@pytest.mark.parametrize(
    "handshake",
    [
        Handshake(headers={"authorization": "Bearer " + "{t}"}),
        Handshake(subprotocols=("wschat.json", "bearer", "{t}")),
        Handshake(cookies={"session": "{t}"}),
    ],
    ids=["authorization header", "subprotocol pair", "session cookie"],
)
def test_every_credential_source(handshake: Handshake) -> None:
    token = hs256()
    fill = {k: v.replace("{t}", token) for k, v in handshake.headers.items()}
    view = Handshake(
        headers=fill,
        cookies={k: v.replace("{t}", token) for k, v in handshake.cookies.items()},
        subprotocols=tuple(p.replace("{t}", token) for p in handshake.subprotocols),
    )
    principal = JwtAuthenticator(HS).authenticate(view)
    assert (principal.id, principal.name, principal.echo) == (OK, "Alice", OK)
    assert principal.expires_at is not None and principal.expires_at > time.time()


def test_header_wins_over_a_bad_query_token() -> None:
    view = Handshake(headers={"authorization": f"Bearer {hs256()}"}, query={"token": "junk"})
    assert JwtAuthenticator(HS).authenticate(view).id == OK


def test_name_claim_is_cleaned_of_control_characters() -> None:
    token = hs256(claims(name="Mallory\u202e\n\x00" + "x" * 100))
    principal = JwtAuthenticator(HS).authenticate(bearer(token))
    assert principal.name == "Mallory" + "x" * 57
    assert len(principal.name) == 64


def test_reasons_never_contain_the_token() -> None:
    for _, config, token, _ in CASES:
        value = token()
        result = verify(config(), value)
        if value and result != OK:
            assert value not in result


def test_the_rooms_claim_becomes_the_principals_grants() -> None:
    token = hs256(claims(rooms={"support-*": ["read", "write"], "news": ["read"]}))
    principal = JwtAuthenticator(HS).authenticate(bearer(token))
    assert principal.grants is not None
    assert principal.grants.rights("support-7") == {Right.READ, Right.WRITE}
    assert principal.grants.rights("news") == {Right.READ}
    assert JwtAuthenticator(HS).authenticate(bearer(hs256())).grants is None
