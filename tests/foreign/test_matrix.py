"""The lab's own mutation matrix: a broker it did not grow up with, and seeded bugs in it.

The correct foreign broker (``python -m tests.foreign``) must pass every chaos
suite: a failure here is a false alarm of the lab. Each mutant (``--mutant
NAME``, ``tests/foreign/mutants.py``) must make the suite named for it fail
through the checker named for it, with evidence: a mutant that passes, or is
caught only by another checker, is a miss of the lab. The expectation is
recorded with each scenario (``mutant`` and ``expect``), so ``fastport-lab run``
and the gate judge a caught mutant as a pass, and the report gives the kill rate.

CI runs a fast slice (the correct broker on every suite, and one mutant per
invariant family that is cheap to run); ``pytest tests/foreign/test_matrix.py
--mutants`` or ``fastport-lab mutants`` runs all of it.
"""

from __future__ import annotations

import shlex
import shutil
import sys

import pytest

from chaos.config import LabConfig
from chaos.runner import Scenario, assert_all_pass
from chaos.suites.bad_input import bad_input
from chaos.suites.crash import crash_and_restart
from chaos.suites.port import port_conflict
from chaos.suites.storage import storage_faults
from chaos.suites.subscribers import subscriber_faults
from tests.foreign.mutants import MUTANTS, Mutant

pytestmark = pytest.mark.integration

FOREIGN = (
    shlex.join([sys.executable, "-m", "tests.foreign"])
    + " --host {host} --port {port} --store {store} --dsn {dsn}"
)
SUITES: dict[str, tuple[Scenario, int | str]] = {
    "storage faults": (storage_faults, 1),
    "subscriber faults": (subscriber_faults, 2),
    "crash/restart": (crash_and_restart, 3),
    "port": (port_conflict, 4),
    "bad input": (bad_input, "bad-input"),
}
FAST = {"store-first", "ack-dropped-in-coalesce", "non-object-crash", "bind-retry", "reencode-on-load"}


def _config(lab_config: LabConfig, mutant: str | None = None, args: tuple[str, ...] = ()) -> LabConfig:
    cmd = FOREIGN if mutant is None else f"{FOREIGN} --mutant {mutant}"
    cmd = shlex.join([*shlex.split(cmd), *args])
    return LabConfig(broker_cmd=cmd, store=lab_config.store, intensity=lab_config.intensity)


# The correct broker with every suite, and with each launch setting a mutant needs (no false alarm there).
CORRECT = [pytest.param(suite, (), id=suite) for suite in SUITES] + [
    pytest.param(m.suite, m.args, id=f"{m.suite} {' '.join(m.args)}") for m in MUTANTS if m.args
]


@pytest.mark.fmea("mutants")
@pytest.mark.parametrize(("suite", "args"), CORRECT)
def test_the_correct_foreign_broker_passes(run_lab, lab_config, suite, args):
    scenario, fmea = SUITES[suite]
    if suite == "storage faults" and not lab_config.durable:
        pytest.skip("storage faults need --store postgres")
    name = f"foreign {suite} {' '.join(args)}".strip()
    assert_all_pass(run_lab(scenario, _config(lab_config, None, args), name=name, meta={"fmea": fmea}))


def _params() -> list:
    out = []
    for m in MUTANTS:
        marks = [] if m.name in FAST else [pytest.mark.mutants]
        out.append(pytest.param(m, marks=marks, id=m.name))
    return out


@pytest.mark.fmea("mutants")
@pytest.mark.parametrize("mutant", _params())
def test_each_mutant_is_caught_by_its_checker(run_lab, lab_config, lab_session, request, mutant: Mutant):
    if request.node.get_closest_marker("mutants") and not request.config.getoption("--mutants"):
        pytest.skip("the full mutation matrix: pytest --mutants, or fastport-lab mutants")
    if not lab_config.durable:
        pytest.skip("the mutants are judged with --store postgres")
    scenario, fmea = SUITES[mutant.suite]
    result = run_lab(
        scenario,
        _config(lab_config, mutant.name, mutant.args),
        name=f"mutant-{mutant.name}",
        meta={"mutant": mutant.name, "expect": mutant.checker, "fmea": fmea},
    )
    assert result.error is None, result.report()
    verdict = result.verdict(mutant.checker)
    assert verdict.status == "fail", (
        f"mutant {mutant.name} ({mutant.bug}) was not caught: {mutant.checker} said {verdict.status}\n"
        f"{result.report()}"
    )
    assert verdict.evidence, verdict
    if not lab_session.keep_runs:
        shutil.rmtree(result.run_dir, ignore_errors=True)  # the expected failure needs no post-mortem
