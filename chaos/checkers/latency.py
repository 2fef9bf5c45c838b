"""Publish-to-deliver latency compared per phase: the no-fault baseline against each fault window.

Shared by the availability and isolation checkers: both ask "did real-time
delivery to the subscribers that should be unaffected stay as fast and as
complete during the fault as without it?". A sample is one (message, recipient)
pair where the recipient was required (see facts.py) and connected when the
message was published; its latency is publish invoke to first delivery, inf
when it never arrived. A message belongs to the phase in which it was
published (of each, when several overlap). The baseline is the steady state
before anything went wrong: the messages published before the first fault
window; only when those are too few, every message published outside *all* fault
windows (then the backlog a broken broker carries out of a fault would flatter it).

Samples are arrays (:class:`Samples`, built once per :class:`Facts`), in publish
order and then each topic's subscribers in order of subscription: the order in
which evidence lists them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from chaos.checkers.facts import (
    Facts,
    PublishedMessage,
    group_order,
    runs,
    take,
    window_evidence,
    window_mask,
)
from chaos.checkers.stats import MAX_LISTED, latency_summary, ms, percentile
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import FaultWindow

Sample = tuple[PublishedMessage, str, float]  # (message, recipient, latency seconds or inf)


@dataclass(frozen=True)
class Samples:
    """Every latency sample of a history, one row each: the one definition of a sample."""

    msg: np.ndarray  # message index (facts.msg_*)
    client: np.ndarray  # recipient's code
    topic: np.ndarray  # the message's topic code
    invoke: np.ndarray  # publish invoke time
    latency: np.ndarray  # seconds, inf when never delivered

    def __len__(self) -> int:
        return len(self.msg)


def samples(facts: Facts) -> Samples:
    """The samples of *facts* (built once, then shared by the checkers that use them)."""
    s = facts.cache.get("samples")
    if s is None:
        pm = facts.pair_msg
        invoke = facts.msg_invoke[pm]
        keep = facts.online_mask(facts.pair_client, invoke)
        first = take(facts.dg_first_time, facts.pair_group[keep], math.inf)
        lat = first - invoke[keep]
        m = pm[keep]
        s = facts.cache["samples"] = Samples(
            m, facts.pair_client[keep], facts.msg_topic[m], invoke[keep], lat
        )
    return s


def include_mask(facts: Facts, clients: np.ndarray, include: Callable[[str], bool] | None) -> np.ndarray:
    """*include* (a predicate on client ids) asked once per distinct client."""
    if include is None:
        return np.ones(len(clients), bool)
    codes = np.unique(clients)
    kept = [c for c in codes.tolist() if include(facts.strings[c])]
    return np.isin(clients, kept)


def groups_in_order(codes: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(code, positions) per distinct code, in order of first appearance."""
    if not len(codes):
        return []
    o = group_order(codes)
    groups = [(int(codes[o[a]]), o[a:b]) for a, b in runs(codes[o])]
    groups.sort(key=lambda g: int(g[1][0]))
    return groups


def message_samples(
    facts: Facts, include: Callable[[str], bool] | None = None
) -> list[tuple[PublishedMessage, list[Sample]]]:
    """Each message with its samples, in publish order, as objects (for small histories and tools).

    Only messages with at least one sample are listed; *include* filters recipients.
    """
    s = samples(facts)
    sel = np.flatnonzero(include_mask(facts, s.client, include))
    msgs = list(facts.messages.values())
    out: list[tuple[PublishedMessage, list[Sample]]] = []
    for i in sel.tolist():
        m = msgs[int(s.msg[i])]
        if not out or out[-1][0] is not m:
            out.append((m, []))
        out[-1][1].append((m, facts.strings[int(s.client[i])], float(s.latency[i])))
    return out


