"""Checkers: pure functions from a :class:`~chaos.history.History` to :class:`Verdict` with evidence.

Every verdict of the lab is decided here and only here: one module per
invariant, ``facts`` derives what they share from the history once (and
classifies fault windows by what the nemesis recorded), ``latency`` compares
publish-to-deliver latency per fault phase, ``stats`` holds the one percentile
definition. The gate (``reports.judge``) only holds recorded evidence to
thresholds. :func:`check_all` runs every history-only checker on one history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chaos.checkers.availability import check_availability
from chaos.checkers.bad_input import check_bad_input
from chaos.checkers.delivery import check_at_least_once
from chaos.checkers.digest import payload_checksum
from chaos.checkers.duplicates import check_duplicates
from chaos.checkers.facts import Facts
from chaos.checkers.hydration import check_hydration, check_no_zombies
from chaos.checkers.integrity import check_integrity
from chaos.checkers.isolation import check_isolation
from chaos.checkers.persistence import check_persistence_outcomes
from chaos.checkers.recovery import check_recovery
from chaos.checkers.resurrection import check_resurrection
from chaos.checkers.startup import check_startup
from chaos.checkers.verdict import Verdict, is_not_applicable, not_applicable
from chaos.history import History

__all__ = [
    "Facts",
    "Verdict",
    "check_all",
    "check_at_least_once",
    "check_availability",
    "check_bad_input",
    "check_duplicates",
    "check_hydration",
    "check_integrity",
    "check_isolation",
    "check_no_zombies",
    "check_persistence_outcomes",
    "check_recovery",
    "check_resurrection",
    "check_startup",
    "is_not_applicable",
    "not_applicable",
    "payload_checksum",
]


def check_all(history: History, *, store_listing: Iterable[Any] | None = None) -> list[Verdict]:
    """Every checker with its defaults; a scenario usually picks the ones its fault exercises."""
    facts = Facts(history)
    return [
        check_availability(facts),
        check_isolation(facts),
        check_at_least_once(facts),
        check_hydration(facts),
        check_resurrection(facts),
        check_no_zombies(facts, store_listing),
        check_integrity(facts),
        check_duplicates(facts),
        check_recovery(facts),
        check_startup(history),
    ]
