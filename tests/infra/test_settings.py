"""Every setting is documented, and settings are read once, from the environment, checked."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import (
    Secret,
    Settings,
    SettingsError,
    env_names,
    get_settings,
    load_settings,
)

REFERENCE = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
FIELDS = sorted(dataclasses.fields(Settings), key=lambda f: f.name)


def _documented(name: str) -> str:
    """The default column of `name`'s row in docs/configuration.md."""
    row = re.search(rf"^\| [^|]*`{name}`[^|]*\|([^|]*)\|", REFERENCE, re.MULTILINE)
    assert row, f"{name} not in docs/configuration.md"
    return row.group(1).strip()


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_setting_is_documented_with_its_default(field: dataclasses.Field[object]) -> None:
    """Each variable has a row, and its default column says what Settings' default is: a
    literal, *(empty)* or blank for nothing, or a description in italics where the default
    is not a value (a key per process, the platform's)."""
    default = field.default if field.default is not dataclasses.MISSING else None
    for name in env_names(field):
        documented = _documented(name)
        literal = re.fullmatch(r"`([^`]*)`", documented)
        if literal is None:
            assert documented.startswith("*(") or documented == "", (name, documented)
            if documented in ("", "*(empty)*"):
                assert default in (None, ""), (name, default)
        elif isinstance(default, bool):
            assert literal.group(1) == str(default).lower(), (name, default)
        elif isinstance(default, int | float):
            assert float(literal.group(1)) == default, (name, default)
        else:
            assert literal.group(1) == default, (name, default)


def test_read_once_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("WSCHAT_RATE_BURST", "7")
    assert get_settings().rate_burst == 7
    monkeypatch.setenv("WSCHAT_RATE_BURST", "8")
    assert get_settings().rate_burst == 7  # cached: no work per call
    get_settings.cache_clear()


def test_defaults_without_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.port, settings.rate_per_second, settings.jwt_secret) == (8000, 20.0, None)


def test_values_are_converted_to_the_field_types() -> None:
    settings = load_settings(
        {
            "WSCHAT_PORT": "9000",
            "WSCHAT_RATE_PER_SECOND": "2.5",
            "WSCHAT_JWT_LEEWAY": "3",
            "WSCHAT_TABLE": "chat",
            "WSCHAT_UNKNOWN": "ignored",
            "OTHER_PORT": "1",
        }
    )
    assert settings.port == 9000
    assert settings.rate_per_second == 2.5
    assert settings.jwt_leeway == 3.0 and isinstance(settings.jwt_leeway, float)
    assert settings.table == "chat"


def test_names_in_any_case_the_upper_case_one_wins() -> None:
    assert load_settings({"wschat_rate_burst": "5"}).rate_burst == 5
    both = {"wschat_rate_burst": "5", "WSCHAT_RATE_BURST": "6", "Wschat_Rate_Burst": "4"}
    assert load_settings(both).rate_burst == 6


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[(word, True) for word in ("true", "TRUE", "1", "yes", "on", " True ")],
        *[(word, False) for word in ("false", "False", "0", "no", "off")],
    ],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert load_settings({"WSCHAT_WS_PER_MESSAGE_DEFLATE": raw}).ws_per_message_deflate is expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WSCHAT_PORT": "eighty"}, "WSCHAT_PORT must be an integer, got 'eighty'"),
        ({"WSCHAT_PORT": ""}, "WSCHAT_PORT must be an integer"),
        ({"WSCHAT_RATE_BURST": "1.5"}, "WSCHAT_RATE_BURST must be an integer"),
        ({"WSCHAT_JWT_LEEWAY": "soon"}, "WSCHAT_JWT_LEEWAY must be a number"),
        ({"WSCHAT_WS_PER_MESSAGE_DEFLATE": "maybe"}, "WSCHAT_WS_PER_MESSAGE_DEFLATE must be a"),
        ({"WSCHAT_PORT": "65536"}, "WSCHAT_PORT must be <= 65535, got 65536"),
        ({"WSCHAT_PORT": "-1"}, "WSCHAT_PORT must be >= 0, got -1"),
        ({"WSCHAT_RATE_PER_SECOND": "0"}, "WSCHAT_RATE_PER_SECOND must be > 0, got 0.0"),
        ({"WSCHAT_RATE_PER_SECOND": "nan"}, "WSCHAT_RATE_PER_SECOND must be > 0"),
        ({"WSCHAT_FANOUT_CONCURRENCY": "257"}, "WSCHAT_FANOUT_CONCURRENCY must be <= 256"),
        ({"WSCHAT_CONNECTION_TTL_SECONDS": "59"}, "WSCHAT_CONNECTION_TTL_SECONDS must be >= 60"),
        ({"WSCHAT_LOG_FORMAT": "xml"}, "WSCHAT_LOG_FORMAT must be one of text, json, got 'xml'"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(env)
    assert message in str(refused.value)
    assert isinstance(refused.value, ValueError)


def test_bounds_are_inclusive_where_they_say_so() -> None:
    settings = load_settings({"WSCHAT_PORT": "65535", "WSCHAT_WELCOME_HISTORY": "0"})
    assert (settings.port, settings.welcome_history) == (65535, 0)


def test_keyword_arguments_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="WSCHAT_RATE_BURST must be >= 1, got 0"):
        Settings(rate_burst=0)
    with pytest.raises(SettingsError, match="WSCHAT_PORT must be an integer"):
        Settings(port=True)
    with pytest.raises(SettingsError, match="WSCHAT_TABLE must be a string"):
        Settings(table=3)  # type: ignore[arg-type]
    assert Settings(rate_per_second=3).rate_per_second == 3.0


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_secrets_never_show() -> None:
    credential = "s3cr3t-value-that-must-not-leak"
    from_env = load_settings({"WSCHAT_JWT_SECRET": credential, "WSCHAT_JWT_PUBLIC_KEY": credential})
    from_kwargs = Settings(jwt_secret=credential)  # type: ignore[arg-type]
    for settings in (from_env, from_kwargs):
        assert isinstance(settings.jwt_secret, Secret)
        assert settings.jwt_secret.get_secret_value() == credential
        assert credential not in repr(settings) and credential not in str(settings)
        assert str(settings.jwt_secret) == "**********"
        assert "**********" in repr(settings.jwt_secret)
    assert from_env.jwt_public_key is not None
    assert from_env.jwt_public_key.get_secret_value() == credential


def test_an_empty_secret_counts_as_unset() -> None:
    settings = load_settings({"WSCHAT_JWT_SECRET": ""})
    assert settings.jwt_secret is not None and not settings.jwt_secret


def test_a_bad_setting_stops_the_cli_with_exit_code_2() -> None:
    env = {"PATH": "/usr/bin:/bin", "WSCHAT_PORT": "eighty"}
    for command in (["serve"], ["token", "--sub", "a"]):
        out = subprocess.run(
            [sys.executable, "-m", "handler.cli", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert "WSCHAT_PORT must be an integer, got 'eighty'" in out.stderr
        assert "Traceback" not in out.stderr
