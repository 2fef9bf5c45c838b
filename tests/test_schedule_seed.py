"""``--seed N`` reaches the generated fault schedules; a generated schedule's reproduce command replays it.

Real pytest runs of ``scenarios/test_schedules.py`` (memory store: no kills, a
few seconds each) with ``FASTPORT_LAB_SEED``, as ``fastport-lab run --seed``
exports it, and the report's reproduce command run as it is printed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.suites.schedules import ENV_SEED, ScheduleError, seed_from_env
from reports.record import reproduce_scenario

ROOT = Path(__file__).resolve().parents[1]
MODULE = "scenarios/test_schedules.py"


def test_the_seed_comes_from_the_environment() -> None:
    assert seed_from_env({}) is None and seed_from_env({ENV_SEED: " "}) is None
    assert seed_from_env({ENV_SEED: "17"}) == 17 and seed_from_env({ENV_SEED: "-3"}) == -3
    with pytest.raises(ScheduleError, match="FASTPORT_LAB_SEED must be an integer .* got 'seven'"):
        seed_from_env({ENV_SEED: "seven"})


def test_a_generated_schedule_is_reproduced_by_replaying_it() -> None:
    steps = [{"op": "publish", "n": 30}, {"op": "broker-pause", "n": 2}]
    meta = {"nodeid": f"{MODULE}::test_generated_schedules", "schedule": steps, "seed": 5}
    args = shlex.split(reproduce_scenario(meta, "mybroker --port {port}", "memory"))
    assert args[:3] == ["./lab", "test", MODULE]  # the module: its replay test takes the schedule
    assert json.loads(args[args.index("--schedule") + 1]) == steps
    plain = {"nodeid": "scenarios/test_fmea4_port.py::test_port_conflict"}
    assert shlex.split(reproduce_scenario(plain, None, None))[2] == plain["nodeid"]


def _pytest(run_dir: Path, *args: str, seed: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTPORT_LAB_", "PYTEST_"))}
    env["FASTPORT_LAB_SCHEDULE_EXAMPLES"] = "2"
    if seed is not None:
        env[ENV_SEED] = seed
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", f"--run-dir={run_dir}"]
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def _drawn(run_dir: Path) -> list[dict]:
    bodies = [json.loads(p.read_text()) for p in run_dir.rglob("verdicts.json")]
    return sorted(bodies, key=lambda b: json.dumps(b["schedule"]))


@pytest.mark.integration
def test_the_seed_draws_other_schedules_reproducibly_and_is_recorded(tmp_path) -> None:
    drawn = {}
    for run, seed in (("default", None), ("seed-a", "11"), ("seed-b", "11"), ("other", "12")):
        out = _pytest(tmp_path / run, MODULE, "--store", "memory", seed=seed)
        assert out.returncode == 0, out.stdout + out.stderr
        drawn[run] = _drawn(tmp_path / run)
        assert len(drawn[run]) == 2
    assert all("seed" not in b for b in drawn["default"])  # derandomized: no seed to record
    assert {b["seed"] for b in drawn["seed-a"] + drawn["other"]} == {11, 12}
    schedules = {run: [b["schedule"] for b in bodies] for run, bodies in drawn.items()}
    assert schedules["seed-a"] == schedules["seed-b"]  # the same seed, the same schedules
    assert schedules["seed-a"] != schedules["default"] and schedules["seed-a"] != schedules["other"]


@pytest.mark.integration
def test_a_bad_seed_is_refused_clearly(tmp_path) -> None:
    out = _pytest(tmp_path, f"{MODULE}::test_generated_schedules", "--store", "memory", seed="x1")
    assert out.returncode == 1
    assert "bad FASTPORT_LAB_SEED: FASTPORT_LAB_SEED must be an integer" in out.stdout


@pytest.mark.integration
def test_the_reproduce_command_of_a_generated_schedule_replays_it(tmp_path) -> None:
    steps = [{"op": "publish", "n": 30}, {"op": "broker-pause", "n": 2}]
    meta = {"nodeid": f"{MODULE}::test_generated_schedules", "schedule": steps, "seed": 3}
    args = shlex.split(reproduce_scenario(meta, None, "memory"))
    assert args[:2] == ["./lab", "test"]  # ./lab test ARGS is pytest ARGS
    out = _pytest(tmp_path, *args[2:])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 1 skipped" in out.stdout and "replaying one given schedule instead" in out.stdout
    (body,) = _drawn(tmp_path)
    assert body["schedule"] == steps and body["scenario"].startswith("replay schedule")