def collect(
    facts: Facts, windows: list[FaultWindow], include: Callable[[str], bool] | None, min_samples: int = 10
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(baseline samples, samples per window of *windows*), as indexes into :func:`samples`.

    The baseline: samples before the first fault window, if at least *min_samples* of them
    arrived, else every sample outside all fault windows. Recipients pass *include*.
    """
    s = samples(facts)
    sel = include_mask(facts, s.client, include)
    all_windows = facts.history.fault_windows()
    first_fault = min((w.start for w in all_windows), default=math.inf)
    hit = np.zeros(len(s), bool)
    per_window = []
    for w in windows:  # overlapping windows (faults at once) share their samples
        inside = window_mask(s.invoke, w, facts.end) & sel
        per_window.append(np.flatnonzero(inside))
        hit |= inside
    outside = sel & ~hit
    for w in all_windows:
        outside &= ~window_mask(s.invoke, w, facts.end)
    before = outside & (s.invoke < first_fault)
    if int(np.isfinite(s.latency[before]).sum()) >= min_samples:
        return np.flatnonzero(before), per_window
    return np.flatnonzero(outside), per_window


def _p99_bound(values: np.ndarray, factor: float, slack: float, min_samples: int) -> float | None:
    finite = values[np.isfinite(values)]
    return factor * percentile(finite, 99) + slack if len(finite) >= min_samples else None


def sample_rows(facts: Facts, s: Samples, idx: np.ndarray, latency: bool = False) -> list[dict[str, Any]]:
    """Evidence rows for the first samples of *idx*: id, recipient, publish time (and latency)."""
    rows = []
    for i in idx[:MAX_LISTED].tolist():
        row = {
            "id": facts.name(facts.msg_code[s.msg[i]]),
            "recipient": facts.name(s.client[i]),
            "published_s": facts.rel(s.invoke[i]),
        }
        if latency:
            row["latency_ms"] = ms(s.latency[i])
        rows.append(row)
    return rows


def compare_latency(
    name: str,
    facts: Facts,
    windows: list[FaultWindow],
    include: Callable[[str], bool] | None,
    *,
    factor: float,
    slack: float,
    min_samples: int,
    what: str,
    require_effective: bool,
    extra: dict[str, Any] | None = None,
    ceiling: Callable[[FaultWindow], float | None] | None = None,
) -> Verdict:
    """Judge each window's p99 against ``factor * baseline p99 + slack`` and its completeness.

    Like is compared with like: a window's messages on each topic are held to the
    baseline of that topic (a topic of large messages has its own latency), falling
    back to the whole baseline for a topic without enough baseline samples.
    *ceiling* may lower a window's bound further (``chaos.checkers.availability``:
    a delivery as slow as the storage latency injected waits on storage).
    """
    if not (math.isfinite(factor) and factor > 0) or not (math.isfinite(slack) and slack >= 0):
        raise ValueError(f"{name}: factor must be > 0 and slack >= 0 (seconds), got {factor} and {slack}")
    if not isinstance(min_samples, int) or min_samples < 1:
        raise ValueError(f"{name}: min_samples must be an integer >= 1, got {min_samples!r}")
    h = facts.history
    ev: dict[str, Any] = {
        "bound_rule": f"p99 <= {factor} x baseline p99 + {ms(slack)} ms, per topic",
        **(extra or {}),
    }
    if not windows:
        return unknown(
            name,
            f"no {what} fault window in the history, so {name} was not exercised; "
            f"the nemesis must record fault-start/fault-stop events.",
            **ev,
        )
    s = samples(facts)
    base_idx, per_window = collect(facts, windows, include, min_samples)
    base = s.latency[base_idx]
    ev["baseline"] = latency_summary(base)
    ev["windows"] = []
    fails: list[str] = []
    unknowns: list[str] = []
    bound = _p99_bound(base, factor, slack, min_samples)
    by_topic = [(t, base[pos]) for t, pos in groups_in_order(s.topic[base_idx])]
    topic_bounds = {t: _p99_bound(v, factor, slack, min_samples) for t, v in by_topic}
    if bound is not None:
        ev["bound_ms"] = ms(bound)
        ev["baseline_by_topic"] = {
            str(facts.name(t)): latency_summary(v) | {"bound_ms": ms(topic_bounds[t] or bound)}
            for t, v in by_topic
        }
    else:
        unknowns.append(
            f"only {int(np.isfinite(base).sum())} baseline (no-fault) deliveries, need {min_samples}"
        )
    for i, w in enumerate(windows):
        idx = per_window[i]
        lat = s.latency[idx]
        wev = window_evidence(w, h) | {"latency": latency_summary(lat)}
        ev["windows"].append(wev)
        label = f"{w.name} at t={h.rel(w.start)}s"
        if w.effective is False:
            unknowns.append(f"{label} did not take effect (the nemesis says so)")
            continue
        if w.effective is None and require_effective:
            unknowns.append(f"{label} was not confirmed to take effect (no 'effective' in its evidence)")
            continue
        missing = idx[~np.isfinite(lat)]
        if len(missing):
            wev["undelivered"] = sample_rows(facts, s, missing)
            first = wev["undelivered"][0]
            fails.append(
                f"{len(missing)} of {len(idx)} deliveries to online subscribers published during "
                f"{label} never arrived (first: {first['id']} -> {first['recipient']})"
            )
        if len(idx) < min_samples:
            if not len(missing):
                unknowns.append(f"only {len(idx)} deliveries published during {label}, need {min_samples}")
            continue
        if bound is None:
            continue
        cap = ceiling(w) if ceiling is not None else None
        groups = groups_in_order(s.topic[idx])
        wev["by_topic"] = {}
        # small topics (a few stragglers each) are pooled and judged together against the window's bound
        small = [pos for _, pos in groups if len(pos) < min_samples] if len(groups) > 1 else []
        judged = [(t, pos, topic_bounds.get(t) or bound) for t, pos in groups if len(pos) >= min_samples]
        pooled = np.concatenate(small) if small else np.empty(0, np.int64)
        if len(pooled) >= min_samples:
            judged.append((None, pooled, bound))
        for topic, pos, tb in judged:
            if cap is not None and cap < tb:
                tb = cap
            glat = lat[pos]
            p99 = percentile(glat, 99)
            tname = str(facts.name(topic)) if topic is not None else f"{len(small)} small topics pooled"
            wev["by_topic"][tname] = {"samples": len(pos), "p99_ms": ms(p99), "bound_ms": ms(tb)}
            if p99 <= tb:
                continue
            slow = idx[pos][np.argsort(-glat, kind="stable")]
            wev["slowest"] = sample_rows(facts, s, slow, latency=True)
            if math.isfinite(p99):
                why = " (the storage latency injected: delivery waited on storage)" if tb == cap else ""
                fails.append(
                    f"p99 publish-to-deliver latency during {label} on {tname} was {ms(p99)} ms, over the "
                    f"bound {ms(tb)} ms{why} (baseline p99 {ev['baseline']['p99_ms']} ms)"
                )
    if fails:
        return failed(name, f"{what} invariant violated: " + "; ".join(fails) + ".", **ev)
    if unknowns:
        return unknown(name, f"cannot judge {name}: " + "; ".join(unknowns) + ".", **ev)
    worst = max(w["latency"]["p99_ms"] or 0 for w in ev["windows"])
    return passed(
        name,
        f"delivery kept flowing during {len(windows)} {what} fault window(s): worst p99 "
        f"{worst} ms within the bound {ev['bound_ms']} ms.",
        **ev,
    )
