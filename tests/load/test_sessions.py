"""The load sessions (the users' per-frame logic) under gevent against a real broker, without Locust."""

from __future__ import annotations

import time

import pytest

from chaos.launcher import BrokerUnderTest
from chaos.load.client import FastPortClient
from chaos.load.recorder import MemoryRecorder
from chaos.load.sessions import PublisherSession, Sink, SubscriberSession
from tests.load.conftest import HANG, Inbox

pytestmark = pytest.mark.integration


def _sink() -> Sink:
    return Sink(recorder=MemoryRecorder())


def test_publishes_made_while_offline_are_sent_after_the_reconnect(broker: BrokerUnderTest) -> None:
    sink = _sink()
    sub = SubscriberSession(broker.url, "s-1", ["t"], sink)
    pub = PublisherSession(broker.url, "p-1", sink, window=1000)
    sub.start()
    pub.start()
    try:
        assert pub.client.abort()
        ids = [pub.publish("t") for _ in range(30)]  # offline: kept pending, recorded as invoked
        assert len(pub.pending) == 30
        pub.client.wait_open(HANG)
        assert pub.wait_answered(HANG)
        sub.barrier()
        stats = sink.stats
        assert stats.sent == stats.published == 30 and stats.resent == 30
        assert stats.delivered == 30 and stats.duplicates == 0 and stats.corrupt == 0 and stats.acked == 30
        rec = sink.recorder
        assert isinstance(rec, MemoryRecorder)
        assert [e[2] for e in rec.of("published")] == ids
        assert rec.count("publish_invoked") == 60  # once offline, once after the reconnect
        assert {e[1] for e in rec.of("disconnected")} == {"p-1"}
        assert sink.stats.latency_ms("published")["count"] == 30
    finally:
        pub.close()
        sub.close()


def test_ack_modes(broker: BrokerUnderTest) -> None:
    sink = _sink()
    subs = {
        mode: SubscriberSession(broker.url, f"s-{mode}", ["t"], sink, ack_mode=mode, ack_delay=0.2)
        for mode in ("always", "late", "never")
    }
    pub = PublisherSession(broker.url, "p-2", sink)
    for s in subs.values():
        s.start()
    pub.start()
    ids = [pub.publish("t") for _ in range(20)]
    assert pub.wait_answered(HANG)
    for s in subs.values():
        s.barrier()
    timer = subs["late"]._late_timer
    if timer is not None:
        timer.join(HANG)  # the late acks are all out once the timer greenlet ends
    subs["late"].barrier()  # ... and handled by the broker
    assert sink.stats.delivered == 60 and sink.stats.acked == 40
    assert sink.stats.latency_ms("push")["count"] == 60
    for s in subs.values():
        s.close(unsubscribe=False)
    pub.close()
    # Reconnect each client_id: only the never-acking one is owed anything.
    again = _sink()
    for mode in ("always", "late", "never"):
        s = SubscriberSession(broker.url, f"s-{mode}", ["t"], again, ack_mode="never")
        s.start()
        s.barrier()  # the replay follows `subscribed`, before the pong
        s.close()
        owed = [e[2] for e in again.recorder.of("delivered") if e[1] == f"s-{mode}"]  # type: ignore[attr-defined]
        assert sorted(owed) == (sorted(ids) if mode == "never" else []), mode
    assert again.stats.redelivered == 20 and again.stats.latency_ms("redelivery")["count"] == 20


def test_corrupt_and_foreign_payloads_are_counted(broker: BrokerUnderTest) -> None:
    sink = _sink()
    sub = SubscriberSession(broker.url, "s-3", ["t"], sink)
    sub.start()
    replies = Inbox()
    raw = FastPortClient(broker.url, "raw", on_frame=replies).start()
    try:
        raw.publish(
            "t", {"t": time.time(), "p": "raw", "s": 0, "c": 1, "d": "not what the crc says"}, id="raw-0"
        )
        raw.publish(
            "t", {"hello": "world"}, id="raw-1"
        )  # not one of ours: counted, latency from published_at
        replies.expect("published", count=2)
        sub.barrier()
        assert sink.stats.delivered == 2 and sink.stats.corrupt == 1 and sink.stats.duplicates == 0
        assert sink.stats.latency_ms("push")["count"] == 2
    finally:
        raw.close()
        sub.close()
