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


def _block_after(text: str, marker: str, language: str) -> str:
    """The first fenced block of `language` after `marker` in `text`."""
    start = text.index(f"```{language}\n", text.index(marker)) + len(language) + 4
    return text[start : text.index("```", start)]


def test_the_jwt_recipe_and_its_script_work_as_written(tmp_path: Path) -> None:
    # The recipe: its exports configure a server, its `wschat token` line mints a token, and
    # the Python snippet (run as a file, the token typed at its prompt) gets the seed's echo.
    import os
    import subprocess
    import sys

    from tests.support.servers import running_server
    from tests.support.tools import port_8000

    readme = (ROOT / "docs" / "auth.md").read_text()
    recipe = _block_after(readme, "JWT mode end to end, locally:", "sh")
    exports = [line for line in recipe.splitlines() if line.startswith("export ")]
    (mint,) = [line for line in recipe.splitlines() if "wschat token" in line]
    script = tmp_path / "client.py"
    script.write_text(_block_after(readme, "From a script, send it as a header", "python"))
    shell = "\n".join([*exports, "env | grep ^WSCHAT_", mint.split("#")[0]])
    done = subprocess.run(
        ["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True, check=True
    )
    *settings, token = done.stdout.split()
    env = dict(setting.split("=", 1) for setting in settings)
    with port_8000(), running_server(tmp_path, env, port=8000):
        client = subprocess.run(
            [sys.executable, str(script)],
            input=token + "\n",
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": ""},
        )
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip().endswith("Session cookie or query token value is: alice")


def test_the_readme_is_a_door_and_its_links_lead_somewhere() -> None:
    """The README stays short (the reference is in docs/), and every relative link in it and
    in docs/ names a file that exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"^[a-z]+:", target):
                assert (page.parent / target).exists(), f"{page.name} links to {target}"
