"""Runtime configuration: every knob is a `WSCHAT_*` environment variable, read once.

A plain dataclass and a small loader rather than pydantic-settings: importing pydantic costs
the Lambda handlers about a quarter of a second on every cold start, for a few dozen lookups.
"""

# No `from __future__ import annotations` here: the loader reads each field's type object.

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from auth.factory import AuthConfig
from auth.jwt_config import JwtConfig
from handler.chat.core import Limits

_CORE = Limits()  # the core's defaults
_JWT = JwtConfig(algorithms=())  # the JWT verifier's

ENV_PREFIX = "WSCHAT_"

_Number = TypeVar("_Number", int, float)


class SettingsError(ValueError):
    """A setting with a value of the wrong type or out of its bounds. The message names the
    environment variable and never shows a secret's value."""


class Secret:
    """A credential that never shows in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __len__(self) -> int:  # an empty secret is falsy, as "not configured"
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _platform(default: Any, *names: str) -> Any:
    """A field read from variables the platform sets (not `WSCHAT_*`): the first present."""
    return field(default=default, metadata={"env": names})


def _one_of(default: str, *others: str) -> str:
    """A text field that takes one of a few values, the first being the default."""
    result: str = field(default=default, metadata={"choices": (default, *others)})
    return result


def _bounded(
    default: _Number,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> _Number:
    """A numeric field's default and its inclusive (`ge`, `le`) or strict (`gt`) bounds."""
    bounds = {
        name: bound for name, bound in (("ge", ge), ("gt", gt), ("le", le)) if bound is not None
    }
    result: _Number = field(default=default, metadata=bounds)
    return result


