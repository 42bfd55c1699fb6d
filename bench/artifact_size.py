"""Deployment artifact size: the Lambda zip `make lambda-zip` builds, by package, beside a
zip of boto3 alone built the same way (what bundling the SDK, as many deployments do, would
weigh), in the same run.

    .venv/bin/python bench/artifact_size.py

Target (issue 7): at most 15 MB zipped. Lambda's own limits: 50 MB zipped for a direct
upload, 250 MB unzipped.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from wsload import ROOT, publish

sys.path.insert(0, str(ROOT))
from infra.deploy.build_lambda import build

PLATFORM = ("--platform", "manylinux2014_x86_64", "--python-version", "3.12")


def by_package(artifact: Path) -> Counter[str]:
    """Zipped bytes per top-level name, a package's .dist-info counted with it."""
    sizes: Counter[str] = Counter()
    with zipfile.ZipFile(artifact) as archive:
        for info in archive.infolist():
            sizes[re.split(r"[-./]", info.filename, maxsplit=1)[0].lower()] += info.compress_size
    return sizes


def unzipped(artifact: Path) -> int:
    with zipfile.ZipFile(artifact) as archive:
        return sum(info.file_size for info in archive.infolist())


def boto3_alone(out: Path) -> Path:
    staging = out / "boto3"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(staging), *PLATFORM, "--only-binary=:all:", "boto3"],
        check=True,
    )  # fmt: skip
    artifact = out / "boto3.zip"
    with zipfile.ZipFile(artifact, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(staging.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(staging))
    return artifact


def main() -> int:
    ours = build("3.12", "manylinux2014_x86_64", ROOT / "build")
    with tempfile.TemporaryDirectory() as scratch:
        reference = boto3_alone(Path(scratch))
        reference_size = reference.stat().st_size
    size = ours.stat().st_size
    rows: list[dict[str, Any]] = [
        {"artifact": "wschat build/lambda.zip", "mb": size / 1e6},
        {"artifact": "boto3 alone, bundled (reference)", "mb": reference_size / 1e6},
    ]
    lines = [
        "| artifact | zipped | vs 15 MB target | vs boto3 bundled |",
        "|---|---|---|---|",
    ]
    for row in rows:
        row["vs_target"] = row["mb"] / 15
        row["vs_boto3"] = row["mb"] * 1e6 / reference_size
        lines.append(
            f"| {row['artifact']} | {row['mb']:.2f} MB | {row['vs_target']:.2f}x "
            f"| {row['vs_boto3']:.2f}x |"
        )
    largest = ", ".join(
        f"{name} {zipped / 1e6:.1f} MB" for name, zipped in by_package(ours).most_common(6)
    )
    lines.append("")
    lines.append(f"Unzipped: {unzipped(ours) / 1e6:.1f} MB. Largest parts: {largest}.")
    return publish("artifact_size", lines, rows)


if __name__ == "__main__":
    raise SystemExit(main())
