"""FMEA 1: storage slow or down must not stop or slow real-time delivery.

Deliveries to online subscribers of messages published while a storage fault is
active must all arrive, with p99 publish-to-deliver latency within
``factor x baseline p99 + slack`` (default 2x + 50 ms). Storage windows are those
the nemesis recorded with ``family`` storage. Unknown when no storage fault window
exists, a window's fault did not take effect (or was not confirmed to: its evidence
lacks ``"effective": true``), or there are too few samples.
"""

from __future__ import annotations

from collections.abc import Collection

from chaos.checkers.facts import Facts, facts_of, is_storage_window
from chaos.checkers.latency import compare_latency
from chaos.checkers.verdict import Verdict
from chaos.history import History

NAME = "availability-under-storage-faults"


def check_availability(
    history: History | Facts,
    *,
    faults: Collection[str] | None = None,
    factor: float = 2.0,
    slack: float = 0.050,
    min_samples: int = 10,
    require_effective: bool = True,
) -> Verdict:
    """Judge every storage fault window; *faults* names them explicitly instead of the default selector."""
    facts = facts_of(history)
    windows = [
        w
        for w in facts.history.fault_windows()
        if (w.name in faults if faults is not None else is_storage_window(w))
    ]
    return compare_latency(
        NAME,
        facts,
        windows,
        lambda _c: True,
        factor=factor,
        slack=slack,
        min_samples=min_samples,
        what="storage",
        require_effective=require_effective,
    )
