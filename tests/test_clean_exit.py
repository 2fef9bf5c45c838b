"""No process outlives the lab, however the lab ends; `run` stops on SIGINT/SIGTERM and keeps what finished.

Each test starts a lab command under ``tests/exit_watch.py`` (a child
subreaper: whatever the lab started becomes the watcher's child when the lab
dies), waits until the broker, the fault proxy and PostgreSQL are running, ends
the lab one way (SIGKILL, SIGTERM, SIGINT to the pid or the group, SIGABRT for a
crash, ^C typed into its terminal) and then looks for survivors. The lab's temp
dirs go to a TMPDIR of the test's own, which must be empty afterwards, and no
PostgreSQL segment may appear in /dev/shm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from chaos.config import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
WATCH = Path(__file__).with_name("exit_watch.py")
LAB_RUNNING = ["-m broker", "chaos.toxiproxy.cli", "postgres"]  # the broker, the fault proxy, PostgreSQL
FASTPORT_LAB = [sys.executable, "-m", "fastport_lab.cli"]
# A scenario that keeps its broker busy long enough to be killed in the middle.
LONG_SCENARIO = "scenarios/test_fmea3_crash.py"


def shm_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("PostgreSQL.")}
    except OSError:
        return set()


def leftovers(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.iterdir())


def die(
    tmp_path: Path,
    cmd: list[str],
    how: str,
    *,
    files: tuple[str, ...] = (),
    processes: tuple[str, ...] = tuple(LAB_RUNNING),
    **spec: object,
) -> dict:
    """Run *cmd* under the watcher, end it *how*, and return the watcher's report."""
    # PostgreSQL runs as an unprivileged user when the lab is root: its dir must be reachable.
    lab_tmp = Path(tempfile.mkdtemp(prefix="exit-watch-"))
    lab_tmp.chmod(0o711)
    try:
        return _die(
            tmp_path,
            lab_tmp,
            cmd,
            how,
            files,
            {"ready": {"processes": list(processes), "files": list(files)}, **spec},
        )
    finally:
        shutil.rmtree(lab_tmp, ignore_errors=True)


def _die(tmp_path: Path, lab_tmp: Path, cmd: list[str], how: str, files: tuple[str, ...], spec: dict) -> dict:
    body = {
        "cmd": cmd,
        "cwd": str(ROOT),
        "env": {
            "TMPDIR": str(lab_tmp),
            "FASTPORT_LAB_PG_DIR": str(lab_tmp),
            "FASTPORT_LAB_INTENSITY": "smoke",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        },
        "how": how,
        "ready_root": str(lab_tmp),
        "output": str(tmp_path / "output.log"),
        "timeout": 120,
        **spec,
    }
    (tmp_path / "spec.json").write_text(json.dumps(body))
    shm = shm_segments()
    done = subprocess.run(
        [sys.executable, str(WATCH), str(tmp_path / "spec.json")],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["tmp_left"] = leftovers(lab_tmp)
    report["shm_new"] = sorted(shm_segments() - shm)
    return report


def assert_clean(report: dict) -> None:
    assert "error" not in report, f"{report['error']}\n{report['output'][-3000:]}"
    assert all(any(p in c for c in report["before"]) for p in LAB_RUNNING), report["before"]
    assert report["survivors"] == [], f"still running after the lab died: {report['survivors']}"
    assert report["tmp_left"] == [], f"temp files left behind: {report['tmp_left']}"
    assert report["shm_new"] == [], f"PostgreSQL segments left in /dev/shm: {report['shm_new']}"


PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", LONG_SCENARIO]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT-group", "SIGABRT"])
def test_pytest_scenarios_leave_nothing_running(tmp_path: Path, how: str) -> None:
    report = die(tmp_path, PYTEST, how)
    assert_clean(report)
    if how == "SIGKILL":
        assert report["exit"] == -9


@pytest.mark.parametrize("how", ["SIGKILL", "ctrl-c"])
def test_fastport_lab_soak_leaves_nothing_running(tmp_path: Path, how: str) -> None:
    cmd = [*FASTPORT_LAB, "soak", "--cycles", "50", "--per-cycle", "20", "--out", str(tmp_path / "runs")]
    report = die(tmp_path, cmd, how)
    assert_clean(report)
    if how == "ctrl-c":
        assert report["exit"] == 3, report["output"][-3000:]
        assert "interrupted" in report["output"]


@pytest.mark.parametrize("how", ["SIGKILL", "ctrl-c"])  # SIGTERM takes run's path (tested there)
def test_fastport_lab_load_leaves_nothing_running(tmp_path: Path, how: str) -> None:
    """Locust's master and its forked workers go with the lab too (their group is the reaper's)."""
    cmd = [*FASTPORT_LAB, "load", "--faults", "none", "--users", "10", "--processes", "2",
           "--duration", "120", "--out", str(tmp_path / "runs")]  # fmt: skip
    report = die(tmp_path, cmd, how, processes=(*LAB_RUNNING, "locust", "locust", "locust"))
    assert_clean(report)
    if how != "SIGKILL":
        assert report["exit"] == 3, report["output"][-3000:]
        assert "interrupted" in report["output"]


RUN = [*FASTPORT_LAB, "run", "storage", "crash"]
FIRST_SCENARIO_DONE = ("fastport-gate-*/scenarios/*/verdicts.json",)


def test_fastport_lab_run_sigkill_leaves_nothing_running(tmp_path: Path) -> None:
    report = die(tmp_path, [*RUN, "--no-live", "--out", str(tmp_path / "runs")], "SIGKILL")
    assert_clean(report)


@pytest.mark.parametrize(
    ("how", "sigint_ignored", "live"),
    [
        ("SIGINT", True, False),  # a background job of a script: started with SIGINT ignored
        ("SIGTERM", False, False),
        ("ctrl-c", False, True),  # in a terminal, with the live display
    ],
    ids=["sigint-to-background-job", "sigterm", "ctrl-c-in-terminal"],
)
def test_fastport_lab_run_stops_on_a_signal_and_lists_what_finished(
    tmp_path: Path, how: str, sigint_ignored: bool, live: bool
) -> None:
    cmd = [*RUN, "--out", str(tmp_path / "runs")] + ([] if live else ["--no-live"])
    report = die(tmp_path, cmd, how, files=FIRST_SCENARIO_DONE, sigint_ignored=sigint_ignored)
    assert_clean(report)
    out = report["output"]
    assert report["exit"] == 3, out[-3000:]
    assert "interrupted" in out, out[-3000:]
    finished = list((tmp_path / "runs").glob("*/results.json"))
    assert len(finished) == 1, out[-3000:]
    results = json.loads(finished[0].read_text())
    names = [s["name"] for s in results["scenarios"]]
    assert names, "the scenarios that finished before the signal are missing from the run"
    for name in names:
        assert name[:30] in out, f"the summary does not list {name!r}:\n{out[-3000:]}"


def test_the_watcher_finds_a_survivor_however_detached(tmp_path: Path) -> None:
    """The control: a grandchild in a session of its own outlives its SIGKILLed parent, and is found."""
    spec = {
        "cmd": ["bash", "-c", "setsid sleep 300 & exec sleep 301"],
        "how": "SIGKILL",
        "ready": {"processes": ["sleep 300"]},
        "output": str(tmp_path / "out.log"),
        "survivor_timeout": 1,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, str(WATCH), str(tmp_path / "spec.json")], capture_output=True, text=True, timeout=60
    )
    report = json.loads(done.stdout)
    assert report["exit"] == -9
    assert report["survivors"] == ["sleep 300"]
