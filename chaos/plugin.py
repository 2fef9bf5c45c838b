"""The lab's pytest plugin: active wherever fastport-lab is installed (the ``pytest11`` entry point).

Options (each also an environment variable, so CI and the CLI drive the same run):

=======================  ============================  =====================================
option                   environment variable          meaning
=======================  ============================  =====================================
``--broker-cmd CMD``     ``FASTPORT_LAB_BROKER_CMD``   the broker's launch command, with
                                                       ``{host} {port} {dsn} {store}``
``--store S``            ``FASTPORT_LAB_STORE``        ``memory`` or ``postgres`` (default)
``--intensity I``        ``FASTPORT_LAB_INTENSITY``    ``smoke``, ``default`` or ``heavy``
``--backend B``          ``FASTPORT_LAB_BACKEND``      ``embedded`` (default) or ``docker``
``--broker-image IMG``   ``FASTPORT_LAB_BROKER_IMAGE`` the broker as a container of IMG
``--run-dir DIR``        ``FASTPORT_LAB_RUN_DIR``      where each scenario's folder goes
``--schedule JSON``      ``FASTPORT_LAB_SCHEDULE``     replay one generated fault schedule
=======================  ============================  =====================================

Markers: ``fmea(mode)`` (the FMEA mode a test covers; it is recorded with the
scenario) and ``integration``.

Fixtures:

``lab_config`` (session)  what is tested: a :class:`chaos.config.LabConfig`.
``lab_session`` (session) one PostgreSQL and one fault proxy for the whole run (per
                          xdist worker); its teardown fails the run if a broker survived.
``lab`` (async)           a fresh :class:`chaos.environment.Lab` for one test: its own
                          database, proxy and broker, torn down after the test; the
                          test's history and verdicts are written to its folder.
``nemesis``               a :class:`chaos.nemesis.Nemesis` on ``lab``.
``history``, ``facts``    ``lab``'s history, and a callable giving its checker facts now.
``judge``                 ``judge(*verdicts)``: record the verdicts with the test and fail
                          it, with the evidence, unless every applicable one passed.
``run_lab``               ``run_lab(scenario) -> ScenarioResult``: run a built-in style
                          scenario function on a fresh lab in its own event loop (sync tests).
``record_scenario``       ``record_scenario(lab, verdicts, duration=S) -> ScenarioResult``:
                          keep a lab the test drove itself as the test's scenario (its
                          folder, for the gate and the report), as ``lab`` does.

Async tests that use ``lab`` or ``nemesis`` are run by pytest-asyncio without a
marker of their own.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from chaos.checkers.facts import Facts
from chaos.checkers.verdict import Verdict
from chaos.config import BACKENDS, ENV_RUN_DIR, INTENSITIES, LabConfig, LabConfigError, run_root
from chaos.environment import Lab, LabSession
from chaos.history import History
from chaos.nemesis import Nemesis
from chaos.runner import (
    Scenario,
    ScenarioResult,
    assert_all_pass,
    finish_scenario,
    run_scenario,
    scenario_folder,
)

ASYNC_FIXTURES = frozenset({"lab", "nemesis", "history", "facts", "judge"})
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_VERDICTS = pytest.StashKey[list[Verdict]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastport-lab", "FastPort Lab chaos suites")
    group.addoption("--broker-cmd", default=None, help="launch command of the broker under test")
    group.addoption("--store", default=None, choices=("memory", "postgres"), help="broker store")
    group.addoption("--intensity", default=None, choices=INTENSITIES, help="workload size (default: default)")
    group.addoption(
        "--backend", default=None, choices=BACKENDS, help="embedded (default) or docker containers"
    )
    group.addoption("--broker-image", default=None, help="run the broker as a container of this image")
    group.addoption("--run-dir", default=None, help="folder for run histories and verdicts")
    group.addoption("--schedule", default=None, help="JSON fault schedule to replay (test_schedules)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fmea(mode): the FMEA failure mode a scenario covers")
    config.addinivalue_line("markers", "integration: uses real sockets, processes or PostgreSQL")


@pytest.hookimpl(hookwrapper=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> Iterator[None]:
    """Mark ``async def test_...(lab, ...)`` for pytest-asyncio before it collects the function."""
    if inspect.iscoroutinefunction(obj) and not any(
        m.name == "asyncio" for m in getattr(obj, "pytestmark", [])
    ):
        with contextlib.suppress(TypeError, ValueError):
            if ASYNC_FIXTURES & set(inspect.signature(obj).parameters):
                pytest.mark.asyncio(obj)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(_REPORTS, {})[report.when] = report


def _fmea(node: pytest.Item) -> int | str | None:
    marker = node.get_closest_marker("fmea")
    return marker.args[0] if marker is not None and marker.args else None


@pytest.fixture(scope="session")
def lab_config(request: pytest.FixtureRequest) -> LabConfig:
    try:
        return LabConfig.resolve(
            request.config.getoption("--broker-cmd"),
            request.config.getoption("--store"),
            intensity=request.config.getoption("--intensity"),
            backend=request.config.getoption("--backend"),
            broker_image=request.config.getoption("--broker-image"),
        )
    except LabConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def lab_session(request: pytest.FixtureRequest, lab_config: LabConfig) -> Iterator[LabSession]:
    given = request.config.getoption("--run-dir") or os.environ.get(ENV_RUN_DIR)
    root = run_root({ENV_RUN_DIR: given} if given else {})
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    run_dir = root / worker if worker else root
    run_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM (CI cancelling a job, `timeout`) would end Python without teardown or atexit;
    # treat it like Ctrl-C so every fixture and lab tears down.
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    session = LabSession.open(
        run_dir, keep_runs=bool(given), backend=lab_config.backend, broker_image=lab_config.broker_image
    )
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
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def run_lab(
    request: pytest.FixtureRequest, lab_session: LabSession, lab_config: LabConfig
) -> Callable[..., ScenarioResult]:
    """``run_lab(scenario, config=None, name=None, meta=None) -> ScenarioResult`` on a fresh lab."""

    def run(
        scenario: Scenario,
        config: LabConfig | None = None,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> ScenarioResult:
        m = {"nodeid": request.node.nodeid, "fmea": _fmea(request.node), **(meta or {})}
        return run_scenario(scenario, lab_session, config or lab_config, name=name, meta=m)

    return run


@pytest.fixture
def record_scenario(request: pytest.FixtureRequest) -> Callable[..., ScenarioResult]:
    """``record_scenario(lab, verdicts, *, duration, error=None, meta=None) -> ScenarioResult``.

    For a test that runs a :class:`Lab` of its own (the protocol fuzzer keeps one in a thread of its
    own): without a scenario folder the gate and the report never see the test's verdicts.
    """

    def record(
        lab: Lab,
        verdicts: list[Verdict],
        *,
        duration: float,
        error: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> ScenarioResult:
        m = {"nodeid": request.node.nodeid, "fmea": _fmea(request.node), **(meta or {})}
        run_dir = scenario_folder(lab.session, lab.name)
        return finish_scenario(lab, list(verdicts), run_dir=run_dir, duration=duration, error=error, meta=m)

    return record


@pytest_asyncio.fixture
async def lab(
    request: pytest.FixtureRequest, lab_session: LabSession, lab_config: LabConfig
) -> AsyncIterator[Lab]:
    """A fresh lab for one async test; its history and judged verdicts go to the test's folder."""
    name = request.node.name
    run_dir = scenario_folder(lab_session, name)
    the_lab = Lab(lab_session, lab_config, name=name, history=History())
    the_lab.attach_progress()
    request.node.stash[_VERDICTS] = []
    t0 = time.monotonic()
    async with the_lab:
        yield the_lab
    reports = request.node.stash.get(_REPORTS, {})
    call = reports.get("call")
    verdicts = request.node.stash.get(_VERDICTS, [])
    error = None
    if call is not None and call.failed and not verdicts:
        error = (call.longreprtext.strip().splitlines() or ["the test failed"])[-1][:500]
    finish_scenario(
        the_lab,
        verdicts,
        run_dir=run_dir,
        duration=time.monotonic() - t0,
        error=error,
        meta={"nodeid": request.node.nodeid, "fmea": _fmea(request.node)},
    )


@pytest.fixture
def nemesis(lab: Lab) -> Nemesis:
    return Nemesis(lab)


@pytest.fixture
def history(lab: Lab) -> History:
    return lab.history


@pytest.fixture
def facts(lab: Lab) -> Callable[[], Facts]:
    """``facts()``: the checkers' facts over the history recorded so far."""
    return lab.facts


@pytest.fixture
def judge(request: pytest.FixtureRequest, lab: Lab) -> Callable[..., None]:
    """``judge(*verdicts)``: keep them with the test (report, gate) and fail unless all applicable passed."""

    def judge_(*verdicts: Verdict) -> None:
        if not verdicts:
            raise ValueError("judge() needs at least one verdict")
        bad = [v for v in verdicts if not isinstance(v, Verdict)]
        if bad:
            raise TypeError(f"judge() takes Verdicts (from chaos.checkers), got {bad[0]!r}")
        request.node.stash.setdefault(_VERDICTS, []).extend(verdicts)
        result = ScenarioResult(
            lab.name, lab.config, list(verdicts), lab.history, Path(lab.session.run_dir), 0.0, notes=lab.notes
        )
        assert_all_pass(result)

    return judge_
