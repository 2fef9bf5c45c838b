"""The lab tests itself: each FMEA flaw of the reference broker must be caught by the right checker.

``--flaw store-first`` awaits storage before fan-out (FMEA 1), ``unguarded-fanout``
lets one subscriber's send stall or abort the fan-out (FMEA 2), ``no-hydrate``
loads nothing at start-up (FMEA 3). The same scenario functions that pass against
the reference broker must here fail, through the named checker, with evidence.
Only meaningful for the reference broker with PostgreSQL; skipped otherwise.
"""

from __future__ import annotations

import shutil

import pytest

from scenarios.test_fmea1_storage import storage_faults
from scenarios.test_fmea2_subscribers import subscriber_faults
from scenarios.test_fmea3_crash import crash_and_restart

MATRIX = [
    pytest.param("store-first", storage_faults, "availability-under-storage-faults", id="store-first"),
    pytest.param("unguarded-fanout", subscriber_faults, "isolation", id="unguarded-fanout"),
    pytest.param("no-hydrate", crash_and_restart, "hydration", id="no-hydrate"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("flaw", "scenario", "checker"), MATRIX)
def test_flaw_is_caught_by_its_checker(run_lab, lab_config, lab_session, flaw, scenario, checker):
    if not lab_config.is_reference or not lab_config.durable:
        pytest.skip("the flaw matrix needs the reference broker with --store postgres")
    result = run_lab(scenario, lab_config.with_flaw(flaw), name=f"flaw-{flaw}")
    assert result.error is None, result.report()
    verdict = result.verdict(checker)
    assert verdict.status == "fail", (
        f"--flaw {flaw} was not caught: the {checker} checker said {verdict.status}\n{result.report()}"
    )
    assert verdict.evidence, verdict  # a failure always carries its evidence
    if not lab_session.keep_runs:
        shutil.rmtree(result.run_dir, ignore_errors=True)  # the expected failure needs no post-mortem
