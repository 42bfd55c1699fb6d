"""Build the Lambda deployment artifact: our packages plus their dependencies, as wheels built
for the Lambda platform and Python version, and nothing else.

    python -m infra.deploy.build_lambda [--python 3.12] [--platform manylinux2014_x86_64]
                                        [--out build] [--if-stale]

With `--if-stale` it builds only when what goes into the zip changed since the last build: a
fingerprint of every included source file, the requirements and the target, kept beside the
zip. `osls package`, `osls deploy` and `osls offline start` run it so
(infra/deploy/serverless-build.js): a fresh clone deploys, and a stale zip never ships.
`make lambda-zip` always builds.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What a Lambda runs: these packages whole, and the modules above them that they need. The
# rest of ours is local: the uvicorn transport, the emulator, the CLI, the memory and Redis
# engines, the AWS stand-ins, this build. tests/test_packaging.py proves that nothing in the
# zip imports anything of ours outside it.
PACKAGES = (
    "auth",
    "handler/chat",
    "handler/aws",
    "handler/web",
    "infra/aws",
    "infra/observability",
)
MODULES = ("handler/__init__.py", "infra/__init__.py", "infra/settings.py")
REQUIREMENTS = ROOT / "infra" / "deploy" / "lambda-requirements.txt"
SKIP_SUFFIXES = (".pyc",)
SKIP_NAMES = ("__pycache__",)


def sources() -> list[Path]:
    """Our files that go into the zip, in a stable order."""
    found = [ROOT / module for module in MODULES]
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*"):
            relative = source.relative_to(ROOT)
            if source.is_dir() or source.suffix in SKIP_SUFFIXES:
                continue
            if any(part in SKIP_NAMES for part in relative.parts):
                continue
            found.append(source)
    return sorted(found)


def fingerprint(python: str, platform: str) -> str:
    digest = hashlib.sha256(f"{python} {platform}\n".encode())
    for path in [REQUIREMENTS, *sources()]:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


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
            str(REQUIREMENTS),
        ],
        check=True,
    )
    for cache in staging.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(staging / "bin", ignore_errors=True)
    for source in sources():
        target = staging / source.relative_to(ROOT)
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
    parser.add_argument("--if-stale", action="store_true", help="skip if nothing changed")
    args = parser.parse_args()
    artifact = args.out / "lambda.zip"
    stamp = args.out / "lambda.zip.fingerprint"
    current = fingerprint(args.python, args.platform)
    if args.if_stale and artifact.exists() and stamp.exists() and stamp.read_text() == current:
        print(f"{artifact}: up to date")
        return 0
    stamp.unlink(missing_ok=True)  # a build that fails midway leaves no false stamp
    artifact = build(args.python, args.platform, args.out)
    stamp.write_text(current)
    print(f"{artifact}: {artifact.stat().st_size / 1e6:.2f} MB zipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
