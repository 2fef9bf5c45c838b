"""Running the chaos suites for the gate: the hook it calls, and the default pytest-based runner.

The gate does not know how suites are run; it calls a :data:`SuiteRunner` with a
:class:`SuiteRequest` whose ``recorder`` the runner feeds one scenario at a time
(``recorder.add_scenario(...)`` or ``recorder.add_result(result)``). A runner raises
:class:`EnvironmentProblem` when the suites could not run at all (PostgreSQL
missing, nothing collected, a hang); the gate exits 3 then.

:func:`pytest_runner`, the default, runs ``pytest scenarios/`` in a child process
with ``--run-dir`` pointing at a temporary folder, then reads back what
``chaos.scenario.run_scenario`` wrote there: one folder per scenario with
``history.jsonl`` and ``verdicts.json``. No change to the scenarios is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.history import History, HistoryFormatError
from reports.pytest_plugin import ENV as TESTLOG_ENV
from reports.record import ROOT_DIR, RunRecorder

DEFAULT_SUITES = ("scenarios",)
DEFAULT_TIMEOUT = 1800.0


class EnvironmentProblem(RuntimeError):
    """The suites could not run (as opposed to: they ran and an invariant failed)."""


@dataclass
class SuiteRequest:
    """What the gate asks a runner to run, and where the runner records the outcome."""

    recorder: RunRecorder
    broker_cmd: str | None = None
    store: str | None = None
    suites: list[str] = field(default_factory=lambda: list(DEFAULT_SUITES))
    select: str | None = None  # pytest -k expression
    pytest_args: list[str] = field(default_factory=list)
    seed: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    log: Path | None = None  # pytest's own output goes here instead of the terminal (a live display owns it)


SuiteRunner = Callable[[SuiteRequest], None]


def flaw_expectations() -> dict[str, str]:
    """flaw -> checker that must fail, from the flaw-matrix suite (empty when it cannot be imported)."""
    try:
        from scenarios.test_flaw_matrix import MATRIX
    except Exception:
        return {}
    out = {}
    for param in MATRIX:
        values = getattr(param, "values", param)
        if len(values) >= 3 and isinstance(values[0], str) and isinstance(values[2], str):
            out[values[0]] = values[2]
    return out


def read_testlog(path: Path | None) -> list[dict[str, Any]]:
    """The lines ``reports.pytest_plugin`` wrote (bad lines are skipped: the log only adds detail)."""
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("start"), (int, float)):
            out.append(rec)
    return out


def match_test(
    folder: Path, written: float, tests: list[dict[str, Any]], slack: float = 1.0
) -> dict[str, Any] | None:
    """The test during whose call *folder* was written (same xdist worker when there are several)."""
    mine = [t for t in tests if t.get("worker") and t["worker"] in folder.parts] or tests
    exact = [t for t in mine if t["start"] <= written <= t.get("stop", t["start"])]
    hits = exact or [t for t in mine if t["start"] - slack <= written <= t.get("stop", t["start"]) + slack]
    return hits[0] if len(hits) == 1 else None  # ambiguous: no guess


def ingest_scenario_dirs(root: Path, recorder: RunRecorder, testlog: Path | None = None) -> int:
    """Record each scenario folder under *root* (``verdicts.json`` + ``history.jsonl``); returns how many."""
    expectations = flaw_expectations()
    tests = read_testlog(testlog)
    n = 0
    for vfile in sorted(root.rglob("verdicts.json"), key=lambda p: p.stat().st_mtime):
        folder = vfile.parent
        try:
            body = json.loads(vfile.read_text(encoding="utf-8"))
            history = History.read(folder / "history.jsonl")
        except (OSError, json.JSONDecodeError, HistoryFormatError) as exc:
            raise EnvironmentProblem(f"unreadable scenario output in {folder}: {exc}") from None
        name = str(body.get("scenario") or folder.name)
        meta: dict[str, Any] = {
            "broker_cmd": body.get("broker_cmd"),
            "store": body.get("store"),
            "notes": body.get("notes") or {},
        }
        test = match_test(folder, vfile.stat().st_mtime, tests)
        fmea = body.get("fmea")
        if test is not None:
            meta["nodeid"] = test["nodeid"]
            fmea = fmea if fmea is not None else test.get("fmea")
        if name.startswith("flaw-"):
            meta["flaw"] = name.removeprefix("flaw-")
            if meta["flaw"] in expectations:
                meta["expect"] = expectations[meta["flaw"]]
        recorder.add_scenario(
            name,
            fmea,
            history,
            body.get("verdicts") or [],
            meta,
            error=body.get("error"),
            duration=body.get("duration_s"),
        )
        n += 1
    return n


def _pytest_errors(junit: Path) -> list[str]:
    """Tests that errored (a fixture could not set the lab up) rather than failed an assertion."""
    try:
        tree = ET.parse(junit)
    except (OSError, ET.ParseError):
        return []
    out = []
    for case in tree.iter("testcase"):
        err = case.find("error")
        if err is not None:
            out.append(f"{case.get('classname')}::{case.get('name')}: {err.get('message', '')[:300]}")
    return out


def pytest_command(request: SuiteRequest, scenario_dir: Path, junit: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", *request.suites, "-p", "no:cacheprovider", "-q"]
    cmd += ["-p", "reports.pytest_plugin"]
    cmd += ["--run-dir", str(scenario_dir), f"--junitxml={junit}"]
    if request.broker_cmd:
        cmd += ["--broker-cmd", request.broker_cmd]
    if request.store:
        cmd += ["--store", request.store]
    if request.select:
        cmd += ["-k", request.select]
    return cmd + list(request.pytest_args)


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the child's whole process group, then make sure it is gone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def pytest_runner(request: SuiteRequest) -> None:
    """Run the suites with pytest in a child process group, then record what each scenario wrote."""
    with tempfile.TemporaryDirectory(prefix="fastport-gate-") as tmp:
        scenario_dir, junit = Path(tmp) / "scenarios", Path(tmp) / "pytest.xml"
        scenario_dir.mkdir()
        cmd = pytest_command(request, scenario_dir, junit)
        testlog = Path(tmp) / "tests.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT"))}
        env[TESTLOG_ENV] = str(testlog)  # an outer pytest's worker id must not leak into the suites
        if request.seed is not None:
            env["FASTPORT_LAB_SEED"] = str(request.seed)
        print(f"fastport-lab gate: running {' '.join(cmd[2:])}", flush=True)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(request.log, "ab")) if request.log else None
            proc = subprocess.Popen(cmd, cwd=ROOT_DIR, env=env, start_new_session=True, stdout=out,
                                    stderr=subprocess.STDOUT if out else None)
        try:
            rc = proc.wait(timeout=request.timeout)
        except subprocess.TimeoutExpired:
            _stop(proc, signal.SIGTERM)
            raise EnvironmentProblem(f"the suites did not finish within {request.timeout:g}s") from None
        except BaseException:
            _stop(proc, signal.SIGINT)
            raise
        errors = _pytest_errors(junit)
        if rc == 5:
            raise EnvironmentProblem(f"pytest collected no scenario from {' '.join(request.suites)}")
        if rc not in (0, 1):
            raise EnvironmentProblem(
                f"pytest exited {rc} (interrupted, internal or usage error); see its output"
            )
        n = ingest_scenario_dirs(scenario_dir, request.recorder, testlog)
        if errors:
            raise EnvironmentProblem(
                f"{len(errors)} suite(s) could not set up the lab: " + "; ".join(errors[:5])
            )
        if n == 0:
            raise EnvironmentProblem("pytest ran but no scenario recorded a run (all skipped or deselected?)")
