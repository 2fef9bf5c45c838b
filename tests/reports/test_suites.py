"""The default suite runner: pytest in a child process, scenario folders read back into the run.

The fake suites here write their scenario folders with the real
``chaos.runner.write_scenario_folder`` (what the plugin's ``run_lab`` and ``lab``
do after each scenario, with the same meta), so the runner is tested against the
scenario side's actual output format.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from chaos.suites.flaws import FLAW_MATRIX
from fastport_lab.gate import main

CONFTEST = '"""The options and markers come from the lab\'s pytest plugin."""\n'

SUITE = """
from pathlib import Path

import pytest

from chaos.config import LabConfig
from chaos.runner import ScenarioResult, write_scenario_folder
from tests.reports.histories import storage_run, storage_verdicts


def record(request, name, history, **meta):
    cfg = LabConfig(store=request.config.getoption("--store") or "postgres")
    if "flaw" in meta:
        cfg = cfg.with_flaw(meta["flaw"])
    run_dir = Path(request.config.getoption("--run-dir")) / (name + "-000")
    marker = request.node.get_closest_marker("fmea")
    meta = {"nodeid": request.node.nodeid, "fmea": marker.args[0] if marker else None, **meta}
    result = ScenarioResult(name, cfg, storage_verdicts(history), history, run_dir, 1.5, meta=meta)
    write_scenario_folder(result)


@pytest.mark.fmea("storage-x")
def test_storage(request):
    record(request, "storage_faults", storage_run(per_phase=10))


def test_flaw(request):
    history = storage_run(per_phase=10, fault_latency=0.5, lose={12})
    expect = "availability-under-storage-faults"
    record(request, "flaw-store-first", history, flaw="store-first", expect=expect)
    assert False, "a scenario test fails when its flaw is caught... or not: the gate judges the verdicts"
"""


def make_suite(tmp_path: Path, body: str) -> Path:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_fake.py").write_text(textwrap.dedent(body))
    return suite


@pytest.mark.integration
def test_pytest_runner_records_each_scenario(tmp_path, capsys):
    suite = make_suite(tmp_path, SUITE)
    runs = tmp_path / "runs"
    code = main(["--runs-dir", str(runs), "--run-id", "p", "--suite", str(suite), "--store", "memory"])
    out = capsys.readouterr().out
    assert code == 0, out
    results = json.loads((runs / "p" / "results.json").read_text())
    storage, flaw = sorted(results["scenarios"], key=lambda s: s["name"], reverse=True)
    assert storage["name"] == "storage_faults" and storage["store"] == "memory"
    assert storage["fmea"] == "storage-x"  # the test's fmea marker, recorded with the scenario
    assert storage["duration_s"] == 1.5 and storage["events"] > 100
    assert flaw["meta"]["flaw"] == "store-first"
    expected = {c.flaw: c.checker for c in FLAW_MATRIX}["store-first"]
    assert flaw["meta"].get("expect") == expected  # travelled in the recorded verdicts
    assert results["gate"]["status"] == "pass"  # the flaw was caught: that is the pass
    assert (runs / "p" / "storage_faults" / "history.jsonl").is_file()
    # the scenario folder names the test that wrote it: a per-scenario rerun command
    assert storage["meta"]["nodeid"].endswith("test_fake.py::test_storage")
    assert (
        storage["reproduce"].startswith("./lab test ")
        and "test_fake.py::test_storage" in storage["reproduce"]
    )
    assert flaw["meta"]["nodeid"].endswith("test_fake.py::test_flaw")
    assert "--flaw" not in flaw["reproduce"]  # the flaw test adds it itself


@pytest.mark.integration
def test_pytest_runner_environment_errors(tmp_path, capsys):
    runs = tmp_path / "runs"
    empty = make_suite(tmp_path, "")
    assert main(["--runs-dir", str(runs), "--run-id", "e1", "--suite", str(empty)]) == 3
    assert "collected no scenario" in capsys.readouterr().err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "conftest.py").write_text(
        CONFTEST
        + "\nimport pytest\n\n@pytest.fixture\ndef lab():\n    raise RuntimeError('no PostgreSQL here')\n"
    )
    (broken / "test_b.py").write_text("def test_needs_lab(lab):\n    pass\n")
    assert main(["--runs-dir", str(runs), "--run-id", "e2", "--suite", str(broken)]) == 3
    err = capsys.readouterr().err
    assert "could not set up the lab" in err and "no PostgreSQL here" in err
    junit = (runs / "e2" / "junit.xml").read_text()
    assert 'name="environment"' in junit and "no PostgreSQL here" in junit
