"""The docs name the tests that prove them: every test they name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


@pytest.mark.parametrize("doc", ["docs/security.md", "docs/welcome-seam.md"])
def test_every_test_a_doc_names_exists(doc: str) -> None:
    named = NAMED.findall((ROOT / doc).read_text())
    assert named, f"{doc} names no tests"
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not (ROOT / path).exists() or name not in _test_names(ROOT / path)
    ]
    assert missing == []
