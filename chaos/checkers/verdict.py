"""What every checker returns: a status, a sentence a new user can act on, and evidence.

A verdict is ``pass``, ``fail`` or ``unknown``. Unknown is not a soft pass: it
means the run could not show the invariant either way (no fault landed, too few
samples, nothing to check), and the summary says why so the run can be fixed.
Evidence holds plain JSON values only (ids, counts, latencies in ms, times in
seconds since run start) so a report can print it as it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "unknown"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "unknown")
MAX_LISTED = 20  # evidence lists are cut to this many items (the count is always complete)


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    status: Status
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"verdict status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary, "evidence": self.evidence}

    def __str__(self) -> str:
        return f"[{self.status.upper()}] {self.name}: {self.summary}"


def passed(name: str, summary: str, **evidence: Any) -> Verdict:
    return Verdict(name, "pass", summary, evidence)


def failed(name: str, summary: str, **evidence: Any) -> Verdict:
    return Verdict(name, "fail", summary, evidence)


def unknown(name: str, summary: str, **evidence: Any) -> Verdict:
    return Verdict(name, "unknown", summary, evidence)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of *values* (sorted or not); inf stays inf (an undelivered pair)."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    k = max(0, math.ceil(p / 100 * len(s)) - 1)
    return s[k]


def ms(seconds: float | None) -> float | None:
    """Seconds to rounded milliseconds for evidence; inf/None become None (JSON has no inf)."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(seconds * 1000, 3)


def latency_summary(values: Sequence[float]) -> dict[str, Any]:
    """Count, p50/p99/max in ms, and how many samples never arrived (inf)."""
    finite = [v for v in values if math.isfinite(v)]
    out: dict[str, Any] = {"samples": len(values), "undelivered": len(values) - len(finite)}
    if values:
        out.update(
            p50_ms=ms(percentile(values, 50)),
            p99_ms=ms(percentile(values, 99)),
            max_ms=ms(max(finite)) if finite else None,
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
