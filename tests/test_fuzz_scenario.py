"""Protocol fuzzing reaches the run record and the gate: ``fastport-lab run fuzz`` judges it like any suite.

The verdict itself is pure (``chaos.suites.fuzz.fuzz_verdict``); the runs are
real: ``fastport-lab run fuzz`` in a subprocess against the reference broker
(pass) and against the foreign broker's ``non-object-crash`` mutant (a JSON
value that is not an object kills its connection: fail), at smoke intensity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.suites.fuzz import FUZZ_ANSWERS, Case, FuzzFailure, fuzz_verdict

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = (
    f"{sys.executable} -m tests.foreign --host {{host}} --port {{port}} --store {{store}} --dsn {{dsn}}"
    " --mutant non-object-crash"
)


def test_the_verdict_gives_the_counts_and_on_a_failure_the_shrunk_frames_and_why() -> None:
    ok = fuzz_verdict(sent=64, examples=10, planned=10, failure=None)
    assert (ok.name, ok.status) == (FUZZ_ANSWERS, "pass") and "all 64 generated frames" in ok.summary
    assert ok.evidence == {
        "frames_sent": 64,
        "examples_run": 10,
        "examples_planned": 10,
        "frames_per_example": 6.4,
    }
    frames = [Case("json", b"{}", {}), Case("json", b"null", None)]
    bad = fuzz_verdict(90, 25, 10, FuzzFailure(frames, "Case(json: 'null'): closed (1011)", failed_at=1))
    assert bad.status == "fail" and "frame 2 of 2 of the shrunk example" in bad.summary
    assert bad.evidence["failing_frames"] == ["Case(json: '{}')", "Case(json: 'null')"]
    assert bad.evidence["why"] == "Case(json: 'null'): closed (1011)" and bad.evidence["failed_at"] == 1
    after = fuzz_verdict(12, 3, 3, FuzzFailure(frames, "/healthz did not answer 200"))
    assert "after its 2 frame(s)" in after.summary and after.evidence["failed_at"] is None
    assert fuzz_verdict(0, 0, 5, None).status == "unknown"


def _run(out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTPORT_LAB_", "PYTEST_"))}
    cmd = [sys.executable, "-m", "fastport_lab.cli", "run", "fuzz", "--intensity", "smoke", "--no-live"]
    proc = subprocess.run([*cmd, "--out", str(out), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return proc, json.loads((run_dir / "results.json").read_text())


@pytest.mark.integration
def test_run_fuzz_records_a_scenario_and_passes(tmp_path) -> None:
    proc, results = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "record_property" not in proc.stdout and "PytestWarning" not in proc.stdout
    (s,) = results["scenarios"]
    assert s["name"] == "protocol_fuzzing" and s["fmea"] == "bad-input"
    (v,) = s["verdicts"]
    assert v["name"] == FUZZ_ANSWERS and v["status"] == "pass"
    assert v["evidence"]["frames_sent"] >= v["evidence"]["examples_run"] > 0
    assert "test_fuzz.py::test_every_generated_frame" in s["reproduce"]
    run_dir = tmp_path / results["run_id"]
    assert s["logs"] == ["protocol_fuzzing/broker-1.log"]  # the broker's log, kept with the run
    assert "listening" in (run_dir / s["logs"][0]).read_text()
    assert 'href="protocol_fuzzing/broker-1.log"' in (run_dir / "index.html").read_text()


@pytest.mark.integration
def test_a_fuzz_failure_fails_the_gate_with_the_shrunk_frames(tmp_path) -> None:
    proc, results = _run(tmp_path, "--store", "memory", "--broker-cmd", FOREIGN)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (s,) = results["scenarios"]
    (v,) = s["verdicts"]
    assert v["status"] == "fail" and results["gate"]["status"] == "fail"
    ev = v["evidence"]
    assert ev["failing_frames"] and len(ev["failing_frames"]) <= 2  # shrunk: one non-object frame, or so
    assert "closed the connection (1011)" in ev["why"] and ev["frames_sent"] > 0
