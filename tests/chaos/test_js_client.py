"""The JavaScript client (handler/web/wschat.mjs, in Node) under faults: tests/chaos/faults.py
says which."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.faults import SCENES, check, js_clients, stored
from tests.support.tools import node_with_ws


@pytest.fixture(scope="module")
def node() -> str:
    return node_with_ws()


@pytest.mark.timeout(180)  # the emulator stores and posts about 20 messages a second
@pytest.mark.parametrize("scene", list(SCENES))
async def test_the_js_client_loses_nothing_and_repeats_nothing(
    scene: str, tmp_path: Path, node: str
) -> None:
    room = f"chaos-{scene}"
    with SCENES[scene](tmp_path) as staged:
        runs = await js_clients(staged, room, node)
        check(runs, stored(staged.http, room), staged.loses_history)
