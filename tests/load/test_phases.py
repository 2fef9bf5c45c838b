"""A load run's figures from a merged history: two workers' recorders and the lab's fault windows.

Pure: the histories are made with the recorders the Locust processes use
(``HistoryRecorder``) on an injected clock, merged as ``fastport-lab load``
merges them, and judged by the suites' checkers.
"""

from __future__ import annotations

import pytest

from chaos.checkers import Facts, check_at_least_once
from chaos.history import History
from chaos.load.phases import figures, phase_spans, verdict
from chaos.load.recorder import HistoryRecorder

T0 = 1_000.0


def run(lose: str | None = None, slow_target: bool = True) -> History:
    """Worker A publishes 1 msg/s for 30 s; worker B's two subscribers get each 10 ms later; the lab
    blackholes ``lab-link`` from 10 s to 20 s (its deliveries then come 5 s late)."""
    lab = History(clock=lambda: T0, start=T0)
    a, b = HistoryRecorder(History(start=T0)), HistoryRecorder(History(start=T0))
    for sub in ("w-sub.0", "lab-link"):
        b.connected(sub, T0, 1)
        b.subscribe_invoked(sub, "load-0", T0 + 0.01)
        b.subscribed(sub, "load-0", T0 + 0.02)
    a.connected("w-pub.0", T0, 1)
    lab.append("nemesis", "info", "fault-start", value={"name": "link-blackhole", "family": "subscriber",
               "targets": ["lab-link"]}, time=T0 + 10)  # fmt: skip
    lab.append(
        "nemesis", "info", "fault-stop", value={"name": "link-blackhole", "effective": True}, time=T0 + 20
    )
    for i in range(30):
        t, mid = T0 + 1 + i, f"w-pub.0-{i}"
        a.publish_invoked("w-pub.0", mid, "load-0", t, 7, 3)
        a.published("w-pub.0", mid, t + 0.001, 2)
        a.persisted("w-pub.0", mid, t + 0.05)
        for sub in ("w-sub.0", "lab-link"):
            if mid == lose and sub == "w-sub.0":
                continue
            late = 5.0 if sub == "lab-link" and slow_target and 10 <= t - T0 < 20 else 0.01
            b.delivered(sub, mid, "load-0", t + late, 1, 7)
    b.delivered("w-sub.0", "w-pub.0-3", "load-0", T0 + 6, 2, 7)  # one redelivery
    return History.merge([lab, a.history, b.history])


def test_phases_come_from_the_recorded_windows() -> None:
    spans = phase_spans(run(), T0, T0 + 32)
    assert [(s["name"], s["kind"], s["start"] - T0, s["end"] - T0) for s in spans] == [
        ("baseline", "baseline", 0, 10),
        ("link-blackhole@10s", "fault", 10, 20),
        ("recovery", "recovery", 20, 32),
    ]


def test_figures_count_each_message_in_the_phase_it_was_published_in() -> None:
    h = run()
    figs = figures(h, Facts(h), t0=T0, end=T0 + 32, targets=["lab-link"])
    base, fault, rec = figs["phases"]
    assert (base["sent"], fault["sent"], rec["sent"]) == (9, 10, 11)  # published at 1..9, 10..19, 20..30 s
    assert base["delivered"] == 19 and base["duplicates"] == 1  # 9 x 2 subscribers, and a redelivery
    assert fault["persisted"] == 10 and fault["lost"] == 0 and fault["refused"] == 0
    assert fault["push"]["p99_ms"] == pytest.approx(10, abs=0.5)  # the target's 5 s is not the load's
    assert figs["totals"]["messages"] == 30 and figs["totals"]["lost"] == 0
    everyone = figures(h, Facts(h), t0=T0, end=T0 + 32)
    assert everyone["phases"][1]["push"]["max_ms"] == pytest.approx(5000, abs=1)
    series = figs["series"]
    assert len(series["t_s"]) == 32 and sum(series["publishes_per_s"]) == 30
    assert verdict(figs, ["lab-link"]).status == "pass"


def test_a_lost_pair_is_counted_and_the_checkers_judge_the_merged_history() -> None:
    h = run(lose="w-pub.0-12")
    facts = Facts(h)
    figs = figures(h, facts, t0=T0, end=T0 + 32, targets=["lab-link"])
    assert [p["lost"] for p in figs["phases"]] == [0, 1, 0]
    v = check_at_least_once(facts)
    assert v.status == "fail" and "w-pub.0-12" in v.summary


def test_no_traffic_is_unknown() -> None:
    h = History(clock=lambda: T0, start=T0)
    figs = figures(h, Facts(h), t0=T0, end=T0 + 5)
    assert figs["phases"][0]["kind"] == "baseline" and figs["totals"]["messages"] == 0
    assert verdict(figs, []).status == "unknown"
