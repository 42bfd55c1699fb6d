"""JWT verification with PyJWT: an explicit algorithm allow-list, required claims, and keys
from a shared secret, a PEM public key or a JWKS URL."""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from auth.credentials import find_credential
from auth.errors import AuthConfigError, AuthError
from auth.handshake import Handshake
from auth.jwks import JwksCache, JwksUnavailable
from auth.principal import Principal
from infra.settings import Settings, split_list

log = logging.getLogger(__name__)

# RFC 7518 3.2: an HMAC key at least as long as the hash output.
HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_SECRET_BYTES = HMAC_KEY_BYTES["HS256"]
MAX_NAME_LENGTH = 64


@dataclass(frozen=True)
class JwtConfig:
    algorithms: tuple[str, ...]
    secret: str | None = None
    public_key: str | None = None
    jwks_url: str = ""
    audience: tuple[str, ...] = ()
    issuer: str = ""
    leeway: float = 0.0
    required_claims: tuple[str, ...] = ("exp", "iat", "sub")
    name_claim: str = "name"
    token_use: str = ""
    client_ids: tuple[str, ...] = ()
    max_token_bytes: int = 8192
    jwks_cache_seconds: float = 600.0
    jwks_refresh_cooldown: float = 30.0
    jwks_timeout: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtConfig:
        config = cls(
            algorithms=tuple(split_list(settings.jwt_algorithms)),
            secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
            public_key=(
                settings.jwt_public_key.get_secret_value() if settings.jwt_public_key else None
            ),
            jwks_url=settings.jwt_jwks_url,
            audience=tuple(split_list(settings.jwt_audience)),
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
            required_claims=tuple(split_list(settings.jwt_required_claims)),
            name_claim=settings.jwt_name_claim,
            token_use=settings.jwt_token_use,
            client_ids=tuple(split_list(settings.jwt_client_ids)),
            max_token_bytes=settings.jwt_max_token_bytes,
            jwks_cache_seconds=settings.jwks_cache_seconds,
            jwks_refresh_cooldown=settings.jwks_refresh_cooldown,
            jwks_timeout=settings.jwks_timeout,
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse configurations that would be unsafe or could never verify a token."""
        if not self.algorithms:
            raise AuthConfigError("WSCHAT_JWT_ALGORITHMS is required, e.g. HS256 or RS256")
        known = set(get_default_algorithms()) - {"none"}
        unknown = [a for a in self.algorithms if a not in known]
        if unknown:
            raise AuthConfigError(
                f"WSCHAT_JWT_ALGORITHMS has unsupported {unknown}; choose from {sorted(known)}"
            )
        hmac = [a for a in self.algorithms if a in HMAC_KEY_BYTES]
        if hmac and len(hmac) != len(self.algorithms):
            # A verifier that accepts both lets a public key be used as an HMAC secret.
            raise AuthConfigError(
                "WSCHAT_JWT_ALGORITHMS mixes HMAC (HS*) with asymmetric algorithms; "
                "configure one kind only"
            )
        if hmac:
            if not self.secret:
                raise AuthConfigError("HS* algorithms need WSCHAT_JWT_SECRET")
            needed = max(HMAC_KEY_BYTES[a] for a in hmac)
            if len(self.secret.encode()) < needed:
                raise AuthConfigError(
                    f"WSCHAT_JWT_SECRET must be at least {needed} bytes for {', '.join(hmac)}"
                )
        elif bool(self.public_key) == bool(self.jwks_url):
            raise AuthConfigError(
                "asymmetric algorithms need exactly one of WSCHAT_JWT_PUBLIC_KEY "
                "or WSCHAT_JWT_JWKS_URL"
            )
        if self.public_key:
            try:
                get_default_algorithms()[self.algorithms[0]].prepare_key(self.public_key)
            except Exception:
                raise AuthConfigError(
                    f"WSCHAT_JWT_PUBLIC_KEY is not a PEM public key for {self.algorithms[0]}"
                ) from None


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

    def authenticate(self, handshake: Handshake) -> Principal:
        credential = find_credential(handshake)
        if credential is None:
            raise AuthError("no credential: send a bearer token", status=403)
        claims = self.verify(credential.value)
        subject = claims["sub"]
        expires = claims.get("exp")
        return Principal(
            id=subject,
            name=self._display_name(claims, subject),
            echo=subject,
            claims=claims,
            expires_at=float(expires) if isinstance(expires, int | float) else None,
        )

    def verify(self, token: str) -> dict[str, Any]:
        """Return the verified claims, or raise AuthError with a reason safe to log."""
        config = self.config
        if len(token.encode()) > config.max_token_bytes:
            raise AuthError(f"token larger than {config.max_token_bytes} bytes")
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
