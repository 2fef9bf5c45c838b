"""What the report plots: bounded timelines, totals, notable events (pure; nothing judged here)."""

from __future__ import annotations

import math

import pytest

from reports import timeline
from tests.reports.histories import crash_run, storage_run


def test_bucket_width_keeps_the_timeline_bounded():
    assert timeline.bucket_width(0) == timeline.MIN_BUCKET_S
    assert timeline.bucket_width(1.0) == timeline.MIN_BUCKET_S
    for duration in (3.7, 60, 999, 86_400):
        w = timeline.bucket_width(duration)
        assert math.ceil(duration / w) <= timeline.MAX_BUCKETS


def test_timeline_counts_deliveries_latency_and_faults():
    h = storage_run(per_phase=40, fault_latency=0.2, lose={50})
    tl = timeline.timeline(h)
    n = len(tl["t"])
    assert n <= timeline.MAX_BUCKETS
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


def test_counts_are_the_totals_under_the_phase_table():
    c = timeline.counts(crash_run(n=20))
    assert c["messages"] == 35 and c["deliveries"] == 55 and c["duplicate_deliveries"] == 20


def test_notable_events_are_capped_but_counted():
    h = crash_run()
    ev = timeline.notable_events(h, limit=3)
    assert ev["total"] == len(h.by_f(*timeline.NOTABLE)) > 3
    assert len(ev["rows"]) == 3 and ev["rows"][0]["f"] == "fault-start"
