"""What a run ran on, for its report: Python, platform, versions of the lab and key packages, git commit.

A failing run is only useful if it can be reproduced, so the report records
everything that could make a second run differ. Nothing here may fail a run:
a value that cannot be read is recorded as ``None``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY_PACKAGES = (
    "fastport-lab",
    "websockets",
    "asyncpg",
    "pgserver",
    "pytest",
    "hypothesis",
    "jinja2",
    "plotly",
)


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """Commit and dirtiness of the checkout (read-only git commands; None outside a repo)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment(broker_cmd: str | None = None, store: str | None = None) -> dict[str, Any]:
    versions = package_versions()
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "lab_version": versions.get("fastport-lab"),
        "packages": versions,
        "broker_cmd": broker_cmd,
        "store": store,
        "ci": os.environ.get("CI", "").lower() == "true",
        "git": git_state(),
    }
