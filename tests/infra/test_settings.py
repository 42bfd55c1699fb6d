"""Every setting is documented, and settings are read once, from the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra.settings import Settings, get_settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme_table(field: str) -> None:
    name = f"WSCHAT_{field.upper()}"
    assert re.search(rf"^\| `{name}` \|", README, re.MULTILINE), f"{name} missing from README"


def test_read_once_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("WSCHAT_RATE_BURST", "7")
    assert get_settings().rate_burst == 7
    monkeypatch.setenv("WSCHAT_RATE_BURST", "8")
    assert get_settings().rate_burst == 7  # cached: no work per call
    get_settings.cache_clear()
