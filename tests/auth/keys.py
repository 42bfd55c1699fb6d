"""Keys and tokens made independently of the code under test: cryptography + PyJWT's encoder."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "a-test-secret-that-is-long-enough-for-hs256!"
ISSUER = "https://issuer.example"
AUDIENCE = "wschat"


@dataclass(frozen=True)
class KeyPair:
    private: Any
    public_pem: str

    def jwk(self, kid: str, alg: str) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def _pem(private: Any) -> str:
    return str(
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@cache
def _rsa(seed: int) -> KeyPair:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(private, _pem(private))


def rsa_pair(seed: int = 0) -> KeyPair:
    """RSA key number `seed`: the same pair every time it is asked for."""
    return _rsa(seed)


@cache
def ec_pair() -> KeyPair:
    private = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(private, _pem(private))


@cache
def ed_pair() -> KeyPair:
    private = ed25519.Ed25519PrivateKey.generate()
    return KeyPair(private, _pem(private))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice-123",
        "name": "Alice",
        "iat": now,
        "exp": now + 300,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any] | None = None, secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload or claims(), secret, algorithm="HS256", headers=headers or None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: Any, signature: bytes = b"") -> str:
    """A token assembled by hand, for shapes no honest encoder produces."""
    parts = [json.dumps(header).encode(), json.dumps(payload).encode()]
    return ".".join([*(b64url(p) for p in parts), b64url(signature)])
