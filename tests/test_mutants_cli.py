"""``fastport-lab mutants``: the foreign broker's mutants and the reference broker's flaws, one kill rate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chaos.config import ROOT
from chaos.suites import SUITES
from fastport_lab import mutants
from fastport_lab.suite_runner import SuiteRequest
from tests.reports.histories import storage_run, storage_verdicts

EXPECT = "availability-under-storage-faults"


class Recording:
    """A suite runner that keeps the request and records one caught flaw and one caught mutant."""

    def __init__(self) -> None:
        self.request: SuiteRequest | None = None

    def __call__(self, request: SuiteRequest) -> None:
        self.request = request
        h = storage_run(per_phase=10, fault_latency=0.5, lose={12})
        for kind, name in (("flaw", "store-first"), ("mutant", "store-first")):
            meta = {kind: name, "expect": EXPECT}
            request.recorder.add_scenario(f"{kind}-{name}", 1, h, storage_verdicts(h), meta)


@pytest.fixture
def recording(monkeypatch) -> Recording:
    monkeypatch.chdir(ROOT)  # mutants chdirs to the checkout; put the test's cwd back afterwards
    return Recording()


def test_runs_both_matrices_with_options_and_scenarios_in_any_order(tmp_path, recording) -> None:
    code = mutants.main(
        ["--intensity", "smoke", "crash", "--no-live", "--out", str(tmp_path), "flaws", "--pytest-arg=-x"],
        runner=recording,
    )
    assert code == 0
    req = recording.request
    assert req.suites == ["tests/foreign/test_matrix.py", SUITES["flaws"].module, SUITES["crash"].module]
    assert req.pytest_args == ["--mutants", "-x"] and req.intensity == "smoke"
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rate = json.loads((run_dir / "results.json").read_text())["gate"]["kill_rate"]
    assert rate == {"seeded": 2, "caught": 2, "rate": 1.0, "missed": []}  # flaws and mutants counted together


def test_a_bad_option_is_a_usage_error(tmp_path, recording, capsys) -> None:
    assert mutants.main(["--intensity", "extreme", "--out", str(tmp_path)], runner=recording) == 3
    err = capsys.readouterr().err
    assert err.startswith("usage: fastport-lab mutants") and "invalid choice: 'extreme'" in err
    assert recording.request is None and not any(tmp_path.iterdir())


@pytest.mark.integration
def test_pytest_collects_both_matrices() -> None:
    """The path of the foreign matrix and the flaw matrix's module, together in one pytest run."""
    from fastport_lab.suite_runner import pytest_command

    suites = ["tests/foreign/test_matrix.py", SUITES["flaws"].module]
    req = SuiteRequest(None, suites=suites, pytest_args=["--mutants", "--collect-only"])
    cmd = pytest_command(req, ROOT / "no-run-dir", ROOT / "no-junit.xml")
    cmd = [c for c in cmd if not c.startswith(("--run-dir", "--junitxml"))]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test_flaw_matrix.py" in out.stdout and "test_matrix.py" in out.stdout
    assert sys.executable == cmd[0]
