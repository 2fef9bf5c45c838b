"""The pure metrics under the report and gate: bounded timelines, phases, recovery and hydration."""

from __future__ import annotations

import math

import pytest

from chaos.checkers.facts import Facts
from reports import metrics
from tests.reports.histories import crash_run, storage_run


def test_bucket_width_keeps_the_timeline_bounded():
    assert metrics.bucket_width(0) == metrics.MIN_BUCKET_S
    assert metrics.bucket_width(1.0) == metrics.MIN_BUCKET_S
    for duration in (3.7, 60, 999, 86_400):
        w = metrics.bucket_width(duration)
        assert math.ceil(duration / w) <= metrics.MAX_BUCKETS


def test_timeline_counts_deliveries_latency_and_faults():
    h = storage_run(per_phase=40, fault_latency=0.2, lose={50})
    tl = metrics.timeline(h)
    n = len(tl["t"])
    assert n <= metrics.MAX_BUCKETS
    assert all(len(tl[k]) == n for k in ("delivery_rate", "p50_ms", "p99_ms", "samples", "lost"))
    assert sum(tl["lost"]) == 1  # message 50, to the last subscriber
    total = sum(r * tl["bucket_s"] for r in tl["delivery_rate"])
    assert total == pytest.approx(len(h.by_f("deliver")))
    (fault,) = tl["faults"]
    assert fault["name"] == "storage-latency" and fault["effective"] is True
    in_fault = [
        p for t, p in zip(tl["t"], tl["p99_ms"], strict=True) if fault["start_s"] < t < fault["end_s"] - 0.1
    ]
    before = [p for t, p in zip(tl["t"], tl["p99_ms"], strict=True) if t < fault["start_s"] - 0.1 and p]
    assert min(p for p in in_fault if p) > 150 > max(before)


def test_phases_compare_the_fault_with_the_baseline():
    h = storage_run(per_phase=40, fault_latency=0.2)
    m = metrics.phases(h)
    assert m["baseline"]["samples"] == 2 * 80 and m["baseline"]["undelivered"] == 0
    assert m["baseline"]["p99_ms"] < 10
    (w,) = m["windows"]
    assert w["latency"]["samples"] == 2 * 40
    assert 200 <= w["latency"]["p99_ms"] <= 300
    assert w["recovery_s"] is not None and 0 <= w["recovery_s"] < 0.5
    assert "hydration_s" not in w  # not a crash
    assert m["deliveries"] == 240 and m["duplicate_deliveries"] == 0


def test_recovery_is_none_when_delivery_never_comes_back():
    h = storage_run(per_phase=20, lose=set(range(40, 60)), subscribers=("s1",))
    (w,) = metrics.phases(h)["windows"]
    assert w["recovery_s"] is None


def test_hydration_time_after_a_crash():
    m = metrics.phases(crash_run(n=20))
    (w,) = m["windows"]
    assert w["name"] == "kill" and w["duration_s"] == pytest.approx(1.5)
    # the last of 20 redeliveries lands 0.2 + 19 * 0.01 s after the restart
    assert w["hydration_s"] == pytest.approx(0.39, abs=1e-6)
    assert m["duplicate_deliveries"] == 20
    assert metrics.phases(crash_run(n=20, redeliver=False))["windows"][0]["hydration_s"] is None


def test_samples_follow_the_checkers_recipients():
    h = storage_run(per_phase=10)
    s = metrics.samples(Facts(h))
    assert len(s) == 2 * 30 and all(math.isfinite(x.latency) for x in s)


def test_notable_events_are_capped_but_counted():
    h = crash_run()
    ev = metrics.notable_events(h, limit=3)
    assert ev["total"] == len(h.by_f(*metrics.NOTABLE)) > 3
    assert len(ev["rows"]) == 3 and ev["rows"][0]["f"] == "fault-start"
