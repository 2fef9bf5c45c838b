"""The flaw matrix as data: each ``--flaw`` of the reference broker, the suite that must expose it, and
the checker that must fail.

The expectation travels with the run: the flaw-matrix test records ``flaw`` and
``expect`` in the scenario's verdicts (``chaos.runner``), and the gate judges a
flaw scenario as passed when exactly that checker failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from chaos.checkers.availability import NAME as AVAILABILITY
from chaos.checkers.hydration import HYDRATION
from chaos.checkers.isolation import NAME as ISOLATION
from chaos.runner import Scenario
from chaos.suites.crash import crash_and_restart
from chaos.suites.storage import storage_faults
from chaos.suites.subscribers import subscriber_faults


@dataclass(frozen=True)
class FlawCase:
    flaw: str  # the reference broker's --flaw
    scenario: Scenario
    checker: str  # the verdict that must fail
    fmea: int


FLAW_MATRIX: tuple[FlawCase, ...] = (
    FlawCase("store-first", storage_faults, AVAILABILITY, 1),
    FlawCase("unguarded-fanout", subscriber_faults, ISOLATION, 2),
    FlawCase("no-hydrate", crash_and_restart, HYDRATION, 3),
)
