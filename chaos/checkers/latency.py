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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from chaos.checkers.facts import Facts, PublishedMessage, in_any, window_evidence
from chaos.checkers.stats import latency_summary, listed, ms, percentile
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import FaultWindow

Sample = tuple[PublishedMessage, str, float]  # (message, recipient, latency seconds or inf)


def message_samples(
    facts: Facts, include: Callable[[str], bool] | None = None
) -> list[tuple[PublishedMessage, list[Sample]]]:
    """Each message with its samples, in publish order: the one definition of a latency sample.

    Only messages with at least one sample are listed; *include* filters recipients.
    """
    out = []
    for m in sorted(facts.messages.values(), key=lambda m: m.invoke_time):
        required, _ = facts.recipients(m)
        targets = [c for c in required if (include is None or include(c)) and facts.online(c, m.invoke_time)]
        if targets:
            out.append((m, [(m, c, facts.latency(m, c)) for c in targets]))
    return out


def collect(
    facts: Facts, windows: list[FaultWindow], include: Callable[[str], bool], min_samples: int = 10
) -> tuple[list[Sample], dict[int, list[Sample]]]:
    """(baseline samples, samples per index into *windows*) for recipients passing *include*.

    The baseline: samples before the first fault window, if at least *min_samples* of them
    arrived, else every sample outside all fault windows.
    """
    all_windows = facts.history.fault_windows()
    first_fault = min((w.start for w in all_windows), default=math.inf)
    baseline: list[Sample] = []
    before: list[Sample] = []
    per_window: dict[int, list[Sample]] = {i: [] for i in range(len(windows))}
    for m, samples in message_samples(facts, include):
        hit = False
        for i, w in enumerate(windows):
            if w.contains(m.invoke_time, facts.end):  # overlapping windows (faults at once) share it
                per_window[i].extend(samples)
                hit = True
        if not hit and in_any(m.invoke_time, all_windows, facts.end) is None:
            baseline.extend(samples)
            if m.invoke_time < first_fault:
                before.extend(samples)
    if sum(1 for s in before if math.isfinite(s[2])) >= min_samples:
        return before, per_window
    return baseline, per_window


def _p99_bound(values: list[float], factor: float, slack: float, min_samples: int) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return factor * percentile(finite, 99) + slack if len(finite) >= min_samples else None


def compare_latency(
    name: str,
    facts: Facts,
    windows: list[FaultWindow],
    include: Callable[[str], bool],
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
    baseline, per_window = collect(facts, windows, include, min_samples)
    ev["baseline"] = latency_summary([s[2] for s in baseline])
    ev["windows"] = []
    fails: list[str] = []
    unknowns: list[str] = []
    bound = _p99_bound([s[2] for s in baseline], factor, slack, min_samples)
    by_topic: dict[str | None, list[float]] = {}
    for m, _, lat in baseline:
        by_topic.setdefault(m.topic, []).append(lat)
    topic_bounds = {t: _p99_bound(v, factor, slack, min_samples) for t, v in by_topic.items()}
    if bound is not None:
        ev["bound_ms"] = ms(bound)
        ev["baseline_by_topic"] = {
            str(t): latency_summary(v) | {"bound_ms": ms(topic_bounds[t] or bound)}
            for t, v in by_topic.items()
        }
    else:
        unknowns.append(
            f"only {sum(1 for s in baseline if math.isfinite(s[2]))} baseline (no-fault) "
            f"deliveries, need {min_samples}"
        )
    for i, w in enumerate(windows):
        samples = per_window[i]
        wev = window_evidence(w, h) | {"latency": latency_summary([s[2] for s in samples])}
        ev["windows"].append(wev)
        label = f"{w.name} at t={h.rel(w.start)}s"
        if w.effective is False:
            unknowns.append(f"{label} did not take effect (the nemesis says so)")
            continue
        if w.effective is None and require_effective:
            unknowns.append(f"{label} was not confirmed to take effect (no 'effective' in its evidence)")
            continue
        missing = [s for s in samples if not math.isfinite(s[2])]
        if missing:
            wev["undelivered"] = listed(
                {"id": m.id, "recipient": c, "published_s": h.rel(m.invoke_time)} for m, c, _ in missing
            )
            fails.append(
                f"{len(missing)} of {len(samples)} deliveries to online subscribers published during "
                f"{label} never arrived (first: {missing[0][0].id} -> {missing[0][1]})"
            )
        if len(samples) < min_samples:
            if not missing:
                unknowns.append(
                    f"only {len(samples)} deliveries published during {label}, need {min_samples}"
                )
            continue
        if bound is None:
            continue
        cap = ceiling(w) if ceiling is not None else None
        groups: dict[str | None, list[Sample]] = {}
        for smp in samples:
            groups.setdefault(smp[0].topic, []).append(smp)
        wev["by_topic"] = {}
        for topic, group in groups.items():
            tb = topic_bounds.get(topic) or bound
            if cap is not None and cap < tb:
                tb = cap
            if len(group) < min_samples and len(groups) > 1:
                continue  # a few stragglers of another topic: judged with the window as a whole below
            p99 = percentile([s[2] for s in group], 99)
            wev["by_topic"][str(topic)] = {"samples": len(group), "p99_ms": ms(p99), "bound_ms": ms(tb)}
            if p99 <= tb:
                continue
            slow = sorted(group, key=lambda s: -s[2])
            wev["slowest"] = listed(
                {"id": m.id, "recipient": c, "published_s": h.rel(m.invoke_time), "latency_ms": ms(lat)}
                for m, c, lat in slow
            )
            if math.isfinite(p99):
                why = " (the storage latency injected: delivery waited on storage)" if tb == cap else ""
                fails.append(
                    f"p99 publish-to-deliver latency during {label} on {topic} was {ms(p99)} ms, over the "
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
