"""The Python client (handler/client/) under faults: tests/chaos/faults.py says which."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.faults import SCENES, check, python_clients, stored


@pytest.mark.timeout(180)  # the emulator stores and posts about 20 messages a second
@pytest.mark.parametrize("scene", list(SCENES))
async def test_the_python_client_loses_nothing_and_repeats_nothing(
    scene: str, tmp_path: Path
) -> None:
    room = f"chaos-{scene}"
    with SCENES[scene](tmp_path) as staged:
        runs = await python_clients(staged, room)
        check(runs, stored(staged.http, room), staged.loses_history)
