"""Recovery and hydration times: measured by the checkers, in their evidence (the gate only reads them)."""

from __future__ import annotations

import pytest

from chaos.checkers import check_hydration, check_recovery
from chaos.checkers.facts import Facts
from chaos.checkers.latency import message_samples
from tests.reports.histories import crash_run, storage_run


def test_recovery_compares_each_fault_with_the_baseline():
    h = storage_run(per_phase=40, fault_latency=0.2)
    v = check_recovery(h)
    assert v.status == "pass", v
    ev = v.evidence
    assert ev["baseline"]["samples"] == 2 * 40 and ev["baseline"]["undelivered"] == 0  # before the fault
    assert ev["baseline"]["p99_ms"] < 10
    (w,) = ev["windows"]
    assert w["name"] == "storage-latency" and w["latency"]["samples"] == 2 * 40
    assert 200 <= w["latency"]["p99_ms"] <= 300
    assert w["recovery_s"] is not None and 0 <= w["recovery_s"] < 0.5
    assert w["deliveries"] > 0 and w["delivery_rate"] > 0


def test_recovery_fails_when_delivery_never_comes_back():
    h = storage_run(per_phase=20, lose=set(range(40, 60)), subscribers=("s1",))
    v = check_recovery(h)
    assert v.status == "fail" and "never resumed" in v.summary
    (w,) = v.evidence["windows"]
    assert w["delivery_resumed"] is False and w["normal_by_end"] is False
    assert w["recovery_s"] > 0  # the rest of the run: a time budget still sees it


def test_recovery_is_unknown_without_faults():
    h = storage_run(per_phase=5)
    h2 = type(h)(start=h.start)
    for ev in h.events:
        if ev.f not in ("fault-start", "fault-stop"):
            h2.append(ev.process, ev.type, ev.f, ev.topic, ev.id, ev.value, time=ev.time)
    assert check_recovery(h2).status == "unknown"


def test_hydration_time_after_a_crash():
    v = check_hydration(crash_run(n=20))
    assert v.status == "pass"
    (c,) = v.evidence["crashes"]
    assert c["name"] == "kill" and c["pairs_expected"] == 20
    # the last of 20 redeliveries lands 0.2 + 19 * 0.01 s after the restart
    assert c["redelivery_s"] == pytest.approx(0.39, abs=1e-6)
    assert check_hydration(crash_run(n=20, redeliver=False)).status == "fail"


def test_samples_follow_the_checkers_recipients():
    h = storage_run(per_phase=10)
    per_message = message_samples(Facts(h))
    assert sum(len(g) for _, g in per_message) == 2 * 30