@dataclass(frozen=True)
class Settings:
    """The service's settings. docs/configuration.md lists each one with its default, and
    tests/infra/test_settings.py holds the two together.

    Keyword arguments are checked like environment values: `Settings(port=-1)` raises
    `SettingsError`, and a plain `str` for a secret is wrapped in `Secret`."""

    host: str = "127.0.0.1"
    port: int = _bounded(8000, ge=0, le=65535)
    log_level: str = "info"
    log_format: str = _one_of("text", "json")

    # Authentication: `token` (the seed's check), `jwt`, or `package.module:factory`.
    auth: str = "token"
    # Optional allow-list for token auth: `name:token,name:token`.
    tokens: str = ""
    # Exact Origin values a browser handshake may come from (comma list); empty: any.
    allowed_origins: str = ""
    # Who may read and write which room: `open`, `claims`, or `package.module:factory`.
    room_policy: str = "open"

    # JWT verification (WSCHAT_AUTH=jwt).
    jwt_secret: Secret | None = None
    jwt_public_key: Secret | None = None
    jwt_jwks_url: str = _JWT.jwks_url
    jwt_algorithms: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = _JWT.issuer
    jwt_leeway: float = _bounded(_JWT.leeway, ge=0)
    jwt_required_claims: str = ",".join(_JWT.required_claims)
    jwt_name_claim: str = _JWT.name_claim
    jwt_rooms_claim: str = _JWT.rooms_claim
    # Cognito access tokens carry `token_use` and `client_id` instead of `aud`.
    jwt_token_use: str = _JWT.token_use
    jwt_client_ids: str = ""
    jwt_max_token_bytes: int = _bounded(_JWT.max_token_bytes, ge=256)
    jwks_cache_seconds: float = _bounded(_JWT.jwks_cache_seconds, gt=0)
    jwks_refresh_cooldown: float = _bounded(_JWT.jwks_refresh_cooldown, ge=0)
    jwks_timeout: float = _bounded(_JWT.jwks_timeout, gt=0)

    # The chat core's limits: their defaults are the core's (handler/chat/core.py, Limits).
    max_message_bytes: int = _bounded(_CORE.max_message_bytes, ge=1)
    max_room_length: int = _bounded(_CORE.max_room_length, ge=1)
    rate_per_second: float = _bounded(_CORE.rate_per_second, gt=0)
    rate_burst: int = _bounded(_CORE.rate_burst, ge=1)
    rate_abuse_strikes: int = _bounded(_CORE.rate_abuse_strikes, ge=1)
    welcome_history: int = _bounded(_CORE.welcome_history, ge=0)
    presence_interval: float = _bounded(_CORE.presence_interval, ge=0, le=10)
    # Bounded so that a batch's frame stays far below 128 KiB (names are short).
    presence_occupancy: int = _bounded(_CORE.presence_occupancy, ge=0, le=1000)
    send_queue_frames: int = _bounded(256, ge=1)

    # `wschat serve` on Redis (workers and hosts sharing rooms); empty: in memory.
    redis_url: str = ""
    history_size: int = _bounded(1000, ge=1)
    # `wschat serve`: all rooms' history together, in bytes; the largest room pays first.
    history_max_bytes: int = _bounded(64 * 1024 * 1024, ge=1024 * 1024)
    history_ttl_seconds: int = _bounded(7 * 86400, ge=60)

    # Serverless transport (API Gateway + Lambda + DynamoDB).
    table: str = "wschat"
    dynamodb_endpoint: str = ""
    sqs_endpoint: str = ""
    apigw_endpoint: str = ""
    offline_ws_port: int = 3001
    offline_lambda_port: int = 3002
    fanout_concurrency: int = _bounded(32, ge=1, le=256)
    # Big rooms (infra/aws/fanout.py): above `fanout_inline_max` members, a message goes out as
    # jobs of `fanout_chunk` members on this SQS queue; empty: always inline. The fanout
    # functions that run at once, `fanout_workers` (the queue's event source mapping's maximum
    # concurrency, serverless.yml sets both), share `fanout_rate` posts/s.
    fanout_queue_url: str = ""
    fanout_inline_max: int = _bounded(100, ge=1)
    fanout_chunk: int = _bounded(500, ge=1, le=10_000)
    fanout_rate: float = _bounded(1000.0, gt=0)
    fanout_workers: int = _bounded(4, ge=1)
    connection_ttl_seconds: int = _bounded(2 * 3600 + 300, ge=60)
    # Seals a text-dialect connection's echo (under token auth, the credential) in its
    # DynamoDB record; every container must share it. None: a key of this process's own.
    echo_key: Secret | None = None
    room_page_size: int = _bounded(0, ge=0)
    welcome_function: str = ""
    lambda_endpoint: str = ""
    socket_url: str = ""

    # Bounds on requests in progress, against clients that open connections and stall.
    handshake_timeout: float = _bounded(10.0, gt=0)
    max_pending_handshakes: int = _bounded(1024, ge=1)
    # On SIGTERM, `wschat serve` gives its sockets this long to take what is queued for them
    # and the 1012 close; then it closes what is left and exits.
    shutdown_timeout: float = _bounded(10.0, gt=0)

    # Set by the platform: Lambda's region, and `serverless offline`.
    aws_region: str = _platform("", "AWS_REGION", "AWS_DEFAULT_REGION")
    is_offline: bool = _platform(False, "IS_OFFLINE")

    ws_per_message_deflate: bool = False
    ws_ping_interval: float = _bounded(20.0, gt=0)
    ws_ping_timeout: float = _bounded(20.0, gt=0)

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = _convert(spec, getattr(self, spec.name))
            _check_bounds(spec, value)
            object.__setattr__(self, spec.name, value)

    def auth_config(self) -> AuthConfig:
        """What builds the authenticator (auth/factory.py), as configured."""
        return AuthConfig(
            kind=self.auth,
            tokens=self.tokens,
            allowed_origins=tuple(split_list(self.allowed_origins)),
            jwt=self.jwt_config() if self.auth == "jwt" else None,
            settings=self,
        )

    def jwt_config(self) -> JwtConfig:
        """The JWT verifier's configuration (WSCHAT_AUTH=jwt), checked: raises AuthConfigError
        with the setting to change."""
        config = JwtConfig(
            algorithms=tuple(split_list(self.jwt_algorithms)),
            secret=self.jwt_secret.get_secret_value() if self.jwt_secret else None,
            public_key=self.jwt_public_key.get_secret_value() if self.jwt_public_key else None,
            jwks_url=self.jwt_jwks_url,
            audience=tuple(split_list(self.jwt_audience)),
            issuer=self.jwt_issuer,
            leeway=self.jwt_leeway,
            required_claims=tuple(split_list(self.jwt_required_claims)),
            name_claim=self.jwt_name_claim,
            rooms_claim=self.jwt_rooms_claim,
            token_use=self.jwt_token_use,
            client_ids=tuple(split_list(self.jwt_client_ids)),
            max_token_bytes=self.jwt_max_token_bytes,
            jwks_cache_seconds=self.jwks_cache_seconds,
            jwks_refresh_cooldown=self.jwks_refresh_cooldown,
            jwks_timeout=self.jwks_timeout,
        )
        config.validate()
        return config

    def limits(self) -> Limits:
        """The chat core's limits, as configured."""
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_room_length=self.max_room_length,
            rate_per_second=self.rate_per_second,
            rate_burst=self.rate_burst,
            rate_abuse_strikes=self.rate_abuse_strikes,
            welcome_history=self.welcome_history,
            presence_interval=self.presence_interval,
            presence_occupancy=self.presence_occupancy,
        )


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def env_names(spec: dataclasses.Field[Any]) -> tuple[str, ...]:
    """The environment variables a setting is read from."""
    names: tuple[str, ...] = spec.metadata.get("env", (ENV_PREFIX + spec.name.upper(),))
    return names


