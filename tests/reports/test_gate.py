"""``fastport-lab gate``: exit codes on recorded runs, --from, thresholds from TOML, runner hooks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastport_lab.gate import main
from fastport_lab.suite_runner import EnvironmentProblem, SuiteRequest
from tests.reports.histories import crash_run, crash_verdicts, storage_run, storage_verdicts

ROOT = Path(__file__).resolve().parents[2]


def runner_pass(req: SuiteRequest) -> None:
    h = storage_run()
    req.recorder.add_scenario("storage_faults", 1, h, storage_verdicts(h))
    h = crash_run()
    req.recorder.add_scenario("crash_and_restart", 3, h, crash_verdicts(h))


def runner_violated(req: SuiteRequest) -> None:
    runner_pass(req)
    h = storage_run(lose={100, 110})
    req.recorder.add_scenario("lossy", 1, h, storage_verdicts(h))


def runner_unknown(req: SuiteRequest) -> None:
    runner_pass(req)
    h = storage_run(effective=None)
    req.recorder.add_scenario("unconfirmed", 1, h, storage_verdicts(h))


def runner_slow_fault(req: SuiteRequest) -> None:
    h = storage_run(fault_latency=0.8)
    req.recorder.add_scenario("slow", 1, h, storage_verdicts(h, factor=1000, slack=10))


def runner_env(req: SuiteRequest) -> None:
    raise EnvironmentProblem("PostgreSQL binaries not found")


def runner_crash(req: SuiteRequest) -> None:
    raise ZeroDivisionError("oops")


def gate(runs_root: Path, *argv: str, runner=None) -> int:
    return main(["--runs-dir", str(runs_root), "--run-id", "r", *argv], runner=runner)


@pytest.mark.parametrize(
    ("runner", "code", "status"),
    [
        (runner_pass, 0, "pass"),
        (runner_violated, 1, "fail"),
        (runner_unknown, 2, "unknown"),
        (runner_env, 3, "error"),
        (runner_crash, 3, "error"),
    ],
)
def test_exit_codes(runs_root, capsys, runner, code, status):
    assert gate(runs_root, runner=runner) == code
    results = json.loads((runs_root / "r" / "results.json").read_text())
    assert results["gate"]["status"] == status and results["gate"]["exit_code"] == code
    assert (runs_root / "r" / "index.html").is_file() and (runs_root / "r" / "junit.xml").is_file()
    out = capsys.readouterr()
    assert f"(exit {code})" in out.out and str(runs_root / "r" / "index.html") in out.out
    if code == 3:
        assert "environment error" in out.err
        assert results["environment_error"]


def test_unknown_can_warn(runs_root, capsys):
    assert gate(runs_root, "--unknown", "warn", runner=runner_unknown) == 0
    assert "warning:" in capsys.readouterr().out


def test_thresholds_come_from_the_toml_and_from_rejudges(runs_root, tmp_path, capsys):
    assert gate(runs_root, runner=runner_slow_fault) == 0  # within the default 2000 ms budget
    strict = tmp_path / "strict.toml"
    strict.write_text("[thresholds]\nfault_p99_ms = 300\n")
    run_dir = runs_root / "r"
    assert main(["--from", str(run_dir), "--config", str(strict)]) == 1
    out = capsys.readouterr().out
    assert "fault_p99_ms = 300" in out and "availability-under-storage-faults.evidence.windows" in out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["gate"]["findings"][0]["threshold"] == "fault_p99_ms"
    assert results["gate"]["config"]["source"] == str(strict)
    assert "fault_p99_ms" in (run_dir / "index.html").read_text()
    off = tmp_path / "off.toml"
    off.write_text("[thresholds]\nfault_p99_ms = false\nbaseline_p99_ms = false\n")
    assert main(["--from", str(run_dir), "--config", str(off)]) == 0


def test_environment_and_usage_errors_exit_3(runs_root, tmp_path, capsys):
    assert main(["--from", str(tmp_path)]) == 3
    assert "no results.json" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[thresholds]\nlatency = 1\n")
    assert gate(runs_root, "--config", str(bad), runner=runner_pass) == 3
    assert "unknown threshold(s) ['latency']" in capsys.readouterr().err
    assert gate(runs_root, "--no-such-flag", runner=runner_pass) == 3
    assert gate(runs_root, "--runner", "nocolon", runner=None) == 3
    assert "MODULE:FUNCTION" in capsys.readouterr().err
    assert gate(runs_root, "--runner", "tests.reports.test_gate:missing") == 3
    assert gate(runs_root, "--broker-cmd", "mybroker --no-port") == 3
    assert "{port}" in capsys.readouterr().err
    assert not (runs_root / "r").exists()  # nothing ran, no half-written run folder


def test_runner_given_by_name(runs_root):
    assert gate(runs_root, "--runner", "tests.reports.test_gate:runner_violated") == 1
    results = json.loads((runs_root / "r" / "results.json").read_text())
    assert [s["name"] for s in results["scenarios"]] == ["storage_faults", "crash_and_restart", "lossy"]
    assert results["command"].startswith("fastport-lab gate --runs-dir")


def test_request_carries_the_options(runs_root):
    seen: list[SuiteRequest] = []

    def spy(req: SuiteRequest) -> None:
        seen.append(req)
        runner_pass(req)

    code = gate(
        runs_root,
        "--store",
        "memory",
        "-k",
        "fmea1",
        "--seed",
        "7",
        "--suite",
        "scenarios/x.py",
        "--",
        "-x",
        runner=spy,
    )
    assert code == 0
    (req,) = seen
    assert (req.store, req.select, req.seed, req.suites, req.pytest_args) == (
        "memory",
        "fmea1",
        7,
        ["scenarios/x.py"],
        ["-x"],
    )
    results = json.loads((runs_root / "r" / "results.json").read_text())
    assert results["seed"] == 7 and results["environment"]["store"] == "memory"


def test_module_entry_point_help():
    done = subprocess.run(
        [sys.executable, "-m", "fastport_lab.gate", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and "exit 0 pass, 1 violated, 2 unknown, 3 environment error" in text
