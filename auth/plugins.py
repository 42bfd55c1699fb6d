"""`package.module:factory`, the spelling of a backend or policy of one's own (WSCHAT_AUTH,
WSCHAT_ROOM_POLICY): loaded once, the same way, with errors that name the setting."""

from __future__ import annotations

import importlib
from typing import Any

from auth.errors import AuthConfigError


def load_factory(setting: str, spec: str, builtins: str) -> Any:
    """The callable `spec` names. Raises AuthConfigError naming `setting` and the `builtins`
    it could have been instead."""
    module_name, sep, factory_name = spec.partition(":")
    if not sep or not module_name or not factory_name:
        raise AuthConfigError(f"{setting}={spec!r}: use {builtins} or `package.module:factory`")
    try:
        return getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        raise AuthConfigError(f"{setting}={spec!r} cannot be loaded: {error}") from None
