from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Server, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `wschat serve` with default settings, shared by tests that do not change them."""
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def start_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a server with extra WSCHAT_ settings; stopped at the end of the test."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(**env: str) -> Server:
            return stack.enter_context(running_server(tmp_path, env))

        yield start
