"""Availability (FMEA 1), isolation (FMEA 2) and at-least-once on hand-built and generated histories."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checkers import check_all, check_at_least_once, check_availability, check_isolation
from tests.chaos.builders import Builder, steady

STORAGE = {"effective": True, "kind": "storage"}


# --- availability under storage faults ---------------------------------------------


def test_availability_passes_when_delivery_stays_fast_during_storage_fault():
    h = steady(60).fault("storage-down", 3.0, 5.0, **STORAGE).build()
    v = check_availability(h)
    assert v.status == "pass", v.summary
    w = v.evidence["windows"][0]
    assert w["name"] == "storage-down" and w["start_s"] == 3.0 and w["end_s"] == 5.0
    # the baseline is the steady state before the first fault (t < 3 s), not the recovery after it
    assert w["latency"]["samples"] >= 30 and 30 <= v.evidence["baseline"]["samples"] < 70
    assert v.evidence["bound_ms"] > 50
    json.dumps(v.to_dict())  # evidence is plain JSON


def test_availability_fails_when_fan_out_waits_on_storage():
    slow = {"s1": 0.9, "s2": 0.9}
    h = steady(60, slow=slow, slow_between=(3.0, 5.0)).fault("storage-slow", 3.0, 5.0, **STORAGE).build()
    v = check_availability(h)
    assert v.status == "fail"
    assert "storage-slow at t=3.0s" in v.summary and "p99 publish-to-deliver latency" in v.summary
    w = v.evidence["windows"][0]
    assert w["latency"]["p99_ms"] == pytest.approx(900, abs=1)
    assert w["slowest"][0]["latency_ms"] == pytest.approx(900, abs=1)


def test_availability_fails_when_deliveries_stop_during_fault():
    b = steady(60).fault("storage-down", 3.0, 5.0, **STORAGE)
    b.drop("s2", "deliver", "p-25")
    v = check_availability(b.build())
    assert v.status == "fail"
    assert v.evidence["windows"][0]["undelivered"] == [{"id": "p-25", "recipient": "s2", "published_s": 3.5}]
    assert "never arrived (first: p-25 -> s2)" in v.summary


def test_availability_pools_topics_too_small_to_judge_alone():
    """Twenty slow topics of three deliveries each: no topic alone has min_samples, together they fail."""
    b = Builder().connect("s1", 0.0).connect("p", 0.0)
    topics = [f"t{i}" for i in range(20)]
    for t in topics:
        b.sub("s1", t, 0.01)
    for i in range(40):  # baseline on t0: 10 ms
        b.pub("p", "t0", f"b-{i}", 0.1 + i / 20).deliver("s1", "t0", f"b-{i}", 0.11 + i / 20)
    for i, t in enumerate(topics * 3):  # during the fault: 900 ms on every topic
        b.pub("p", t, f"w-{i}", 3.0 + i / 60).deliver("s1", t, f"w-{i}", 3.9 + i / 60)
    v = check_availability(b.fault("storage-slow", 3.0, 5.0, **STORAGE).build())
    assert v.status == "fail", v.summary
    assert "on 20 small topics pooled was 900.0 ms" in v.summary
    assert v.evidence["windows"][0]["by_topic"]["20 small topics pooled"]["samples"] == 60


def test_availability_bound_is_configurable():
    slow = {"s1": 0.04, "s2": 0.04}
    h = steady(60, slow=slow, slow_between=(3.0, 5.0)).fault("storage-down", 3.0, 5.0, **STORAGE).build()
    assert check_availability(h).status == "pass"
    assert check_availability(h, factor=1.0, slack=0.0).status == "fail"


@pytest.mark.parametrize(
    ("evidence", "reason"),
    [
        ({"effective": False, "kind": "storage"}, "did not take effect"),
        ({"kind": "storage"}, "was not confirmed to take effect"),
    ],
)
def test_availability_unknown_when_fault_did_not_land(evidence, reason):
    h = steady(60).fault("storage-down", 3.0, 5.0, **evidence).build()
    v = check_availability(h)
    assert v.status == "unknown" and reason in v.summary


def test_availability_unknown_without_fault_or_samples():
    assert "no storage fault window" in check_availability(steady(20).build()).summary
    v = check_availability(steady(12).fault("storage-down", 1.5, 1.7, **STORAGE).build())
    assert v.status == "unknown" and "need 10" in v.summary
    assert (
        check_availability(steady(60).fault("pg-off", 3, 5, effective=True).build(), faults=["pg-off"]).status
        == "pass"
    )


def test_availability_ignores_offline_subscribers():
    b = steady(60).fault("storage-down", 3.0, 5.0, **STORAGE)
    b.disconnect("s2", 2.95)
    for i in range(20, 41):  # s2 offline during the fault: its deliveries come late, after reconnect
        b.drop("s2", "deliver", f"p-{i}")
        b.deliver("s2", "t", f"p-{i}", 8.0, attempt=2)
    b.connect("s2", 7.9)
    assert check_availability(b.build()).status == "pass"


# --- isolation ---------------------------------------------------------------------


def _isolation(slow_s1: bool) -> Builder:
    slow = {"s3": 2.5} | ({"s1": 0.8} if slow_s1 else {})
    b = steady(60, subs=("s1", "s2", "s3"), slow=slow, slow_between=(3.0, 5.0))
    return b.fault("slow-consumer", 3.0, 5.0, targets=["s3"], effective=True)


def test_isolation_passes_when_healthy_subscribers_are_unaffected():
    v = check_isolation(_isolation(False).build())
    assert v.status == "pass", v.summary
    assert v.evidence["faulty_subscribers"] == ["s3"] and v.evidence["healthy_subscribers"] == ["s1", "s2"]


def test_isolation_fails_when_one_slow_subscriber_delays_the_others():
    v = check_isolation(_isolation(True).build())
    assert v.status == "fail"
    assert "subscriber-isolation invariant violated" in v.summary and "slow-consumer at t=3.0s" in v.summary
    assert {s["recipient"] for s in v.evidence["windows"][0]["slowest"]} == {"s1"}


def test_isolation_fails_when_a_healthy_subscriber_misses_messages():
    b = _isolation(False)
    b.drop("s2", "deliver", "p-30")
    v = check_isolation(b.build())
    assert v.status == "fail" and "p-30 -> s2" in v.summary


def test_isolation_unknown_without_targeted_window():
    v = check_isolation(steady(60).fault("storage-down", 3, 5, effective=True).build())
    assert v.status == "unknown" and "no subscriber-isolation fault window" in v.summary


# --- at-least-once -----------------------------------------------------------------


def test_at_least_once_passes_and_fails_with_lost_pairs():
    assert check_at_least_once(steady(30).build()).status == "pass"
    b = steady(30).fault("storage-down", 2.0, 2.5, effective=True)
    b.drop("s1", "deliver", "p-12")
    v = check_at_least_once(b.build())
    assert v.status == "fail"
    assert v.evidence["pairs_lost"] == 1 and v.evidence["pairs_expected"] == 60
    assert v.evidence["lost"] == [
        {"id": "p-12", "recipient": "s1", "published_s": 2.2, "during_fault": "storage-down"}
    ]
    assert "p-12 -> s1" in v.summary and "during fault storage-down" in v.summary


def test_at_least_once_recipients_follow_subscriptions():
    b = Builder().connect("p", 0).connect("a", 0).connect("b", 0).connect("c", 0)
    b.sub("a", "t", 0.1).sub("b", "t", 0.1).unsub("b", "t", 0.5)
    b.pub("p", "t", "m1", 1.0)  # a required; b unsubscribed before; c subscribes later
    b.ev(1.0005, "c", "invoke", "subscribe", "t").ev(
        1.002, "c", "ok", "subscribe", "t"
    )  # races m1: ambiguous
    b.pub("p", "t", "m2", 2.0)  # a and c required
    b.pub("p", "t", "m3", 3.0, ok_dt=None)  # never answered: not judged
    b.deliver("a", "t", "m1", 1.01).deliver("a", "t", "m2", 2.01)
    v = check_at_least_once(b.build())
    assert v.status == "fail"
    assert v.evidence["pairs_expected"] == 3 and v.evidence["pairs_ambiguous"] == 1
    assert [(x["id"], x["recipient"]) for x in v.evidence["lost"]] == [("m2", "c")]


def test_at_least_once_unknown_when_nothing_published_to_anyone():
    b = Builder().connect("p", 0).pub("p", "t", "m1", 1.0)
    v = check_at_least_once(b.build())
    assert v.status == "unknown" and v.evidence["messages_published"] == 1


@given(st.integers(1, 4), st.integers(1, 40), st.data())
@settings(max_examples=40, deadline=None)
def test_at_least_once_lists_exactly_the_dropped_pairs(n_subs, n_msgs, data):
    subs = tuple(f"s{i}" for i in range(n_subs))
    b = steady(n_msgs, subs=subs, rng=random.Random(n_msgs))
    pairs = [(c, f"p-{i}") for c in subs for i in range(n_msgs)]
    dropped = data.draw(st.lists(st.sampled_from(pairs), unique=True, max_size=5))
    for c, mid in dropped:
        b.drop(c, "deliver", mid)
    v = check_at_least_once(b.build())
    assert v.status == ("fail" if dropped else "pass")
    assert {(x["recipient"], x["id"]) for x in v.evidence.get("lost", [])} == set(dropped)
    assert v.evidence["pairs_expected"] == len(pairs)


def test_check_all_on_a_large_history_is_fast():
    import time

    b = steady(12_000, subs=("s1", "s2", "s3"), every=0.001).fault("storage-down", 4, 8, **STORAGE)
    h = b.build()
    assert len(h) > 100_000
    started = time.perf_counter()
    verdicts = {v.name: v for v in check_all(h)}
    elapsed = time.perf_counter() - started
    assert verdicts["availability-under-storage-faults"].status == "pass"
    assert verdicts["at-least-once"].status == "pass" and verdicts["integrity"].status == "pass"
    assert elapsed < 20, f"check_all over {len(h)} events took {elapsed:.1f}s"


def test_isolation_unknown_when_every_subscriber_is_a_target():
    b = steady(60).fault("slow-consumer", 3, 5, targets=["s1", "s2"], effective=True)
    v = check_isolation(b.build())
    assert v.status == "unknown" and "no healthy subscriber is left" in v.summary
