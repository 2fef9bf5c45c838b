"""The one-way layering (DESIGN.md) holds, and the import contracts would catch each tie it once had.

``lint-imports`` (import-linter) checks the contracts in pyproject.toml. Each
tie the architecture review found is then put back, one at a time, into a copy
of the packages, and the same contracts must break: a contract that cannot fail
proves nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("broker", "chaos", "reports", "scenarios", "fastport_lab")
LINT = Path(sys.executable).with_name("lint-imports")

# (module file, the import put back, the contract that must break)
TIES = [
    (
        "reports/timeline.py",
        "import scenarios.test_flaw_matrix",
        "nothing imports the test modules of scenarios",
    ),
    ("chaos/runner.py", "import reports.record", "the application sits on top"),
    ("reports/record.py", "import reports.build", "the report builder reads what the recorder wrote"),
    ("chaos/checkers/facts.py", "import chaos.environment", "checkers are pure"),
    ("chaos/environment.py", "import chaos.nemesis", "the lab flows one way"),
    ("broker/server.py", "import chaos.history", "the reference broker is independent of the lab"),
]


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_import_contracts_hold() -> None:
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def _copy(dest: Path) -> Path:
    dest.mkdir()
    for pkg in PACKAGES:
        shutil.copytree(
            ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "runs", "templates")
        )
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_each_old_tie_breaks_a_contract(tmp_path: Path) -> None:
    def one(i: int) -> tuple[str, subprocess.CompletedProcess[str]]:
        module, line, contract = TIES[i]
        root = _copy(tmp_path / f"tie{i}")
        target = root / module
        target.write_text(target.read_text() + f"\n{line}  # the tie, put back\n")
        return contract, lint(root)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(one, range(len(TIES))))
    for contract, out in results:
        assert out.returncode != 0, f"{contract!r} did not break:\n{out.stdout}"
        broken = out.stdout.partition("Broken contracts")[2]  # each broken contract, named in full
        assert contract in broken, f"expected {contract!r} to break; lint-imports said:\n{out.stdout}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_package_is_covered_by_the_contracts(pkg: str) -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"{pkg}"' in text.split("[tool.importlinter]")[1].split("\n\n")[0]
