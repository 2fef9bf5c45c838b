"""``soak`` and ``load`` when the lab cannot start: the run's environment error, exit 3, a report.

Both run their one scenario through :func:`fastport_lab.single_run.run_alone`; an unreachable
PostgreSQL (an external DSN nobody answers) must end as the gate's "could not run", never as a
traceback or a verdict. Real subprocesses, real exit codes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEAD_DSN = "postgresql://nobody@127.0.0.1:1/none"  # port 1: refused at once


@pytest.mark.parametrize(
    "args",
    [["soak", "--cycles", "8", "--no-live"], ["load", "--faults", "none", "--duration", "20"]],
    ids=["soak", "load"],
)
def test_a_lab_that_cannot_start_is_the_environment_error(args: list[str], tmp_path: Path) -> None:
    env = dict(os.environ, FASTPORT_LAB_PG_DSN=DEAD_DSN)
    cmd = [sys.executable, "-m", "fastport_lab.cli", *args, "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    assert out.returncode == 3, text
    assert "the lab could not start" in text and "127.0.0.1:1" in text, text
    assert "Traceback" not in text, text
    runs = [p for p in tmp_path.iterdir() if (p / "results.json").is_file()]
    assert len(runs) == 1 and (runs[0] / "index.html").is_file(), list(tmp_path.iterdir())
