"""Runtime configuration: every knob is a `WSCHAT_*` environment variable, read once."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """The service's settings. The README's configuration table lists each one."""

    model_config = SettingsConfigDict(env_prefix="WSCHAT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "info"

    # Authentication: `token` (the seed's cookie-or-token check).
    auth: str = "token"
    # Optional allow-list for token auth: `name:token,name:token`.
    tokens: str = ""

    # Limits. 32 KiB is API Gateway's WebSocket frame size, so both transports agree.
    max_message_bytes: int = Field(default=32 * 1024, ge=1)
    max_room_length: int = Field(default=128, ge=1)
    rate_per_second: float = Field(default=20.0, gt=0)
    rate_burst: int = Field(default=40, ge=1)
    # Consecutive rate-limited frames before the connection is closed with 1008.
    rate_abuse_strikes: int = Field(default=20, ge=1)
    send_queue_frames: int = Field(default=256, ge=1)

    history_size: int = Field(default=1000, ge=1)
    welcome_history: int = Field(default=20, ge=0)

    ws_per_message_deflate: bool = False
    ws_ping_interval: float = Field(default=20.0, gt=0)
    ws_ping_timeout: float = Field(default=20.0, gt=0)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed from the environment on first use."""
    return Settings()
