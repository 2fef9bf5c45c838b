"""Hydration, no-zombie, integrity, duplicates/order and start-up checkers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.store import StoredDelivery
from chaos.checkers import (
    check_duplicates,
    check_hydration,
    check_integrity,
    check_no_zombies,
    check_startup,
)
from tests.chaos.builders import Builder, payload, steady

# --- hydration ---------------------------------------------------------------------


def _crash_run(redeliver=("m2", "m3", "m4"), resubscribe=True, kill_evidence=None) -> Builder:
    """s1 acks m0, m1; the broker is killed at t=2 and listens again at t=3; s1 comes back."""
    b = Builder().connect("p", 0).connect("s1", 0).sub("s1", "t", 0.1)
    for i in range(5):
        b.pub("p", "t", f"m{i}", 1 + i * 0.1, persisted_dt=0.05)
        b.deliver("s1", "t", f"m{i}", 1.01 + i * 0.1)
    b.ack("s1", "t", "m0", 1.5).ack("s1", "t", "m1", 1.5)
    b.pub("p", "t", "m5", 1.95)  # published, never persisted before the kill: not owed by hydration
    b.fault("kill", 2.0, 3.0, **({"effective": True} if kill_evidence is None else kill_evidence))
    b.disconnect("s1", 2.0).disconnect("p", 2.0)
    if resubscribe:
        b.connect("s1", 3.1).sub("s1", "t", 3.11)
    for j, mid in enumerate(redeliver):
        b.deliver("s1", "t", mid, 3.2 + j * 0.01, attempt=2)
    return b


def test_hydration_passes_when_unacked_persisted_messages_come_back():
    v = check_hydration(_crash_run().build())
    assert v.status == "pass", v.summary
    assert v.evidence["pairs_expected"] == 3 and v.evidence["crashes"][0]["start_s"] == 2.0


def test_hydration_fails_with_the_missing_pairs():
    v = check_hydration(_crash_run(redeliver=("m2", "m4")).build())
    assert v.status == "fail"
    assert v.evidence["missing"] == [{"id": "m3", "recipient": "s1", "crash": "kill", "persisted_s": 1.35}]
    assert "m3 -> s1" in v.summary and "before kill" in v.summary


def test_a_pair_retried_as_often_as_any_may_be_a_dead_letter():
    """m3 got the most attempts the broker ever made before the kill: maybe dead-lettered, not owed."""
    b = _crash_run(redeliver=("m2", "m4"))
    b.deliver("s1", "t", "m3", 1.6, attempt=2)
    v = check_hydration(b.build())  # the most attempts seen is 2: no cap shown, m3 still owed
    assert v.status == "fail" and v.evidence["pairs_possibly_dead_lettered"] == 0
    b.deliver("s1", "t", "m3", 1.7, attempt=3)
    v = check_hydration(b.build())
    assert v.status == "pass", v.summary
    assert v.evidence["max_attempt_seen"] == 3 and v.evidence["pairs_possibly_dead_lettered"] == 1
    assert v.evidence["possibly_dead_lettered"][0]["id"] == "m3"
    b.deliver("s1", "t", "m2", 3.5, attempt=4)  # another pair went further: m3 was not capped
    v = check_hydration(b.build())
    assert v.status == "fail" and v.evidence["missing"][0]["id"] == "m3"


def test_hydration_unknown_cases():
    assert "no crash fault window" in check_hydration(steady(5).build()).summary
    v = check_hydration(_crash_run(kill_evidence={}).build())
    assert v.status == "unknown" and "not confirmed" in v.summary
    v = check_hydration(_crash_run(redeliver=(), resubscribe=False).build())
    assert v.status == "unknown" and v.evidence["pairs_unverifiable"] == 3
    assert "never subscribed again" in v.summary


# --- no zombie ---------------------------------------------------------------------


def test_no_zombie_unknown_without_listing_and_pass_with_clean_store():
    h = _crash_run().build()
    v = check_no_zombies(h)
    assert v.status == "unknown" and "no store listing" in v.summary
    listing = [StoredDelivery("m2", "s1", 2), {"message_id": "m9", "client_id": "s1", "dead": True}]
    v = check_no_zombies(h, listing)
    assert v.status == "pass" and v.evidence["live"] == 1 and v.evidence["dead_lettered"] == 1


def test_no_zombie_fails_on_acked_and_stranded_deliveries():
    h = _crash_run(redeliver=("m2", "m3")).build()
    v = check_no_zombies(h, [StoredDelivery("m0", "s1", 1), StoredDelivery("m4", "s1", 1)])
    assert v.status == "fail"
    assert v.evidence["acked_but_kept_pairs"] == [{"id": "m0", "recipient": "s1", "acked_s": 1.5}]
    assert v.evidence["stranded_pairs"] == [{"id": "m4", "recipient": "s1"}]
    assert "acked deliveries are still in the store" in v.summary and "never retried" in v.summary


def test_no_zombie_rejects_a_listing_that_is_not_iterable():
    with pytest.raises(TypeError, match="store_listing must be an iterable"):
        check_no_zombies(steady(2).build(), 42)


# --- integrity ---------------------------------------------------------------------


def test_integrity_passes_on_good_history():
    v = check_integrity(steady(20).build())
    assert v.status == "pass" and v.evidence["deliveries"] == 40


def test_integrity_finds_phantom_altered_and_misrouted():
    b = steady(10, subs=("s1",))
    b.connect("s9", 0)
    b.deliver("s1", "t", "ghost-1", 5.0)  # never published
    b.drop("s1", "deliver", "p-3").deliver("s1", "t", "p-3", 1.31, data={"n": "tampered"})
    b.deliver("s1", "t", "p-4", 1.45, pl={"id": "p-4", "data": {"n": "p-4"}, "sha256": "0" * 64})
    b.deliver("s9", "t", "p-5", 1.51)  # s9 never subscribed
    b.deliver("s1", "other", "p-6", 1.61)  # wrong topic
    v = check_integrity(b.build())
    assert v.status == "fail"
    ev = v.evidence
    assert [p["id"] for p in ev["phantom"]] == ["ghost-1"]
    assert sorted(a["id"] for a in ev["altered"]) == ["p-3", "p-4"]
    assert sorted((r["id"], r["recipient"]) for r in ev["misrouted"]) == [("p-5", "s9"), ("p-6", "s1")]
    assert "phantom" in v.summary and "altered payload" in v.summary and "not subscribed" in v.summary


def test_integrity_unknown_without_deliveries():
    b = Builder().connect("p", 0).pub("p", "t", "m1", 1)
    assert check_integrity(b.build()).status == "unknown"


@given(st.integers(1, 30), st.integers(1, 3))
@settings(max_examples=25, deadline=None)
def test_integrity_passes_on_generated_good_histories(n, subs):
    h = steady(n, subs=tuple(f"s{i}" for i in range(subs)), rng=random.Random(n)).build()
    assert check_integrity(h).status == "pass"
    assert check_duplicates(h).evidence["duplicate_deliveries"] == 0


# --- duplicates and order ----------------------------------------------------------


def test_duplicates_counted_and_judged_by_ratio():
    b = steady(10, subs=("s1",))
    for i in range(4):
        b.deliver("s1", "t", f"p-{i}", 5.0 + i, attempt=2)
    v = check_duplicates(b.build())
    assert v.status == "pass"
    assert v.evidence["duplicate_deliveries"] == 4 and v.evidence["deliveries"] == 14
    assert v.evidence["duplicates"][0]["attempts"] == [1, 2]
    v = check_duplicates(b.build(), max_duplicate_ratio=0.2)
    assert v.status == "fail" and "too many duplicates" in v.summary
    with pytest.raises(ValueError, match="max_duplicate_ratio"):
        check_duplicates(b.build(), max_duplicate_ratio=-1)


def test_retries_before_an_ack_are_at_least_once_not_duplicates():
    """A subscriber that never acks is retried every backoff (PROTOCOL.md): repeats, but none judged."""
    b = Builder()
    b.connect("s1", 0.0).sub("s1", "t", 0.01).connect("p", 0.0)
    for i in range(5):
        b.pub("p", "t", f"p-{i}", 1.0 + i / 10)
        for attempt in (1, 2, 3):
            b.deliver("s1", "t", f"p-{i}", 1.05 + i / 10 + attempt, attempt=attempt)
    b.ack("s1", "t", "p-0", 2.5)  # p-0 acked after its first delivery: its two retries count
    v = check_duplicates(b.build(), max_duplicate_ratio=0.1)
    assert v.evidence["duplicate_deliveries"] == 10 and v.evidence["redelivered_after_ack"] == 2
    assert v.evidence["duplicate_ratio"] == round(2 / 15, 6) and v.status == "fail"
    assert check_duplicates(b.build(), max_duplicate_ratio=0.2).status == "pass"


def test_an_ack_before_the_first_delivery_makes_no_redelivery():
    """A first delivery that lands after an early (or forged) ack is not a duplicate; its retry is."""
    b = Builder()
    b.connect("s1", 0.0).sub("s1", "t", 0.01).connect("p", 0.0).pub("p", "t", "m", 0.5)
    b.ack("s1", "t", "m", 0.6).deliver("s1", "t", "m", 1.0)
    v = check_duplicates(b.build(), max_duplicate_ratio=0.0)
    assert v.status == "pass" and v.evidence["redelivered_after_ack"] == 0
    b.deliver("s1", "t", "m", 2.0, attempt=2)
    v = check_duplicates(b.build(), max_duplicate_ratio=0.0)
    assert v.status == "fail" and v.evidence["redelivered_after_ack"] == 1
    assert "worst: m delivered 2 times to s1" in v.summary


def test_order_inversions_reported_and_optionally_judged():
    b = steady(5, subs=("s1",))
    b.drop("s1", "deliver", "p-1").deliver("s1", "t", "p-1", 1.35)  # after p-2 and p-3
    h = b.build()
    v = check_duplicates(h)
    assert v.status == "pass" and v.evidence["order_inversions"] == 1
    assert v.evidence["inversions"][0] | {} == {
        "recipient": "s1",
        "publisher": "p",
        "id": "p-1",
        "after": "p-3",
        "delivered_s": 1.35,
    }
    v = check_duplicates(h, require_order=True)
    assert v.status == "fail" and "p-1 reached s1" in v.summary


# --- start-up ----------------------------------------------------------------------

STDERR = ["starting", "error: cannot listen on 127.0.0.1:5555: address already in use (port 5555)"]


def _startup(outcome: tuple | None, squat: dict | None = None, port: int = 5555) -> Builder:
    b = Builder().fault(
        "port-squat", 1.0, 9.0, **({"port": 5555, "effective": True} if squat is None else squat)
    )
    b.ev(2.0, "broker", "invoke", "launch", value={"command": ["x"], "port": port})
    if outcome is not None:
        b.ev(2.0 + outcome[2], "broker", outcome[0], "launch", value=outcome[1])
    return b


def _failed(**over) -> tuple:
    v = {"reason": "exited", "exit_code": 1, "elapsed": 0.4, "stderr": STDERR, "port": 5555} | over
    return ("fail", v, v["elapsed"] if isinstance(v["elapsed"], float) else 1.0)


def test_startup_passes_on_clear_fast_failure():
    v = check_startup(_startup(_failed()).build())
    assert v.status == "pass", v.summary
    assert v.evidence["attempts"][0]["exit_code"] == 1 and v.evidence["attempts"][0]["elapsed"] == 0.4


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (_failed(exit_code=0), "exited 0"),
        (_failed(exit_code=-9), "died from signal 9"),
        (_failed(elapsed=7.5), "took 7.5s to exit, over the 5.0s limit"),
        (_failed(stderr=["boom: address already in use"]), "no stderr line contains both"),
        (_failed(stderr=["port 5555 busy"]), "no stderr line contains both"),
        (_failed(reason="hang", exit_code=-9, elapsed=30.0), "had to be killed by the lab"),
        (_failed(leftover_processes=True), "still running after it exited"),
        (("ok", {"pid": 42, "port": 5555, "elapsed": 0.2}, 0.2), "reported listening"),
    ],
)
def test_startup_fails_with_the_reason(outcome, reason):
    v = check_startup(_startup(outcome).build())
    assert v.status == "fail" and reason in v.summary, v.summary
    assert "port 5555 taken (attempt at t=2.0s)" in v.summary


def test_startup_unknown_cases():
    assert "no port-squat fault window" in check_startup(steady(2).build()).summary
    v = check_startup(_startup(_failed(), squat={"port": 5555}).build())
    assert v.status == "unknown" and "not confirmed" in v.summary
    v = check_startup(_startup(_failed(), port=6000).build())
    assert v.status == "unknown" and "no broker start was attempted" in v.summary
    v = check_startup(_startup(None).build())
    assert v.status == "unknown" and "no outcome" in v.summary


def test_payload_helper_is_self_consistent():
    assert payload("x")["sha256"] == payload("x")["sha256"] != payload("y")["sha256"]


# --- robustness --------------------------------------------------------------------

ODD = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(
        st.sampled_from(
            [
                "payload",
                "name",
                "effective",
                "targets",
                "port",
                "attempt",
                "recipients",
                "reason",
                "exit_code",
                "elapsed",
                "stderr",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=3),
            st.lists(st.text(max_size=3), max_size=2),
        ),
        max_size=4,
    ),
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "nemesis", "broker"]),
            st.sampled_from(["invoke", "ok", "fail", "info"]),
            st.sampled_from(
                [
                    "connect",
                    "disconnect",
                    "subscribe",
                    "unsubscribe",
                    "publish",
                    "persisted",
                    "deliver",
                    "ack",
                    "fault-start",
                    "fault-stop",
                    "launch",
                    "exit",
                ]
            ),
            st.none() | st.sampled_from(["t", "u"]),
            st.none() | st.sampled_from(["m1", "m2"]),
            ODD,
            st.floats(0, 100),
        ),
        max_size=40,
    )
)
@settings(max_examples=150, deadline=None)
def test_checkers_never_crash_on_odd_histories(rows):
    from chaos.checkers import check_all
    from chaos.history import History

    h = History(start=0.0)
    for process, type_, f, topic, id_, value, t in sorted(rows, key=lambda r: r[-1]):
        h.append(process, type_, f, topic, id_, value, time=t)
    for v in check_all(h, store_listing=[{"message_id": "m1", "client_id": "a"}]):
        assert v.status in ("pass", "fail", "unknown") and v.summary


def test_checkers_reject_bad_arguments():
    from chaos.checkers import check_availability, check_isolation

    h = steady(3).build()
    with pytest.raises(TypeError, match="checkers take a chaos.history.History, got list"):
        check_integrity([])
    with pytest.raises(TypeError, match="got dict"):
        check_startup({})
    with pytest.raises(ValueError, match="factor must be > 0"):
        check_availability(_with_storage(), factor=0)
    with pytest.raises(ValueError, match="min_samples must be an integer"):
        check_isolation(_with_storage(targets=["s1"]), min_samples=0)
    with pytest.raises(ValueError, match="deadline must be a positive number"):
        check_startup(h, deadline=-1)


def _with_storage(**evidence):
    return steady(3).fault("storage-down", 1, 2, effective=True, **evidence).build()
