"""The Makefile passes on only the address a user asked for: otherwise wschat's own defaults
(WSCHAT_HOST, WSCHAT_PORT, then 127.0.0.1:8000, or 3001 for the emulator) hold."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.servers import ROOT


def planned(*args: str, **env: str) -> str:
    """The last command `make -n` would run (the wschat one; installs, if due, come first)."""
    # Not the variables of a make this runs under (`make test`), which would also make it
    # print "Entering directory" lines.
    ours = {"HOST", "PORT", "EMULATOR_PORT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return " ".join(result.stdout.strip().splitlines()[-1].split())


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["run"], {}, ".venv/bin/wschat serve"),
        (["run"], {"WSCHAT_PORT": "9100"}, ".venv/bin/wschat serve"),  # wschat reads it
        (
            ["run", "PORT=9000", "HOST=0.0.0.0"],
            {},
            ".venv/bin/wschat serve --host 0.0.0.0 --port 9000",
        ),
        (["emulate"], {}, ".venv/bin/wschat emulate"),
        (["emulate", "PORT=4000"], {}, ".venv/bin/wschat emulate --port 4000"),
        (["emulate", "EMULATOR_PORT=4001"], {}, ".venv/bin/wschat emulate --port 4001"),
    ],
)
def test_make_passes_only_the_address_asked_for(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    assert planned(*args, **env) == expected