def _env_name(spec: dataclasses.Field[Any]) -> str:
    return env_names(spec)[0]


def _convert(spec: dataclasses.Field[Any], value: object) -> object:
    """`value` (from the environment, a string; or a keyword argument) as the field's type."""
    kind = spec.type
    name = _env_name(spec)
    if kind == Secret | None:
        if value is None or isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
        raise SettingsError(f"{name} must be a string")  # never echo a credential
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise SettingsError(
            f"{name} must be a boolean (true/false, 1/0, yes/no, on/off), got {value!r}"
        )
    if kind is int or kind is float:
        # An int where a float belongs is taken; a float where an int belongs is not.
        taken = int if kind is int else int | float
        if isinstance(value, taken) and not isinstance(value, bool):
            return kind(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return kind(value)
        noun = "an integer" if kind is int else "a number"
        raise SettingsError(f"{name} must be {noun}, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{name} must be a string, got {value!r}")
    raise TypeError(f"no conversion for the type of setting {spec.name}: {kind!r}")


def _check_bounds(spec: dataclasses.Field[Any], value: Any) -> None:
    bounds = spec.metadata
    if "choices" in bounds and value not in bounds["choices"]:
        choices = ", ".join(bounds["choices"])
        raise SettingsError(f"{_env_name(spec)} must be one of {choices}, got {value!r}")
    # `not (value >= bound)` rather than `value < bound`, so that NaN is refused too.
    if "ge" in bounds and not value >= bounds["ge"]:
        raise SettingsError(f"{_env_name(spec)} must be >= {bounds['ge']}, got {value!r}")
    if "gt" in bounds and not value > bounds["gt"]:
        raise SettingsError(f"{_env_name(spec)} must be > {bounds['gt']}, got {value!r}")
    if "le" in bounds and not value <= bounds["le"]:
        raise SettingsError(f"{_env_name(spec)} must be <= {bounds['le']}, got {value!r}")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `WSCHAT_*` variables (names in any case; the upper-case one wins),
    defaults for the rest. Unknown `WSCHAT_*` names are ignored."""
    environ = os.environ if environ is None else environ
    fields = dataclasses.fields(Settings)
    names = {spec.name for spec in fields if "env" not in spec.metadata}
    values: dict[str, str] = {}
    for key, value in environ.items():
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        name = upper[len(ENV_PREFIX) :].lower()
        if name in names and (key == upper or name not in values):
            values[name] = value
    for spec in fields:  # the platform's variables, by their exact names
        present = [environ[n] for n in spec.metadata.get("env", ()) if environ.get(n)]
        if present:
            values[spec.name] = present[0]
    return Settings(**values)  # type: ignore[arg-type]  # strings, converted in __post_init__


def split_list(value: str) -> list[str]:
    """A comma-separated setting as a list, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed from the environment on first use."""
    return load_settings()
