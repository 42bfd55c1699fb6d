"""External tools the suite needs: found, or skipped locally and failed under CI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest


def require(tool: str, why: str) -> str:
    """The path of an external tool. Missing on a developer's machine, the test is skipped;
    missing under CI=true, it fails: .ci/run must install it."""
    import shutil

    path = shutil.which(tool)
    if path is None:
        _missing(f"{tool} is needed to {why}; .ci/run installs it")
    return path


def _missing(message: str) -> NoReturn:
    """Skip the test on a developer's machine; fail it under CI=true, where nothing may be
    skipped."""
    import os

    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def the_build_directory() -> Iterator[None]:
    """Hold build/ and node_modules/ alone. `make test` runs modules in parallel workers, and
    the modules that build the Lambda zip or run osls on it must take turns: one of them
    deletes the zip to prove it is rebuilt."""
    with _taking_turns("tests"):
        yield


@contextmanager
def port_8000() -> Iterator[None]:
    """Hold port 8000 alone: the seed's page and the JWT recipe name it, and a server started
    there while another module's holds it would find that one answering its readiness
    check, and the test would talk to the wrong server."""
    with _taking_turns("port-8000"):
        yield


@contextmanager
def _taking_turns(name: str) -> Iterator[None]:
    """An exclusive lock across the test workers, released with the process."""
    import fcntl
    from pathlib import Path

    build = Path(__file__).resolve().parents[2] / "build"
    build.mkdir(exist_ok=True)
    with (build / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def node_with_ws() -> str:
    """node, with the `ws` package that the JavaScript client's Node scripts import. `make
    test` installs it (`make node_modules`) before pytest starts: a fixture that ran `npm ci`
    itself would empty node_modules under a Node script running in another worker."""
    from pathlib import Path

    node = require("node", "run the JavaScript client")
    if not (Path(__file__).resolve().parents[2] / "node_modules" / "ws").is_dir():
        _missing("the ws package is missing: run `make node_modules` (make test does)")
    return node
