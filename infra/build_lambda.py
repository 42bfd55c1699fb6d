"""Build the Lambda deployment artifact: our packages plus their dependencies, as wheels built
for the Lambda platform and Python version, and nothing else.

    python -m infra.build_lambda [--python 3.12] [--platform manylinux2014_x86_64] [--out build]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("handler", "auth", "infra")
# Files of ours that a Lambda never needs: the local transport and its stores, the CLI and
# the emulator, and the build itself.
LOCAL_ONLY = (
    "handler/local",
    "handler/check.py",
    "handler/cli.py",
    "handler/emulate.py",
    "infra/build_lambda.py",
    "infra/emulator.py",
    "infra/greenbridge.py",
    "infra/lambda-requirements.txt",
    "infra/local_delivery.py",
    "infra/lean_moto.py",
    "infra/local_dynamodb.py",
    "infra/log_redaction.py",
    "infra/memory.py",
    "infra/metrics.py",
    "infra/redis_history.py",
    "infra/redis_ports.py",
    "infra/redis_rooms.py",
    "infra/sqs_source.py",
)
SKIP_SUFFIXES = (".pyc",)
SKIP_NAMES = ("__pycache__",)


def build(python: str, platform: str, out: Path) -> Path:
    staging = out / "lambda"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(staging),
            "--platform",
            platform,
            "--python-version",
            python,
            "--implementation",
            "cp",
            "--only-binary=:all:",
            "--requirement",
            str(ROOT / "infra" / "lambda-requirements.txt"),
        ],
        check=True,
    )
    for cache in staging.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(staging / "bin", ignore_errors=True)
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*"):
            relative = source.relative_to(ROOT)
            if source.is_dir() or source.suffix in SKIP_SUFFIXES:
                continue
            if any(part in SKIP_NAMES for part in relative.parts):
                continue
            if any(relative.as_posix().startswith(local) for local in LOCAL_ONLY):
                continue
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    artifact = out / "lambda.zip"
    artifact.unlink(missing_ok=True)
    with zipfile.ZipFile(artifact, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(staging))
    return artifact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--python", default="3.12", help="Lambda runtime's Python version")
    parser.add_argument("--platform", default="manylinux2014_x86_64", help="wheel platform tag")
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    args = parser.parse_args()
    artifact = build(args.python, args.platform, args.out)
    print(f"{artifact}: {artifact.stat().st_size / 1e6:.2f} MB zipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
