"""Runtime configuration: every knob is a `WSCHAT_*` environment variable, read once."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """The service's settings. The README's configuration table lists each one."""

    model_config = SettingsConfigDict(env_prefix="WSCHAT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "info"

    # Authentication: `token` (the seed's check), `jwt`, or `package.module:factory`.
    auth: str = "token"
    # Optional allow-list for token auth: `name:token,name:token`.
    tokens: str = ""
    # Exact Origin values a browser handshake may come from (comma list); empty: any.
    allowed_origins: str = ""

    # JWT verification (WSCHAT_AUTH=jwt).
    jwt_secret: SecretStr | None = None
    jwt_public_key: SecretStr | None = None
    jwt_jwks_url: str = ""
    jwt_algorithms: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway: float = Field(default=0.0, ge=0)
    jwt_required_claims: str = "exp,iat,sub"
    jwt_name_claim: str = "name"
    # Cognito access tokens carry `token_use` and `client_id` instead of `aud`.
    jwt_token_use: str = ""
    jwt_client_ids: str = ""
    jwt_max_token_bytes: int = Field(default=8192, ge=256)
    jwks_cache_seconds: float = Field(default=600.0, gt=0)
    jwks_refresh_cooldown: float = Field(default=30.0, ge=0)
    jwks_timeout: float = Field(default=2.0, gt=0)

    # Limits. 32 KiB is API Gateway's WebSocket frame size, so both transports agree.
    max_message_bytes: int = Field(default=32 * 1024, ge=1)
    max_room_length: int = Field(default=128, ge=1)
    rate_per_second: float = Field(default=20.0, gt=0)
    rate_burst: int = Field(default=40, ge=1)
    # Net rate-limited frames (each accepted frame takes one back) before a 1008 close.
    rate_abuse_strikes: int = Field(default=20, ge=1)
    send_queue_frames: int = Field(default=256, ge=1)

    history_size: int = Field(default=1000, ge=1)
    welcome_history: int = Field(default=20, ge=0)

    # Serverless transport (API Gateway + Lambda + DynamoDB).
    table: str = "wschat"
    dynamodb_endpoint: str = ""
    apigw_endpoint: str = ""
    offline_ws_port: int = 3001
    offline_lambda_port: int = 3002
    fanout_concurrency: int = Field(default=32, ge=1, le=256)
    connection_ttl_seconds: int = Field(default=2 * 3600 + 300, ge=60)
    history_ttl_seconds: int = Field(default=7 * 86400, ge=60)
    room_page_size: int = Field(default=0, ge=0)
    welcome_function: str = ""
    lambda_endpoint: str = ""
    socket_url: str = ""

    ws_per_message_deflate: bool = False
    ws_ping_interval: float = Field(default=20.0, gt=0)
    ws_ping_timeout: float = Field(default=20.0, gt=0)


def split_list(value: str) -> list[str]:
    """A comma-separated setting as a list, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed from the environment on first use."""
    return Settings()
