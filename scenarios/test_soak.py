"""The soak, short: eight fault cycles under steady traffic (``fastport-lab soak`` runs a hundred).

The scenario is :func:`chaos.suites.soak.soak_scenario`; the seed is fixed, so the
same faults are drawn on every run (every fault of the menu comes once before any
comes twice). ``FASTPORT_LAB_SOAK_CYCLES`` changes the number of cycles.
"""

import os

import pytest

from chaos.runner import assert_all_pass
from chaos.suites.soak import SoakPlan, soak_scenario

CYCLES = int(os.environ.get("FASTPORT_LAB_SOAK_CYCLES", "8"))


@pytest.mark.integration
@pytest.mark.fmea("soak")
@pytest.mark.timeout(600)
def test_short_soak_loses_nothing(run_lab, lab_config):
    plan = SoakPlan(cycles=CYCLES, seed=7, per_cycle=40)
    result = run_lab(soak_scenario(plan), name=f"soak {CYCLES} cycles seed 7")
    assert_all_pass(result)
    drawn = set(plan.faults(lab_config.durable, True))
    if lab_config.durable:
        assert {"broker-kill", "storage-down", "link-reset", "subscriber-slow"} <= drawn, drawn
