"""What JWT verification is configured with (auth/jwt.py): values, handed in by the wiring,
and checked for what would be unsafe or could never verify a token."""

from __future__ import annotations

from dataclasses import dataclass

from auth.errors import AuthConfigError

# RFC 7518 3.2: an HMAC key at least as long as the hash output.
HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_SECRET_BYTES = HMAC_KEY_BYTES["HS256"]


@dataclass(frozen=True)
class JwtConfig:
    """The JWT settings, as the verifier uses them. The defaults here are the only ones:
    Settings (WSCHAT_JWT_*) takes them from here."""

    algorithms: tuple[str, ...]
    secret: str | None = None
    public_key: str | None = None
    jwks_url: str = ""
    audience: tuple[str, ...] = ()
    issuer: str = ""
    leeway: float = 0.0
    required_claims: tuple[str, ...] = ("exp", "iat", "sub")
    name_claim: str = "name"
    rooms_claim: str = "rooms"
    # Cognito access tokens carry `token_use` and `client_id` instead of `aud`.
    token_use: str = ""
    client_ids: tuple[str, ...] = ()
    max_token_bytes: int = 8192
    jwks_cache_seconds: float = 600.0
    jwks_refresh_cooldown: float = 30.0
    jwks_timeout: float = 2.0

    def validate(self) -> None:
        """Refuse configurations that would be unsafe or could never verify a token."""
        # Here, not at import: PyJWT and cryptography add over 100 ms to a Lambda cold start,
        # which token auth never needs, and Settings imports this module.
        from jwt.algorithms import get_default_algorithms

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
