"""Running the chaos suites for ``run`` and ``gate``: the hook they call, and the default pytest runner.

The gate does not know how suites are run; it calls a :data:`SuiteRunner` with a
:class:`SuiteRequest` whose ``recorder`` the runner feeds one scenario at a time
(``recorder.add_scenario(...)`` or ``recorder.add_result(result)``). A runner raises
:class:`EnvironmentProblem` when the suites could not run at all (PostgreSQL
missing, nothing collected, a hang); the gate exits 3 then.

:func:`pytest_runner`, the default, runs pytest on the suites (``--pyargs
scenarios`` by default, so it works from any directory where fastport-lab is
installed, or your own test paths) in a child process group with ``--run-dir``
pointing at a temporary folder, then reads back what the lab's fixtures wrote
there: one folder per scenario with its history, ``verdicts.json`` (verdicts,
the pytest node id, the FMEA mode and, for the flaw matrix, which checker had to
fail) and the broker logs, all kept in the run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from chaos.history import History, HistoryFormatError
from chaos.runner import HISTORY_FILES, find_history_file
from chaos.supervisor import Child, scratch_dir
from reports.record import RunRecorder

DEFAULT_SUITES = ("scenarios",)  # a package name: run with --pyargs
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
    intensity: str | None = None
    backend: str | None = None
    broker_image: str | None = None
    cwd: str | None = None  # where pytest runs (default: the current directory)


SuiteRunner = Callable[[SuiteRequest], None]


SCENARIO_META = ("nodeid", "flaw", "mutant", "expect", "schedule", "seed", "reproduce")


def ingest_scenario_dirs(root: Path, recorder: RunRecorder) -> int:
    """Record each scenario folder under *root*; returns how many.

    A folder holds ``verdicts.json``, the history (``history.jsonl``, or ``history.npz`` when big) and
    the broker logs (``broker-N.log``): the logs, and any other ``*.log`` of the folder, are copied into
    the run folder with the history, since *root* is a scratch dir that is removed after the run.
    """
    n = 0
    for vfile in sorted(root.rglob("verdicts.json"), key=lambda p: p.stat().st_mtime):
        folder = vfile.parent
        try:
            body = json.loads(vfile.read_text(encoding="utf-8"))
            named = body.get("history")
            path = folder / named if named in HISTORY_FILES else find_history_file(folder)
            history = History.read(path)
        except (OSError, json.JSONDecodeError, HistoryFormatError) as exc:
            raise EnvironmentProblem(f"unreadable scenario output in {folder}: {exc}") from None
        name = str(body.get("scenario") or folder.name)
        meta: dict[str, Any] = {
            "broker_cmd": body.get("broker_cmd"),
            "store": body.get("store"),
            "notes": body.get("notes") or {},
        }
        meta.update({k: body[k] for k in SCENARIO_META if body.get(k) is not None})
        if "schedule" not in meta and isinstance(meta["notes"].get("schedule"), list):
            meta["schedule"] = meta["notes"]["schedule"]
        recorder.add_scenario(
            name,
            body.get("fmea"),
            history,
            body.get("verdicts") or [],
            meta,
            error=body.get("error"),
            duration=body.get("duration_s"),
            files=sorted(folder.glob("*.log")),
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


def is_module(target: str) -> bool:
    """A dotted module name (``scenarios``, ``scenarios.test_fmea1_storage``), not a path or node id."""
    return bool(target) and all(part.isidentifier() for part in target.split("::")[0].split("."))


PLUGIN = "chaos.plugin"


def plugin_registered() -> bool:
    """Whether pytest loads the lab's plugin by itself (the ``pytest11`` entry point of an install)."""
    return any(ep.value == PLUGIN for ep in metadata.entry_points(group="pytest11"))


def pytest_command(request: SuiteRequest, scenario_dir: Path, junit: Path) -> list[str]:
    targets = list(request.suites)
    cmd = [sys.executable, "-m", "pytest", *targets, "-p", "no:cacheprovider", "-q"]
    if not plugin_registered():  # e.g. the package is on sys.path without being installed
        cmd += ["-p", PLUGIN]
    if any(is_module(t) and not Path(t).exists() for t in targets):
        cmd.append("--pyargs")
    # The run dir must not be taken for a test path when pytest guesses its rootdir: pin both.
    cmd += [f"--rootdir={request.cwd or os.getcwd()}", f"--run-dir={scenario_dir}", f"--junitxml={junit}"]
    if request.broker_cmd:
        cmd += ["--broker-cmd", request.broker_cmd]
    if request.store:
        cmd += ["--store", request.store]
    if request.intensity:
        cmd += ["--intensity", request.intensity]
    if request.backend:
        cmd += ["--backend", request.backend]
    if request.broker_image:
        cmd += ["--broker-image", request.broker_image]
    if request.select:
        cmd += ["-k", request.select]
    return cmd + list(request.pytest_args)


def _stop(child: Child, sig: signal.Signals, grace: float = 15.0) -> None:
    """Signal the child's whole process group, give it *grace* seconds to tear down, then kill it.

    A second Ctrl-C (or SIGTERM) while it tears down cuts the grace short.
    """
    child.signal(sig)
    try:
        if child.exited(grace):
            return
    except KeyboardInterrupt:
        pass
    child.kill()


def pytest_runner(request: SuiteRequest) -> None:
    """Run the suites with pytest in a child process group, then record what each scenario wrote."""
    with scratch_dir("fastport-gate-") as tmp:
        scenario_dir, junit = tmp / "scenarios", tmp / "pytest.xml"
        scenario_dir.mkdir()
        cmd = pytest_command(request, scenario_dir, junit)
        # An outer pytest's worker id must not leak into the suites.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT"))}
        if request.seed is not None:
            env["FASTPORT_LAB_SEED"] = str(request.seed)
        print(f"fastport-lab gate: running {' '.join(cmd[2:])}", flush=True)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(request.log, "ab")) if request.log else None
            child = Child(
                cmd,
                name="pytest",
                env=env,
                inherit_env=False,
                cwd=request.cwd,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
            ).start()
        try:
            finished = child.exited(request.timeout)
        except BaseException:
            # Ctrl-C, SIGTERM: let pytest tear its labs down, then keep what finished.
            _stop(child, signal.SIGINT)
            ingest_scenario_dirs(scenario_dir, request.recorder)
            raise
        if not finished:
            _stop(child, signal.SIGTERM)
            ingest_scenario_dirs(scenario_dir, request.recorder)
            raise EnvironmentProblem(f"the suites did not finish within {request.timeout:g}s")
        rc = child.returncode
        errors = _pytest_errors(junit)
        if rc == 5:
            raise EnvironmentProblem(f"pytest collected no scenario from {' '.join(request.suites)}")
        if rc not in (0, 1):
            raise EnvironmentProblem(
                f"pytest exited {rc} (interrupted, internal or usage error); see its output"
            )
        n = ingest_scenario_dirs(scenario_dir, request.recorder)
        if errors:
            raise EnvironmentProblem(
                f"{len(errors)} suite(s) could not set up the lab: " + "; ".join(errors[:5])
            )
        if n == 0:
            raise EnvironmentProblem("pytest ran but no scenario recorded a run (all skipped or deselected?)")
