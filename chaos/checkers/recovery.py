"""Recovery: after each fault, real-time delivery comes back, and how long that took.

Per fault window (every fault the nemesis recorded) the evidence gives its
latency and deliveries, and ``recovery_s``: from the fault's stop until the
first message published after it reached every recipient within the baseline
p99 (``factor x baseline p99 + slack``), i.e. delivery was normal again (when it
never was, the rest of the run, flagged ``normal_by_end: false``). The
baseline is the latency checkers' (``chaos.checkers.latency``): the messages
published before the first fault. The gate holds
``recovery_s`` to ``max_recovery_s`` and the baseline p99 to ``baseline_p99_ms``.

Fails when, after a fault that landed, no message published later reached all
of its recipients at all by the end of the run (delivery never resumed). A
window followed by no traffic is listed but not judged; unknown when no window
could be judged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chaos.checkers.facts import Facts, facts_of, first_per_group, window_evidence, window_mask
from chaos.checkers.latency import collect, samples
from chaos.checkers.stats import latency_summary, ms, percentile
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = "recovery"


def _recovery(times: np.ndarray, worst: np.ndarray, stop: float, bound: float | None) -> float | None:
    """Seconds from *stop* until a message published after it was delivered to all within *bound*.

    *times*: each sampled message's publish time (ascending); *worst*: its slowest sample (inf if any
    never arrived).
    """
    ok = np.isfinite(worst) if bound is None else worst <= bound
    good = np.flatnonzero(ok[np.searchsorted(times, stop, side="left") :])
    if not len(good):
        return None
    j = int(np.searchsorted(times, stop, side="left")) + int(good[0])
    return round(float(times[j]) + float(worst[j]) - stop, 6)


def check_recovery(history: History | Facts, *, factor: float = 1.0, slack: float = 0.0) -> Verdict:
    facts = facts_of(history)
    h = facts.history
    windows = h.fault_windows()
    end = facts.end
    s = samples(facts)
    starts = first_per_group(s.msg)  # a message's samples are contiguous (publish order)
    times = s.invoke[starts]
    worst = np.maximum.reduceat(s.latency, starts) if len(starts) else np.empty(0)
    base = s.latency[collect(facts, [], None)[0]]
    finite = base[np.isfinite(base)]
    bound = factor * percentile(finite, 99) + slack if len(finite) else None
    deliver_times = np.sort(facts.deliver_cols["time"])
    ev: dict[str, Any] = {
        "baseline": latency_summary(base),
        "normal_bound_ms": ms(bound),
        "windows": [],
    }
    never: list[str] = []
    judged = 0
    for w in windows:
        stop = w.end if w.end is not None else end
        in_w = s.latency[window_mask(s.invoke, w, end)]
        n_deliv = int(np.searchsorted(deliver_times, stop, side="right")) - int(
            np.searchsorted(deliver_times, w.start, side="left")
        )
        row = window_evidence(w, h) | {
            "duration_s": round(stop - w.start, 6),
            "latency": latency_summary(in_w),
            "deliveries": n_deliv,
            "delivery_rate": round(n_deliv / (stop - w.start), 3) if stop > w.start else None,
            "recovery_s": _recovery(times, worst, stop, bound),
        }
        later = int(np.searchsorted(times, stop, side="left")) < len(times)
        if later and row["recovery_s"] is None:
            # Never normal again: count the whole rest of the run, so a time budget still sees it.
            row["recovery_s"] = round(max(0.0, end - stop), 6)
            row["normal_by_end"] = False
            row["delivery_resumed"] = _recovery(times, worst, stop, None) is not None
        if w.effective is not False and later:
            judged += 1
            if row.get("delivery_resumed") is False:
                never.append(f"{w.name} at t={h.rel(w.start)}s")
        ev["windows"].append(row)
    if never:
        return failed(
            NAME,
            "delivery never resumed after " + ", ".join(never) + ": no message published after the fault "
            "reached all of its recipients by the end of the run.",
            **ev,
        )
    if not judged:
        why = "no fault window in the history" if not windows else "no message was published after a fault"
        return unknown(NAME, f"recovery not measured: {why}.", **ev)
    slowest = max((r["recovery_s"] or 0.0 for r in ev["windows"]), default=0.0)
    return passed(
        NAME,
        f"delivery resumed after all {judged} fault window(s) followed by traffic; slowest return to "
        f"normal {slowest:g}s.",
        **ev,
    )
