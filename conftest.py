"""Pytest wiring for the chaos suites (scenarios/): options, the lab session and the scenario runner.

Options (each also settable by environment variable, so CI and a CLI can drive the same run):

``--broker-cmd "CMD"``  (``FASTPORT_LAB_BROKER_CMD``) the broker's launch command with
                        ``{host} {port} {dsn} {store}`` placeholders; default: the reference broker.
``--store memory|postgres`` (``FASTPORT_LAB_STORE``) default ``postgres``.
``--run-dir DIR``       (``FASTPORT_LAB_RUN_DIR``) where each scenario's history and verdicts go;
                        default: a fresh temp dir, printed in every failure.
``--schedule JSON``     (``FASTPORT_LAB_SCHEDULE``) replay one generated fault schedule.

Fixtures: ``lab_config`` (session), ``lab_session`` (session: one PostgreSQL and one fault proxy
per worker; its teardown fails the run if any broker the lab started is still alive) and
``run_lab`` (call it with a scenario function to get a :class:`chaos.scenario.ScenarioResult`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chaos.environment import ENV_RUN_DIR, LabConfig, LabConfigError, LabSession, run_root
from chaos.scenario import Scenario, ScenarioResult, run_scenario


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastport-lab", "FastPort Lab chaos suites")
    group.addoption("--broker-cmd", default=None, help="launch command of the broker under test")
    group.addoption("--store", default=None, choices=("memory", "postgres"), help="broker store")
    group.addoption("--run-dir", default=None, help="folder for run histories and verdicts")
    group.addoption("--schedule", default=None, help="JSON fault schedule to replay (test_schedules)")


@pytest.fixture(scope="session")
def lab_config(request: pytest.FixtureRequest) -> LabConfig:
    try:
        return LabConfig.resolve(
            request.config.getoption("--broker-cmd"), request.config.getoption("--store")
        )
    except LabConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def lab_session(request: pytest.FixtureRequest) -> Iterator[LabSession]:
    given = request.config.getoption("--run-dir") or os.environ.get(ENV_RUN_DIR)
    root = run_root({ENV_RUN_DIR: given} if given else {})
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    run_dir = root / worker if worker else root
    run_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM (CI cancelling a job, `timeout`) would end Python without teardown or atexit and
    # orphan the brokers; treat it like Ctrl-C so every fixture and lab tears down.
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    session = LabSession.open(run_dir, keep_runs=bool(given))
    pg_pids = session.pg_pids
    try:
        yield session
    finally:
        session.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    leaked = session.leaked_processes() + [p for p in pg_pids if _alive(p)]
    if leaked:
        pytest.fail(f"the lab leaked processes (broker/postgres) still running after teardown: {leaked}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.fixture
def run_lab(lab_session: LabSession, lab_config: LabConfig) -> Callable[..., ScenarioResult]:
    """``run_lab(scenario, config=None, name=None) -> ScenarioResult`` on a fresh lab."""

    def run(scenario: Scenario, config: LabConfig | None = None, name: str | None = None) -> ScenarioResult:
        return run_scenario(scenario, lab_session, config or lab_config, name=name)

    return run
