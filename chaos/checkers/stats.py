"""Statistics the checkers share: nearest-rank percentiles, millisecond rounding, short evidence lists.

Kept apart from the verdict type so that benchmarks and reports use the very
same percentile as the checkers (one definition of "p99" in the whole lab).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

MAX_LISTED = 20  # evidence lists are cut to this many items (the count is always complete)


def percentile(values: Sequence[float] | np.ndarray, p: float) -> float:
    """Nearest-rank percentile of *values* (sorted or not); inf stays inf (an undelivered pair).

    A numpy array is partitioned, not sorted: the same element, in linear time.
    """
    if not len(values):
        raise ValueError("percentile of no values")
    k = max(0, math.ceil(p / 100 * len(values)) - 1)
    if isinstance(values, np.ndarray):
        return float(np.partition(values, k)[k])
    return sorted(values)[k]


def ms(seconds: float | None) -> float | None:
    """Seconds to rounded milliseconds for evidence; inf/None become None (JSON has no inf)."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(float(seconds) * 1000, 3)


def latency_summary(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Count, p50/p99/max in ms, and how many samples never arrived (inf)."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    out: dict[str, Any] = {"samples": len(arr), "undelivered": len(arr) - len(finite)}
    if len(arr):
        out.update(
            p50_ms=ms(percentile(arr, 50)),
            p99_ms=ms(percentile(arr, 99)),
            max_ms=ms(float(finite.max())) if len(finite) else None,
        )
    return out


def listed(items: Iterable[Any], limit: int = MAX_LISTED) -> list[Any]:
    """The first *limit* items, for evidence lists whose full count is given beside them."""
    out = []
    for i, item in enumerate(items):
        if i >= limit:
            break
        out.append(item)
    return out
