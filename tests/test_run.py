"""``fastport-lab run`` as a user runs it: real suites in a real child pytest, a real run folder."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.suites import SUITES
from fastport_lab.gate import UsageError
from fastport_lab.run import suite_paths

ROOT_DIR = Path(__file__).resolve().parents[1]


def test_short_names_map_to_suite_modules(monkeypatch) -> None:
    assert suite_paths(["storage", "fmea3"]) == [SUITES["storage"].module, SUITES["crash"].module]
    for suite in SUITES.values():
        assert importlib.util.find_spec(suite.module) is not None, suite.module
    monkeypatch.chdir(ROOT_DIR)
    assert suite_paths(["scenarios/test_fmea4_port.py::test_port_conflict"]) == [
        "scenarios/test_fmea4_port.py::test_port_conflict"
    ]
    with pytest.raises(UsageError, match="unknown scenario 'nope'"):
        suite_paths(["nope"])


def _run(*args: str, tty: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fastport_lab.cli", "run", *args]
    if tty:  # a pseudo-terminal, so that the live display is on
        cmd = ["script", "-qec", " ".join(cmd), "/dev/null"]
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT_DIR, env=env,
                          stdin=subprocess.DEVNULL)


def test_unknown_scenario_is_an_environment_error(tmp_path) -> None:
    out = _run("nope", "--out", str(tmp_path))
    assert out.returncode == 3
    assert "unknown scenario 'nope'" in out.stdout + out.stderr


@pytest.mark.integration
def test_run_writes_a_report_and_a_summary(tmp_path) -> None:
    out = _run("port", "--out", str(tmp_path), "--no-live")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Summary" in out.stdout and "PASS" in out.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["gate"]["status"] == "pass"
    assert results["command"].startswith("fastport-lab run port")
    assert (run_dir / "index.html").is_file() and (run_dir / "junit.xml").is_file()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux 'script' is needed for a pseudo-tty")
def test_live_display_shows_scenarios_and_keeps_pytest_output(tmp_path) -> None:
    out = _run("port", "--out", str(tmp_path), tty=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "active fault" in out.stdout and "port_conflict" in out.stdout
    # the scenario's own progress reached the live table: its row ends with phase "pass", no active fault
    assert re.search(r"port_conflict\s+\W\s+(\x1b\[[0-9;]*m)*pass\s*(\x1b\[[0-9;]*m)*\s+\W\s+-", out.stdout)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert "passed" in (run_dir / "pytest.log").read_text()
