"""JWT verification with PyJWT: an explicit algorithm allow-list, required claims, and keys
from a shared secret, a PEM public key or a JWKS URL."""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import unicodedata
from typing import Any

import jwt

from auth.credentials import find_credential
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.jwks import JwksCache, JwksUnavailable
from auth.jwt_config import JwtConfig
from auth.principal import Principal
from auth.rooms import Grants

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 64
# RFC 7519 2: these claims are NumericDates. PyJWT also accepts a numeric string (it calls
# int()), which would then be read as "no expiry" further on: refuse all but numbers.
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
# 9999-12-31T23:59:59Z: a later time is no date a store or clock here can hold (DynamoDB
# refuses 1e308; an int of 400 digits is no float).
MAX_NUMERIC_DATE = 253_402_300_799
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class JwtAuthenticator:
    """Verifies a bearer JWT from any of the credential sources."""

    accepts_cookies = True

    def __init__(self, config: JwtConfig) -> None:
        config.validate()
        self.config = config
        self._jwks = (
            JwksCache(
                config.jwks_url,
                config.jwks_cache_seconds,
                config.jwks_refresh_cooldown,
                config.jwks_timeout,
            )
            if config.jwks_url
            else None
        )
        # A key set is fetched when a token names a key not yet cached: that waits on the
        # network. With a secret or a PEM key, verifying is CPU alone.
        self.may_block = self._jwks is not None

    def authenticate(self, handshake: Handshake) -> Principal:
        credential = find_credential(handshake)
        if credential is None:
            raise AuthError("no credential: send a bearer token", status=403)
        claims = self.verify(credential.value)
        subject = claims["sub"]
        return Principal(
            id=subject,
            name=self._display_name(claims, subject),
            echo=subject,
            expires_at=float(claims["exp"]) if "exp" in claims else None,
            grants=self._grants(claims),
            claims=claims,
        )

    def _grants(self, claims: dict[str, Any]) -> Grants | None:
        if self.config.rooms_claim not in claims:
            return None
        try:
            return Grants.from_claim(claims[self.config.rooms_claim])
        except ValueError as error:
            raise AuthError(f"`{self.config.rooms_claim}` claim {error}") from None

    def verify(self, token: str) -> dict[str, Any]:
        """Return the verified claims, or raise AuthError with a reason safe to log."""
        config = self.config
        if len(token.encode(errors="replace")) > config.max_token_bytes:
            raise AuthError(f"token larger than {config.max_token_bytes} bytes")
        _check_spelling(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise AuthError(f"malformed token: {error}") from None
        except Exception:
            raise AuthError("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in config.algorithms:
            raise AuthError("token algorithm not allowed")
        if "crit" in header:
            # RFC 7515 4.1.11: we understand no extensions, so any `crit` is refused, whatever
            # the PyJWT version does.
            raise AuthError("token has unsupported critical header parameters")
        key = self._key(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(config.algorithms),
                audience=list(config.audience) or None,
                issuer=config.issuer or None,
                leeway=config.leeway,
                options={"require": list(config.required_claims), "verify_sub": True},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError as error:
            raise AuthError(f"invalid token: {error}") from None
        except Exception:  # e.g. RecursionError from a hostile payload
            raise AuthError("invalid token") from None
        _check_numeric_dates(claims)
        self._check_cognito(claims)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("token has no subject")
        return claims

    def _key(self, header: dict[str, Any]) -> Any:
        if self._jwks is None:
            return self.config.secret or self.config.public_key
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed token: kid must be a string")
        try:
            return self._jwks.key(kid).key
        except JwksUnavailable as error:
            raise AuthError(str(error)) from None

    def _check_cognito(self, claims: dict[str, Any]) -> None:
        config = self.config
        if config.token_use and claims.get("token_use") != config.token_use:
            raise AuthError(f"token_use must be {config.token_use}")
        if config.client_ids:
            # Access tokens carry `client_id`; ID tokens carry it as `aud`.
            client = claims.get("client_id", claims.get("aud"))
            if client not in config.client_ids:
                raise AuthError("token was issued to another client")

    def _display_name(self, claims: dict[str, Any], subject: str) -> str:
        name = claims.get(self.config.name_claim)
        if not isinstance(name, str):
            name = subject
        printable = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
        return printable.strip()[:MAX_NAME_LENGTH] or subject[:MAX_NAME_LENGTH]


def _check_spelling(token: str) -> None:
    """One token, one spelling: three segments of unpadded base64url whose unused trailing
    bits are zero. Python's decoder would also take padding, stray characters and non-zero
    trailing bits, so one signature could be written several ways."""
    segments = token.split(".")
    if len(segments) != 3:
        raise AuthError("malformed token: a JWT has three segments")
    for segment in segments:
        if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
            raise AuthError("malformed token: segments must be unpadded base64url")
        try:
            decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except (binascii.Error, ValueError):
            raise AuthError("malformed token: segments must be unpadded base64url") from None
        if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != segment:
            raise AuthError("malformed token: a segment is not canonical base64url")


def _check_numeric_dates(claims: dict[str, Any]) -> None:
    for name in NUMERIC_DATE_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AuthError(f"`{name}` must be a number of seconds (a NumericDate)")
        if not (isinstance(value, int) or math.isfinite(value)):
            raise AuthError(f"`{name}` must be a finite number")
        if abs(value) > MAX_NUMERIC_DATE:  # an int too large for a float, 1e308, ...
            raise AuthError(f"`{name}` must be a time before the year 10000")
