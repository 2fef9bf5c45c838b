"""A load run's figures, per phase and per second, from its merged history: pure numpy, no I/O.

Phases come from what happened, not from the schedule: the baseline runs from
the load's start to the first ``fault-start`` the nemesis recorded, each fault
window (windows that overlap, e.g. one link fault per targeted subscriber, are
one phase) to its ``fault-stop``, the gaps between, and the recovery to the
last event. A message counts in the phase its first publish was *invoked* in,
so the figures of a storage window are the messages published while storage
was slow, wherever their deliveries fell.

Per phase: messages sent, published (answered), refused and overloaded,
persisted and persist_failed, deliveries, duplicates (deliveries beyond the
first of a (subscriber, message)), lost (required (message, subscriber) pairs,
as :class:`~chaos.checkers.facts.Facts` defines them, never delivered: the
at-least-once verdict says which of them are excused, e.g. unpersisted at a
SIGKILL), push latency (publish invoke to the first delivery at each
subscriber: p50, p90, p99, max, exact) and deliveries per second. Per second
(by delivery time): deliveries, publishes, push p50 and p99, for the report's
charts.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from chaos.checkers.facts import Facts
from chaos.checkers.verdict import Verdict
from chaos.history import FAIL, History

NAME = "load-figures"
PERCENTILES = (50, 90, 99)


def _codes(history: History, clients: Collection[str]) -> np.ndarray:
    """The history's string codes of *clients* (those it holds)."""
    codes = [history.code(c) for c in clients]
    return np.array([c for c in codes if c >= 0], np.int64)


def _ms(x: float) -> float:
    return round(float(x) * 1000.0, 3)


def _latency(values: np.ndarray) -> dict[str, Any]:
    if not len(values):
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    p = np.percentile(values, PERCENTILES)
    return {
        "count": int(len(values)),
        "p50_ms": _ms(p[0]),
        "p90_ms": _ms(p[1]),
        "p99_ms": _ms(p[2]),
        "max_ms": _ms(values.max()),
    }


def phase_spans(history: History, t0: float, end: float) -> list[dict[str, Any]]:
    """[{name, kind, fault, start, end}] from the recorded fault windows (overlapping ones merged)."""
    windows = sorted((w for w in history.fault_windows() if w.start >= t0), key=lambda w: w.start)
    merged: list[dict[str, Any]] = []
    for w in windows:
        stop = w.end if w.end is not None else end
        if merged and w.start <= merged[-1]["end"]:
            last = merged[-1]
            last["end"] = max(last["end"], stop)
            last["windows"] += 1
            last["effective"] = last["effective"] and w.effective
            continue
        merged.append(
            {"fault": w.name, "start": w.start, "end": stop, "windows": 1, "effective": w.effective}
        )
    out, at = [], t0
    for n, w in enumerate(merged):
        if w["start"] > at:
            out.append(
                {
                    "name": "baseline" if n == 0 else f"gap before {w['fault']}",
                    "kind": "baseline" if n == 0 else "gap",
                    "fault": None,
                    "start": at,
                    "end": w["start"],
                }
            )
        label = f"{w['fault']}@{w['start'] - t0:.0f}s"
        out.append({"name": label, "kind": "fault", **w})
        at = w["end"]
    out.append(
        {
            "name": "recovery" if merged else "baseline",
            "kind": "recovery" if merged else "baseline",
            "fault": None,
            "start": at,
            "end": max(end, at),
        }
    )
    return out


