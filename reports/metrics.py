"""Metrics a report plots and a gate judges, derived from one history: pure, no I/O.

Two views of the same (message, recipient) samples the checkers use (required
recipient, online at publish time, latency = publish invoke to first delivery,
``chaos.checkers.facts``):

* a **timeline** in a bounded number of time buckets (so a 100,000-event
  history still plots a few hundred points): deliveries per second, and the
  p50 / p99 latency of the messages published in each bucket;
* **phases**: the no-fault baseline and each fault window, with latency,
  completeness, and how long delivery took to be normal again after the fault
  (``recovery_s``) and, after a crash, to redeliver what was owed (``hydration_s``).

Times are seconds since run start, latencies milliseconds, as in verdict evidence.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

from chaos.checkers.facts import Facts
from chaos.checkers.verdict import ms, percentile
from chaos.history import FaultWindow, History

MAX_BUCKETS = 150  # the timeline never has more points than this, whatever the history's size
MIN_BUCKET_S = 0.1
CRASH_FAULTS = ("kill", "crash", "sigkill")


@dataclass(frozen=True, slots=True)
class Sample:
    published: float  # publish invoke, absolute history time
    recipient: str
    msg_id: str
    latency: float  # seconds; inf when never delivered


def samples(facts: Facts) -> list[Sample]:
    """Every judged (message, recipient) pair, in publish order (the checkers' own definition)."""
    out: list[Sample] = []
    for m in sorted(facts.messages.values(), key=lambda m: m.invoke_time):
        if m.ok_time is None:
            continue
        required, _ = facts.recipients(m)
        for c in required:
            if facts.online(c, m.invoke_time):
                out.append(Sample(m.invoke_time, c, m.id, facts.latency(m, c)))
    return out


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
    delivered = [0] * n
    for ev in history.by_f("deliver"):
        delivered[min(n - 1, max(0, int((ev.time - start) / width)))] += 1
    lat: list[list[float]] = [[] for _ in range(n)]
    lost = [0] * n
    for s in samples(facts):
        i = min(n - 1, max(0, int((s.published - start) / width)))
        if math.isfinite(s.latency):
            lat[i].append(s.latency)
        else:
            lost[i] += 1
    return {
        "bucket_s": width,
        "t": [round(i * width, 6) for i in range(n)],
        "delivery_rate": [round(d / width, 3) for d in delivered],
        "p50_ms": [ms(percentile(v, 50)) if v else None for v in lat],
        "p99_ms": [ms(percentile(v, 99)) if v else None for v in lat],
        "samples": [len(v) for v in lat],
        "lost": lost,
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


def _latency(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    return {
        "samples": len(values),
        "undelivered": len(values) - len(finite),
        "p50_ms": ms(percentile(finite, 50)) if finite else None,
        "p99_ms": ms(percentile(finite, 99)) if finite else None,
        "max_ms": ms(max(finite)) if finite else None,
    }


def phases(history: History, facts: Facts | None = None) -> dict[str, Any]:
    """Baseline and per-fault-window metrics, plus totals (deliveries, duplicates)."""
    facts = facts or Facts(history)
    windows = history.fault_windows()
    end = history.end
    all_samples = samples(facts)
    baseline = [s.latency for s in all_samples if not any(w.contains(s.published, end) for w in windows)]
    base = _latency(baseline)
    base_bound = (base["p99_ms"] or 0) / 1000 if base["p99_ms"] is not None else None
    deliveries = sum(len(v) for v in facts.deliveries.values())
    out_windows = []
    by_message: dict[str, list[Sample]] = {}
    for s in all_samples:
        by_message.setdefault(s.msg_id, []).append(s)
    published_order = sorted(by_message.items(), key=lambda kv: kv[1][0].published)
    publish_times = [v[0].published for _, v in published_order]
    deliver_times = sorted(ev.time for ev in history.by_f("deliver"))
    for w in windows:
        in_w = [s.latency for s in all_samples if w.contains(s.published, end)]
        stop = w.end if w.end is not None else end
        row: dict[str, Any] = window_span(w, history) | {
            "duration_s": round(stop - w.start, 6),
            "latency": _latency(in_w),
            "deliveries": bisect_right(deliver_times, stop) - bisect_left(deliver_times, w.start),
        }
        row["delivery_rate"] = round(row["deliveries"] / (stop - w.start), 3) if stop > w.start else None
        row["recovery_s"] = _recovery(published_order, publish_times, stop, base_bound)
        if w.name in CRASH_FAULTS:
            row["hydration_s"] = _hydration(facts, w, stop)
        out_windows.append(row)
    return {
        "run_s": history.rel(end),
        "events": len(history),
        "messages": len(facts.messages),
        "deliveries": deliveries,
        "duplicate_deliveries": sum(len(v) - 1 for v in facts.deliveries.values() if len(v) > 1),
        "baseline": base,
        "windows": out_windows,
    }


def _recovery(
    published: list[tuple[str, list[Sample]]], times: list[float], stop: float, bound: float | None
) -> float | None:
    """Seconds from the fault's stop until a message published after it reached every recipient within
    the baseline p99 (or at all, without a baseline): when delivery was normal again. None if never."""
    for _, group in published[bisect_left(times, stop) :]:
        lats = [s.latency for s in group]
        if all(math.isfinite(v) and (bound is None or v <= bound) for v in lats):
            return round(group[0].published + max(lats) - stop, 6)
    return None


def _hydration(facts: Facts, w: FaultWindow, restart: float) -> float | None:
    """Seconds from the restart until the last redelivery of a pair persisted and unacked before the crash."""
    last = None
    for (c, mid), evs in facts.deliveries.items():
        m = facts.messages.get(mid)
        if m is None or m.persisted_time is None or m.persisted_time > w.start:
            continue
        acked = facts.acks.get((c, mid))
        if acked is not None and acked <= w.start:
            continue
        after = next((e.time for e in evs if e.time > w.start), None)
        if after is not None:
            last = after if last is None else max(last, after)
    return None if last is None else round(max(0.0, last - restart), 6)


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
