"""Checkers: pure functions from a :class:`~chaos.history.History` to :class:`Verdict` with evidence.

One module per invariant family; ``facts`` derives what they share from the
history once, ``phases`` compares latency per fault phase. :func:`check_all`
runs every checker on one history (sharing the derived facts).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chaos.checkers.availability import check_availability
from chaos.checkers.delivery import check_at_least_once
from chaos.checkers.duplicates import check_duplicates
from chaos.checkers.facts import Facts
from chaos.checkers.hydration import check_hydration, check_no_zombies
from chaos.checkers.integrity import check_integrity, payload_checksum
from chaos.checkers.isolation import check_isolation
from chaos.checkers.startup import check_startup
from chaos.checkers.verdict import Verdict
from chaos.history import History

__all__ = [
    "Facts",
    "Verdict",
    "check_all",
    "check_at_least_once",
    "check_availability",
    "check_duplicates",
    "check_hydration",
    "check_integrity",
    "check_isolation",
    "check_no_zombies",
    "check_startup",
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
        check_no_zombies(facts, store_listing),
        check_integrity(facts),
        check_duplicates(facts),
        check_startup(history),
    ]