def figures(
    history: History, facts: Facts, *, t0: float, end: float, targets: Collection[str] = ()
) -> dict[str, Any]:
    """``{"phases": [...], "series": {...}, "totals": {...}}`` of a merged load history whose load
    ran from *t0* to *end* (what is published later, in the drain, counts in the last phase).

    Push latency is that of everyone but *targets*, the subscribers the faults were aimed at (a
    blackholed subscriber's deliveries are late by design; the isolation checker judges the rest).
    """
    spans = phase_spans(history, t0, end)
    edges = np.array([s["start"] for s in spans[1:]])

    def phase_of(times: np.ndarray) -> np.ndarray:
        return np.searchsorted(edges, times, side="right")

    m_phase = phase_of(facts.msg_invoke)
    pub = history.columns("publish")
    overloaded_code = history.code("overloaded")
    fail_rows = np.flatnonzero((pub["type"] == FAIL) & (pub["id"] >= 0))
    refused_msg = facts.msg_of_code[pub["id"][fail_rows].astype(np.int64)]
    over = (
        refused_msg[(pub["v.code"][fail_rows] == overloaded_code) & (refused_msg >= 0)]
        if overloaded_code >= 0
        else refused_msg[:0]
    )
    # First delivery of each (subscriber, message) group, and its message's phase and push latency.
    g_msg = facts.dv_msg[facts.dg_first]
    g_ok = g_msg >= 0
    g_phase = m_phase[g_msg[g_ok]]
    g_latency = facts.dg_first_time[g_ok] - facts.msg_invoke[g_msg[g_ok]]
    g_dups = facts.dg_count[g_ok] - 1
    aimed = _codes(history, targets)
    g_healthy = ~np.isin(facts.dv_client[facts.dg_first][g_ok], aimed)
    lost_msg = facts.pair_msg[facts.pair_group < 0]
    dv_ok = facts.dv_msg >= 0
    dv_in = phase_of(facts.dv_time[dv_ok])
    n = len(spans)

    def count(phases: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(phases, weights=weights, minlength=n)[:n]

    sent = count(m_phase)
    published = count(m_phase[~np.isnan(facts.msg_ok)])
    refused = count(m_phase[facts.msg_failed])
    overloaded = count(m_phase[np.unique(over)])
    persisted = count(m_phase[~np.isnan(facts.msg_persisted)])
    persist_failed = count(m_phase[~np.isnan(facts.msg_persist_failed)])
    deliveries = count(g_phase, g_dups + 1.0)
    duplicates = count(g_phase, g_dups.astype(float))
    lost = count(m_phase[lost_msg])
    arrived = count(dv_in)
    phases = []
    for i, s in enumerate(spans):
        seconds = max(1e-9, s["end"] - s["start"])
        row = {
            "name": s["name"],
            "kind": s["kind"],
            "fault": s.get("fault"),
            "effective": s.get("effective"),
            "start_s": round(s["start"] - t0, 3),
            "end_s": round(s["end"] - t0, 3),
            "sent": int(sent[i]),
            "published": int(published[i]),
            "refused": int(refused[i]),
            "overloaded": int(overloaded[i]),
            "persisted": int(persisted[i]),
            "persist_failed": int(persist_failed[i]),
            "delivered": int(deliveries[i]),
            "duplicates": int(duplicates[i]),
            "lost": int(lost[i]),
            "deliveries_per_s": round(float(arrived[i]) / seconds, 1),
            "push": _latency(g_latency[(g_phase == i) & g_healthy]),
        }
        phases.append(row)
    return {
        "phases": phases,
        "series": series(
            facts, t0, max(end, float(facts.dv_time.max()) if len(facts.dv_time) else end), aimed
        ),
        "totals": {
            "messages": int(facts.n_messages),
            "deliveries": int(dv_ok.sum()),
            "duplicates": int(g_dups.sum()),
            "lost": int(len(lost_msg)),
            "push": _latency(g_latency[g_healthy]),
            "seconds": round(end - t0, 3),
        },
    }


def series(
    facts: Facts, t0: float, end: float, aimed: np.ndarray | None = None, step: float = 1.0
) -> dict[str, Any]:
    """Per *step* seconds from *t0*: deliveries and publishes a second, push p50/p99 of the deliveries
    (to everyone but the *aimed* client codes)."""
    buckets = max(1, int(np.ceil((end - t0) / step)))
    g_msg = facts.dv_msg[facts.dg_first]
    ok = g_msg >= 0
    if aimed is not None and len(aimed):
        ok &= ~np.isin(facts.dv_client[facts.dg_first], aimed)
    t = facts.dg_first_time[ok]
    lat = t - facts.msg_invoke[g_msg[ok]]
    b = np.clip(((t - t0) // step).astype(np.int64), 0, buckets - 1)
    dv_b = np.clip(((facts.dv_time - t0) // step).astype(np.int64), 0, buckets - 1)
    pub_b = np.clip(((facts.msg_invoke - t0) // step).astype(np.int64), 0, buckets - 1)
    deliveries = np.bincount(dv_b, minlength=buckets)[:buckets] / step
    publishes = np.bincount(pub_b, minlength=buckets)[:buckets] / step
    p50 = [None] * buckets
    p99 = [None] * buckets
    if len(b):
        order = np.argsort(b, kind="stable")
        bs, ls = b[order], lat[order]
        starts = np.flatnonzero(np.r_[True, bs[1:] != bs[:-1]])
        for k, s in enumerate(starts):
            e = starts[k + 1] if k + 1 < len(starts) else len(bs)
            q = np.percentile(ls[s:e], (50, 99))
            p50[int(bs[s])], p99[int(bs[s])] = _ms(q[0]), _ms(q[1])
    return {
        "step_s": step,
        "t_s": [round(i * step, 3) for i in range(buckets)],
        "deliveries_per_s": [round(float(x), 1) for x in deliveries],
        "publishes_per_s": [round(float(x), 1) for x in publishes],
        "push_p50_ms": p50,
        "push_p99_ms": p99,
    }


def verdict(figs: dict[str, Any], targets: list[str]) -> Verdict:
    """The figures as a verdict the gate's ``[load]`` budgets judge; unknown when no load flowed."""
    totals = figs["totals"]
    evidence = {"phases": figs["phases"], "totals": totals, "lab_targets": targets}
    if not totals["messages"] or not totals["deliveries"]:
        return Verdict(
            NAME, "unknown", "the load run published or delivered nothing: it shows nothing", evidence
        )
    push = totals["push"]
    summary = (
        f"{totals['messages']} messages, {totals['deliveries']} deliveries in {totals['seconds']:g}s over "
        f"{len(figs['phases'])} phases; push p50 {push['p50_ms']} ms, p99 {push['p99_ms']} ms"
    )
    return Verdict(NAME, "pass", summary, evidence)
