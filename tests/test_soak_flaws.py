"""The soak, short, on the reference broker's flaws: it must fail FMEA 1 and FMEA 2 as built.

The lab testing itself (as the flaw matrix does for the suites): a soak that passes a broker
whose fan-out waits on a stalled reader, or whose publish waits on storage, proves nothing.
"""

import shutil

import pytest

from chaos.suites.soak import SoakPlan, soak_scenario

# The checker that must fail the soak on a flaw of the reference broker, and the fault cycles that
# expose it (the 100-cycle soak draws them all; docs/reliability.md has its figures on each flaw).
# --flaw no-hydrate is left to the crash suite, the flaw matrix and the load run: the soak
# fails it too (docs/reliability.md), but only after its final 30 s wait for what the flaw lost.
CAUGHT_BY = {
    "store-first": ("availability-under-storage-faults", ("storage-latency", "storage-down")),
    "unguarded-fanout": ("isolation", ("link-reset", "subscriber-slow")),
}


@pytest.mark.integration
@pytest.mark.fmea("soak")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("flaw", sorted(CAUGHT_BY))
def test_a_short_soak_fails_the_flaw(run_lab, lab_config, lab_session, flaw):
    """The soak on its own catches FMEA 1 and FMEA 2 as built: a soak that passes them proves nothing."""
    if not lab_config.is_reference or not lab_config.durable:
        pytest.skip("the flaws are the reference broker's, judged with --store postgres")
    checker, draws = CAUGHT_BY[flaw]
    result = run_lab(
        soak_scenario(SoakPlan(cycles=len(draws), per_cycle=40, draws=draws)),
        lab_config.with_flaw(flaw),
        name=f"soak-flaw-{flaw}",
        meta={"flaw": flaw, "expect": checker, "fmea": "soak"},
    )
    assert result.error is None, result.report()
    verdict = result.verdict(checker)
    missed = f"the soak missed --flaw {flaw}: {checker} said {verdict.status}"
    assert verdict.status == "fail", f"{missed}\n{result.report()}"
    if not lab_session.keep_runs:
        shutil.rmtree(result.run_dir, ignore_errors=True)
