"""Fixtures for the report and gate tests: a runs folder in tmp, recorded runs, and headless Chromium."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

from reports.build import RunReport, finish
from reports.record import RunRecorder
from tests.reports.chromium import find_chromium, install_chromium
from tests.reports.histories import crash_run, crash_verdicts, storage_run, storage_verdicts

INSTALL_LOCK = Path(tempfile.gettempdir()) / "fastport-lab-chromium-install.lock"


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return tmp_path / "reports" / "runs"


def record_mixed_run(root: Path, run_id: str = "mixed") -> RunReport:
    """A realistic three-scenario run: FMEA 1 passing, FMEA 3 passing, and a caught flaw."""
    rec = RunRecorder(
        root,
        run_id=run_id,
        command=["fastport-lab", "gate", "--store", "postgres"],
        seed=42,
        broker_cmd="python -m broker --host {host} --port {port} --store {store} --dsn {dsn}",
        store="postgres",
    )
    h = storage_run()
    rec.add_scenario(
        "storage_faults", 1, h, storage_verdicts(h), {"nodeid": "scenarios/test_fmea1_storage.py::test_x"}
    )
    h = crash_run()
    rec.add_scenario("crash_and_restart", 3, h, crash_verdicts(h), duration=4.2)
    h = storage_run(fault_latency=0.6, lose={45, 50, 51})
    rec.add_scenario(
        "flaw-store-first",
        1,
        h,
        storage_verdicts(h),
        {"flaw": "store-first", "expect": "availability-under-storage-faults"},
    )
    return finish(rec)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium: found, or apt-installed when root; skipped otherwise,
    except under CI=true, where a missing browser fails the test instead."""
    in_ci = os.environ.get("CI", "").lower() == "true"
    path = find_chromium()
    why = "chromium not found"
    if path is None:
        with open(INSTALL_LOCK, "w") as lock:  # xdist workers: one apt-get at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = find_chromium()
            if path is None:
                path, why = install_chromium()
    if path is None:
        if in_ci:
            pytest.fail(f"CI=true: the report must be tested in a real browser, but {why}")
        pytest.skip(why)
    return path
