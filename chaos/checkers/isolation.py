"""FMEA 2: a failing, slow or disconnecting subscriber must not stop or delay the others.

The faulty subscribers are the ``targets`` of fault windows (recorded by the
nemesis, or by a client that misbehaves on purpose, e.g. ``Subscriber.pause_reading``).
Every other subscriber is healthy: for messages published during such a window,
each healthy online recipient must get it, with p99 latency within
``factor x baseline p99 + slack``. Unknown without a targeted window, when the
fault did not take effect, or with too few samples.
"""

from __future__ import annotations

from collections.abc import Collection

from chaos.checkers.facts import Facts, facts_of
from chaos.checkers.latency import compare_latency
from chaos.checkers.verdict import Verdict, unknown
from chaos.history import History

NAME = "isolation"


def check_isolation(
    history: History | Facts,
    *,
    faults: Collection[str] | None = None,
    factor: float = 2.0,
    slack: float = 0.050,
    min_samples: int = 10,
    require_effective: bool = True,
) -> Verdict:
    facts = facts_of(history)
    windows = [w for w in facts.history.fault_windows() if w.targets and (faults is None or w.name in faults)]
    faulty = sorted({t for w in windows for t in w.targets})
    healthy = [c for c in facts.subscribers if c not in faulty]
    if windows and not healthy:
        return unknown(
            NAME,
            f"every subscriber ({', '.join(faulty)}) was a fault target, so no healthy "
            "subscriber is left to show isolation; keep at least one untouched.",
            faulty_subscribers=faulty,
            healthy_subscribers=[],
        )
    return compare_latency(
        NAME,
        facts,
        windows,
        lambda c: c not in faulty,
        factor=factor,
        slack=slack,
        min_samples=min_samples,
        what="subscriber-isolation",
        require_effective=require_effective,
        extra={"faulty_subscribers": faulty, "healthy_subscribers": healthy},
    )
