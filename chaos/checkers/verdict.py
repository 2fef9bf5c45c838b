"""What every checker returns: a status, a sentence a new user can act on, and evidence.

A verdict is ``pass``, ``fail`` or ``unknown``. Unknown is not a soft pass: it
means the run could not show the invariant either way (no fault landed, too few
samples, nothing to check), and the summary says why so the run can be fixed.
Evidence holds plain JSON values only (ids, counts, latencies in ms, times in
seconds since run start) so a report can print it as it is.

A verdict whose evidence carries :data:`NOT_APPLICABLE` is an ``unknown`` that
cannot apply here (a memory store has no storage to break): shown, never
counted against the run. It is made by :func:`not_applicable` and recognised by
:func:`is_not_applicable`, here and only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "unknown"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "unknown")
NOT_APPLICABLE = "not-applicable"  # evidence key: the check cannot apply to this broker/store, and why


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


def not_applicable(name: str, why: str) -> Verdict:
    """A check that cannot apply to this broker or store; shown in reports, not counted as a problem."""
    return Verdict(name, "unknown", f"not applicable here: {why}", {NOT_APPLICABLE: True})


def is_not_applicable(verdict: Verdict | Mapping[str, Any]) -> bool:
    """True for :func:`not_applicable` verdicts, as objects or as recorded dicts."""
    if isinstance(verdict, Verdict):
        status, ev = verdict.status, verdict.evidence
    else:
        status, ev = verdict.get("status"), verdict.get("evidence")
    return status == "unknown" and isinstance(ev, Mapping) and bool(ev.get(NOT_APPLICABLE))
