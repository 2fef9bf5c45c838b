"""The lab tests itself: each FMEA flaw of the reference broker must be caught by the right checker.

``--flaw store-first`` awaits storage before fan-out (FMEA 1), ``unguarded-fanout``
lets one subscriber's send stall or abort the fan-out (FMEA 2), ``no-hydrate``
loads nothing at start-up (FMEA 3). The same scenarios that pass against the
reference broker must here fail, through the named checker, with evidence
(:data:`chaos.suites.flaws.FLAW_MATRIX`; the expectation is recorded with the
scenario, so the gate judges it too). Only meaningful for the reference broker
with PostgreSQL; skipped otherwise.
"""

import shutil

import pytest

from chaos.suites.flaws import FLAW_MATRIX


@pytest.mark.integration
@pytest.mark.fmea("flaws")
@pytest.mark.parametrize("case", FLAW_MATRIX, ids=[c.flaw for c in FLAW_MATRIX])
def test_flaw_is_caught_by_its_checker(run_lab, lab_config, lab_session, case):
    if not lab_config.is_reference or not lab_config.durable:
        pytest.skip("the flaw matrix needs the reference broker with --store postgres")
    result = run_lab(
        case.scenario,
        lab_config.with_flaw(case.flaw),
        name=f"flaw-{case.flaw}",
        meta={"flaw": case.flaw, "expect": case.checker, "fmea": case.fmea},
    )
    assert result.error is None, result.report()
    verdict = result.verdict(case.checker)
    assert verdict.status == "fail", (
        f"--flaw {case.flaw} was not caught: the {case.checker} checker said {verdict.status}\n"
        f"{result.report()}"
    )
    assert verdict.evidence, verdict  # a failure always carries its evidence
    if not lab_session.keep_runs:
        shutil.rmtree(result.run_dir, ignore_errors=True)  # the expected failure needs no post-mortem
