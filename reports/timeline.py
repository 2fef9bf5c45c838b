"""What a report plots from one history: a bucketed timeline, totals, and the notable events. Pure, no I/O.

Nothing here judges: verdicts and the measurements the gate holds to
thresholds (latency per phase, recovery and hydration times) are the checkers'
evidence. The timeline uses the checkers' own latency samples
(``chaos.checkers.latency.samples``: required recipient, online at
publish time, latency = publish invoke to first delivery), cut into a bounded
number of time buckets so a 100,000-event history still plots a few hundred
points: deliveries per second, and the p50 / p99 latency of the messages
published in each bucket. Times are seconds since run start, latencies ms.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from chaos.checkers.facts import Facts
from chaos.checkers.latency import samples
from chaos.checkers.stats import ms, percentile
from chaos.history import FaultWindow, History

MAX_BUCKETS = 150  # the timeline never has more points than this, whatever the history's size
MIN_BUCKET_S = 0.1


def bucket_width(duration: float, max_buckets: int = MAX_BUCKETS) -> float:
    """A round-ish width so that *duration* fits in at most *max_buckets* buckets."""
    if duration <= 0:
        return MIN_BUCKET_S
    raw = max(duration / max_buckets, MIN_BUCKET_S)
    for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if step >= raw:
            return float(step)
    return math.ceil(raw / 600) * 600.0


def timeline(history: History, facts: Facts | None = None, max_buckets: int = MAX_BUCKETS) -> dict[str, Any]:
    """Bucketed series for plotting: ``t`` (bucket start), delivery rate, p50/p99, lost, and fault windows."""
    facts = facts or Facts(history)
    start, end = history.start, history.end
    width = bucket_width(end - start, max_buckets)
    n = max(1, min(max_buckets, math.ceil((end - start) / width) or 1))

    def bucket(t: np.ndarray) -> np.ndarray:
        return np.clip(((t - start) / width).astype(np.int64), 0, n - 1)

    delivered = np.bincount(bucket(facts.deliver_cols["time"]), minlength=n)
    s = samples(facts)
    b = bucket(s.invoke)
    finite = np.isfinite(s.latency)
    lost = np.bincount(b[~finite], minlength=n)
    lat = s.latency[finite]
    o = np.argsort(b[finite], kind="stable")
    per = np.split(lat[o], np.cumsum(np.bincount(b[finite], minlength=n))[:-1])
    return {
        "bucket_s": width,
        "t": [round(i * width, 6) for i in range(n)],
        "delivery_rate": [round(int(d) / width, 3) for d in delivered],
        "p50_ms": [ms(percentile(v, 50)) if len(v) else None for v in per],
        "p99_ms": [ms(percentile(v, 99)) if len(v) else None for v in per],
        "samples": [len(v) for v in per],
        "lost": [int(x) for x in lost],
        "faults": [window_span(w, history) for w in history.fault_windows()],
        "run_s": history.rel(end),
    }


def window_span(w: FaultWindow, history: History) -> dict[str, Any]:
    return {
        "name": w.name,
        "start_s": history.rel(w.start),
        "end_s": history.rel(w.end if w.end is not None else history.end),
        "open": w.end is None,
        "effective": w.effective,
    }


def counts(history: History, facts: Facts | None = None) -> dict[str, Any]:
    """Messages, deliveries and duplicate deliveries: the totals under a scenario's phase table."""
    facts = facts or Facts(history)
    return {
        "run_s": history.rel(history.end),
        "events": len(history),
        "messages": facts.n_messages,
        "deliveries": len(facts.dv_rows),
        "duplicate_deliveries": int((facts.dg_count - 1).sum()),
    }


NOTABLE = (
    "fault-start",
    "fault-stop",
    "launch",
    "signal",
    "exit",
    "disconnect",
    "error",
    "settle-timeout",
    "persist-timeout",
)
MAX_NOTABLE = 2000


def notable_events(history: History, limit: int = MAX_NOTABLE) -> dict[str, Any]:
    """Faults, launches, signals, exits, disconnects and errors: the story of a run, for a paged table."""
    evs = history.by_f(*NOTABLE)
    rows = [
        {
            "t_s": history.rel(e.time),
            "process": e.process,
            "type": e.type,
            "f": e.f,
            "detail": _detail(e.value),
        }
        for e in evs[:limit]
    ]
    return {"total": len(evs), "rows": rows}


def _detail(value: Any, limit: int = 200) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items() if k != "stderr")
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
