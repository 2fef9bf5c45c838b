"""The default suite runner: pytest in a child process, scenario folders read back into the run.

The fake suites here write their scenario folders with the real
``chaos.scenario.write_run`` (what ``run_lab`` does after each scenario), so the
runner is tested against the scenario side's actual output format.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from chaos.gate import main
from reports.suites import flaw_expectations, match_test

CONFTEST = """
def pytest_addoption(parser):
    for opt in ("--run-dir", "--broker-cmd", "--store"):
        parser.addoption(opt, default=None)


def pytest_configure(config):
    config.addinivalue_line("markers", "fmea(mode): FMEA mode")
"""

SUITE = """
from pathlib import Path

import pytest

from chaos.environment import LabConfig
from chaos.scenario import ScenarioResult, write_run
from tests.reports.histories import storage_run, storage_verdicts


def record(request, name, history):
    cfg = LabConfig(store=request.config.getoption("--store") or "postgres")
    if name.startswith("flaw-"):
        cfg = cfg.with_flaw(name.removeprefix("flaw-"))
    run_dir = Path(request.config.getoption("--run-dir")) / (name + "-000")
    write_run(ScenarioResult(name, cfg, storage_verdicts(history), history, run_dir, 1.5))


@pytest.mark.fmea("storage-x")
def test_storage(request):
    record(request, "storage_faults", storage_run(per_phase=10))


def test_flaw(request):
    record(request, "flaw-store-first", storage_run(per_phase=10, fault_latency=0.5, lose={12}))
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
    assert storage["fmea"] == "storage-x"  # the test's fmea marker, logged by reports.pytest_plugin
    assert storage["duration_s"] == 1.5 and storage["events"] > 100
    assert flaw["meta"]["flaw"] == "store-first"
    assert flaw["meta"].get("expect") == flaw_expectations().get("store-first")
    assert results["gate"]["status"] == "pass"  # the flaw was caught: that is the pass
    assert (runs / "p" / "storage_faults" / "history.jsonl").is_file()
    # reports.pytest_plugin told which test wrote which scenario folder: a per-scenario rerun command
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


def test_match_test_prefers_the_exact_window_and_the_same_worker():
    tests = [
        {"nodeid": "a", "worker": "gw0", "start": 10.0, "stop": 20.0},
        {"nodeid": "b", "worker": "gw1", "start": 12.0, "stop": 30.0},
        {"nodeid": "c", "worker": "gw0", "start": 20.5, "stop": 25.0},
    ]
    assert match_test(Path("/r/gw0/x"), 15.0, tests)["nodeid"] == "a"
    assert match_test(Path("/r/gw1/x"), 15.0, tests)["nodeid"] == "b"
    assert match_test(Path("/r/gw0/x"), 20.2, tests) is None  # between a and c on gw0: no guess
    assert match_test(Path("/r/gw0/x"), 20.7, tests)["nodeid"] == "c"
    assert match_test(Path("/r/x"), 15.0, tests) is None  # ambiguous: no guess
    assert match_test(Path("/r/gw0/x"), 99.0, tests) is None
