"""The Lambda handlers' cold start: importing them loads none of the heavy libraries the local
server or the JWT backend use. Each check runs in a fresh interpreter, as a cold start does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "asyncio",
    "pydantic",
    "pydantic_core",
    "fastapi",
    "starlette",
    "jwt",
    "cryptography",
    # The Management API client's signer and pool come with the first client, as boto3 does.
    "botocore",
    "urllib3",
)


def heavy_modules_loaded(code: str, env: dict[str, str] | None = None) -> list[str]:
    probe = (
        f"import sys\n{code}\n"
        "import json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=60,
    )
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    return sorted(loaded & set(HEAVY))


@pytest.mark.parametrize("module", ["handler.aws.websocket", "handler.aws.authorizer"])
def test_importing_a_lambda_handler_loads_nothing_heavy(module: str) -> None:
    assert heavy_modules_loaded(f"import {module}") == []


def test_boto3_is_imported_on_first_use_not_at_import() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, handler.aws.websocket; print('boto3' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "False"


def test_token_auth_needs_no_jwt_library() -> None:
    # The first $connect builds the authenticator; under token auth that must not pull PyJWT.
    code = "import handler.aws.runtime as r; r.runtime().authenticator()"
    assert heavy_modules_loaded(code, {"WSCHAT_AUTH": "token"}) == []


def test_jwt_auth_still_loads_its_library_on_first_use() -> None:
    code = (
        "import handler.aws.runtime as r\nassert 'jwt' not in sys.modules\n"
        "r.runtime().authenticator()"
    )
    env = {"WSCHAT_AUTH": "jwt", "WSCHAT_JWT_ALGORITHMS": "HS256", "WSCHAT_JWT_SECRET": "k" * 32}
    assert "jwt" in heavy_modules_loaded(code, env)
