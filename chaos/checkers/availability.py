"""FMEA 1: storage slow or down must not stop or slow real-time delivery.

Deliveries to online subscribers of messages published while a storage fault is
active must all arrive, with p99 publish-to-deliver latency within
``factor x baseline p99 + slack`` (default 2x + 50 ms), and, in a window of
injected storage latency L well above the baseline's p99, under L itself: a
delivery that takes as long as the storage latency waited on storage, however
slow the baseline already was (a broker that writes first is slow at baseline
too, which a ratio forgives). Storage windows are those
the nemesis recorded with ``family`` storage. Unknown when no storage fault window
exists, a window's fault did not take effect (or was not confirmed to: its evidence
lacks ``"effective": true``), or there are too few samples.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from chaos.checkers.facts import Facts, facts_of, is_storage_window
from chaos.checkers.latency import collect, compare_latency, samples
from chaos.checkers.stats import percentile
from chaos.checkers.verdict import Verdict
from chaos.history import FaultWindow, History

NAME = "availability-under-storage-faults"


def injected_latency(w: FaultWindow) -> float | None:
    """The storage latency a ``latency`` toxic window injected, in seconds (None for other faults)."""
    if w.evidence.get("toxic") != "latency":
        return None
    attrs = w.evidence.get("attributes") or {}
    lat = attrs.get("latency") if isinstance(attrs, dict) else None
    return lat / 1000 if isinstance(lat, (int, float)) and lat > 0 else None


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
    lat = samples(facts).latency[collect(facts, [], None)[0]]
    base = lat[np.isfinite(lat)]
    base_p99 = percentile(base, 99) if len(base) else None

    def ceiling(w: FaultWindow) -> float | None:
        # Deliveries as slow as the storage latency injected (where that is well above normal
        # delivery latency) waited on storage, whatever the ratio to a baseline that storage slows too.
        lat = injected_latency(w)
        return lat if lat is not None and base_p99 is not None and base_p99 < lat / 2 else None

    return compare_latency(
        NAME,
        facts,
        windows,
        None,
        factor=factor,
        slack=slack,
        min_samples=min_samples,
        what="storage",
        require_effective=require_effective,
        ceiling=ceiling,
    )
