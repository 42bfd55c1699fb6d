"""External tools the suite needs: found, or skipped locally and failed under CI."""

from __future__ import annotations

import pytest


def require(tool: str, why: str) -> str:
    """The path of an external tool. Missing on a developer's machine, the test is skipped;
    missing under CI=true, it fails: .ci/run must install it."""
    import os
    import shutil

    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is needed to {why}; .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
