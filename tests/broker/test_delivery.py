"""The pure delivery core with an injected clock and RNG: no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.delivery import DeliveryCore, IdConflict, RetryPolicy
from broker.persist import SpillQueue
from broker.store import (
    DropSubscription,
    SaveAck,
    SaveAttempt,
    SaveDeadLetter,
    SaveMessage,
    SaveSubscription,
    Snapshot,
    StoredDelivery,
    StoredMessage,
)
from broker.store_memory import MemoryStore


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(**policy: float) -> tuple[DeliveryCore, Clock]:
    clock = Clock()
    core = DeliveryCore(clock=clock, rng=random.Random(7), policy=RetryPolicy(**policy), dedup_window=60)
    return core, clock


def test_publish_creates_one_obligation_per_subscriber_and_sends_to_online_only() -> None:
    core, _ = make()
    core.subscribe("a", "t")
    core.subscribe("b", "t")
    core.connect("a")
    core.take_ops()
    res = core.publish("p", "t", "m1", {"x": 1})
    assert (res.id, res.recipients, res.duplicate, res.online) == ("m1", 2, False, ["a"])
    ops = core.take_ops()
    assert ops == [SaveMessage(StoredMessage("m1", "t", {"x": 1}, 1000.0, "p"), ("a", "b"))]
    assert set(core.pending) == {"a", "b"} and core.pending["a"]["m1"].attempt == 1
    assert core.pending["b"]["m1"].attempt == 0 and core.pending["b"]["m1"].due is None


def test_publish_without_subscribers_keeps_nothing_but_still_persists() -> None:
    core, _ = make()
    res = core.publish("p", "t", None, 1)
    assert res.recipients == 0 and len(res.id) == 32 and not core.messages
    assert [type(op) for op in core.take_ops()] == [SaveMessage]


def test_ack_is_done_and_idempotent() -> None:
    core, _ = make()
    core.connect("a")
    core.subscribe("a", "t")
    core.publish("p", "t", "m1", 1)
    core.take_ops()
    assert core.ack("a", "m1") is True
    assert core.take_ops() == [SaveAck("m1", "a")]
    assert core.ack("a", "m1") is False and core.ack("zz", "m1") is False
    assert not core.messages and not core.pending and core.take_ops() == []


def test_retry_comes_within_initial_with_backoff_and_attempt_count() -> None:
    core, clock = make(initial=4.0, minimum=0.5, cap=30.0, max_attempts=5)
    core.connect("a")
    core.subscribe("a", "t")
    core.publish("p", "t", "m1", "x")
    core.take_ops()
    due = core.next_deadline()
    assert due is not None and 1000.5 <= due <= 1004.0
    clock.t = due - 0.001
    assert core.tick() == []
    clock.t = due
    sends = core.tick()
    assert [(cid, frame.endswith(b'"attempt":2}')) for cid, frame in sends] == [("a", True)]
    assert core.take_ops() == [SaveAttempt("m1", "a", 2)]
    d = core.pending["a"]["m1"]
    assert d.due is not None and 0.5 <= d.due - clock.t <= 8.0
    assert core.stats.retried == 1 and core.stats.delivered == 2


def test_retry_delay_respects_cap_and_floor() -> None:
    p = RetryPolicy(initial=1.0, minimum=0.2, cap=3.0)
    rng = random.Random(1)
    delays = [p.delay(n, rng) for n in range(1, 60) for _ in range(20)]
    assert min(delays) >= 0.2 and max(delays) <= 3.0
    assert all(0.2 <= p.delay(1, rng) <= 1.0 for _ in range(100))
    with pytest.raises(ValueError):
        RetryPolicy(initial=1.0, minimum=2.0)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def run_until_quiet(core: DeliveryCore, clock: Clock, until: float) -> list[tuple[str, bytes]]:
    sent = []
    while (d := core.next_deadline()) is not None and d <= until:
        clock.t = max(clock.t, d)
        sent += core.tick()
    return sent


def test_max_attempts_then_dead_letter() -> None:
    core, clock = make(initial=1.0, minimum=0.1, cap=2.0, max_attempts=3, ttl=1e6)
    core.connect("a")
    core.subscribe("a", "t")
    core.publish("p", "t", "m1", 1)
    sent = run_until_quiet(core, clock, clock.t + 100)
    assert len(sent) == 2  # attempts 2 and 3 after the first
    assert core.stats.dead_lettered == 1 and not core.pending and not core.messages
    ops = core.take_ops()
    assert ops[-1] == SaveDeadLetter("m1", "a", "max_attempts")
    assert core.next_deadline() is None or core.tick() == []


def test_no_retries_while_offline_resume_on_connect_and_ttl_even_offline() -> None:
    core, clock = make(initial=1.0, minimum=0.1, cap=2.0, max_attempts=50, ttl=100.0)
    core.connect("a")
    core.subscribe("a", "t")
    core.publish("p", "t", "m1", 1)
    core.disconnect("a")
    assert run_until_quiet(core, clock, clock.t + 50) == []
    assert core.pending["a"]["m1"].due is None
    core.connect("a")
    assert run_until_quiet(core, clock, clock.t + 2.5)  # retries again once reachable
    core.disconnect("a")
    core.take_ops()
    run_until_quiet(core, clock, 1000 + 100)
    assert not core.pending and core.take_ops() == [SaveDeadLetter("m1", "a", "ttl")]


def test_subscribe_replays_outstanding_on_that_topic_only() -> None:
    core, clock = make()
    core.subscribe("a", "t")
    core.subscribe("a", "u")
    core.publish("p", "t", "m1", 1)
    core.publish("p", "u", "m2", 2)
    core.publish("p", "t", "m3", 3)
    core.take_ops()
    core.connect("a")
    frames = core.subscribe("a", "t")  # already subscribed: no op, but replay
    assert [f.split(b'"id":"')[1][:2] for f in frames] == [b"m1", b"m3"]
    assert all(f.endswith(b'"attempt":1}') for f in frames)
    assert core.take_ops() == []
    assert core.pending["a"]["m2"].attempt == 0


def test_unsubscribe_drops_outstanding_of_that_client_on_that_topic() -> None:
    core, _ = make()
    for c in ("a", "b"):
        core.subscribe(c, "t")
    core.subscribe("a", "u")
    core.publish("p", "t", "m1", 1)
    core.publish("p", "u", "m2", 1)
    core.take_ops()
    assert core.unsubscribe("a", "t") == 1
    assert core.take_ops() == [DropSubscription("a", "t")]
    assert set(core.pending["a"]) == {"m2"} and set(core.pending["b"]) == {"m1"}
    assert core.publish("p", "t", "m3", 1).recipients == 1
    assert core.unsubscribe("zz", "t") == 0 and core.take_ops()[-1:] != [DropSubscription("zz", "t")]


def test_dedup_window_per_topic_and_conflicts() -> None:
    core, clock = make()
    core.subscribe("a", "t")
    first = core.publish("p", "t", "m1", 1)
    again = core.publish("q", "t", "m1", 2)
    assert again.duplicate and again.id == "m1" and again.recipients == first.recipients == 1
    assert core.stats.duplicates == 1 and len(core.pending["a"]) == 1
    with pytest.raises(IdConflict):
        core.publish("p", "other", "m1", 1)
    core.ack("a", "m1")
    clock.t += 61
    assert not core.publish("p", "t", "m1", 3).duplicate  # window passed and not live


def test_dead_lettered_id_stays_taken_because_the_store_keeps_it() -> None:
    core, clock = make(initial=1.0, minimum=0.1, cap=1.0, max_attempts=1, ttl=1e6)
    core.connect("a")
    core.subscribe("a", "t")
    core.publish("p", "t", "m1", 1)
    run_until_quiet(core, clock, clock.t + 10)
    assert core.stats.dead_lettered == 1
    clock.t += 1000  # far past the dedup window
    assert core.publish("p", "t", "m1", 2).duplicate
    with pytest.raises(IdConflict):
        core.publish("p", "u", "m1", 2)


def test_live_message_id_is_a_duplicate_even_after_the_window() -> None:
    core, clock = make(ttl=1e6)
    core.subscribe("a", "t")
    core.publish("p", "t", "m1", 1)
    clock.t += 1000
    assert core.publish("p", "t", "m1", 1).duplicate


def test_hydrate_rebuilds_obligations_and_resumes() -> None:
    core, clock = make(initial=1.0, minimum=0.1, ttl=1e6)
    snap = Snapshot(
        subscriptions=[("a", "t"), ("b", "t")],
        messages=[StoredMessage("m1", "t", {"v": 1}, 990.0, "p"), StoredMessage("m2", "t", 2, 995.0, "p")],
        deliveries=[
            StoredDelivery("m1", "a", 2),
            StoredDelivery("m1", "b", 1, dead=True),
            StoredDelivery("m2", "b", 0),
            StoredDelivery("gone", "a", 1),
        ],
    )
    core.hydrate(snap)
    assert set(core.pending) == {"a", "b"} and set(core.pending["a"]) == {"m1"}
    assert core.stats.dead_loaded == 1 and core.stats.hydrated_deliveries == 2
    assert core.publish("p", "t", "m2", 2).duplicate  # dedup survives a restart
    core.connect("a")
    frames = core.subscribe("a", "t")
    assert len(frames) == 1 and frames[0].endswith(b'"attempt":3}')
    assert core.take_ops() == [SaveAttempt("m1", "a", 3)]
    assert core.publish("p", "t", "m3", 3).recipients == 2


def test_hydrated_past_ttl_is_dead_lettered_not_kept_forever() -> None:
    core, clock = make(ttl=10.0)
    core.hydrate(
        Snapshot([("a", "t")], [StoredMessage("m1", "t", 1, 900.0, "p")], [StoredDelivery("m1", "a", 0)])
    )
    core.tick()
    assert not core.pending and core.take_ops() == [SaveDeadLetter("m1", "a", "ttl")]


# --- model check: the ops the core emits keep a store equal to the core ----------------------


class CoreMatchesStore(RuleBasedStateMachine):
    """Applying the emitted ops to a MemoryStore always yields the core's obligations, and none is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.core = DeliveryCore(
            clock=self.clock,
            rng=random.Random(0),
            policy=RetryPolicy(initial=1.0, minimum=0.1, cap=4.0, max_attempts=4, ttl=30.0),
            dedup_window=5.0,
        )
        self.store = MemoryStore()
        self.q = SpillQueue()
        self.topic_of: dict[str, str] = {}
        self.n = 0
        self.created: set[tuple[str, str]] = set()
        self.settled: set[tuple[str, str]] = set()  # acked, dead-lettered or dropped by unsubscribe

    clients = st.sampled_from(["a", "b", "c"])
    topics = st.sampled_from(["t", "u"])

    def _sync(self) -> None:
        ops = self.core.take_ops()
        for op in ops:
            if isinstance(op, SaveAck | SaveDeadLetter):
                self.settled.add((op.message_id, op.client_id))
            elif isinstance(op, SaveMessage):
                self.created |= {(op.message.id, c) for c in op.recipients}
                self.topic_of[op.message.id] = op.message.topic
            elif isinstance(op, DropSubscription):
                self.settled |= {
                    (mid, c)
                    for (mid, c) in self.created
                    if c == op.client_id and self.topic_of.get(mid) == op.topic
                }
            assert not isinstance(op, SaveSubscription) or op.topic in ("t", "u")
        for op in ops:  # through the writer's spill queue, so coalescing is part of the model
            if isinstance(op, SaveMessage):
                self.q.push_message(op, 0.0, 1)
            else:
                self.q.push(op, 0.0)

    @rule(n=st.integers(1, 6), lookahead=st.integers(0, 6), all_=st.booleans())
    def flush(self, n: int, lookahead: int, all_: bool) -> None:
        """The writer commits one batch (or everything) of what is queued."""
        while len(self.q):
            count, writes = self.q.take(n, lookahead)
            asyncio.run(self.store.apply(writes))
            self.q.commit(count)
            if not all_:
                break

    @rule(c=clients, t=topics)
    def subscribe(self, c: str, t: str) -> None:
        self.core.subscribe(c, t)
        self._sync()

    @rule(c=clients, t=topics)
    def unsubscribe(self, c: str, t: str) -> None:
        self.core.unsubscribe(c, t)
        self._sync()

    @rule(t=topics, reuse=st.booleans())
    def publish(self, t: str, reuse: bool) -> None:
        if not reuse:
            self.n += 1
        with contextlib.suppress(IdConflict):
            self.core.publish("p", t, f"m{max(self.n, 1)}", self.n)
        self._sync()

    @rule(c=clients, data=st.data())
    def ack(self, c: str, data: st.DataObject) -> None:
        pending = sorted(self.core.pending.get(c, {}))
        if pending:
            self.core.ack(c, data.draw(st.sampled_from(pending)))
            self._sync()

    @rule(c=clients)
    def connect(self, c: str) -> None:
        self.core.connect(c)

    @rule(c=clients)
    def disconnect(self, c: str) -> None:
        self.core.disconnect(c)

    @precondition(lambda self: self.core.next_deadline() is not None)
    @rule(dt=st.floats(0, 10))
    def advance(self, dt: float) -> None:
        self.clock.t += dt
        for cid, _ in self.core.tick():
            assert cid in self.core.online
        self._sync()

    @precondition(lambda self: not len(self.q))
    @rule()
    def restart(self) -> None:
        """A crash after the queue drained: a new core hydrates from the store (nobody is connected)."""
        self.core = DeliveryCore(
            clock=self.clock, rng=random.Random(1), policy=self.core.policy, dedup_window=5.0
        )
        self.core.hydrate(asyncio.run(self.store.load()))

    @invariant()
    def store_mirrors_core(self) -> None:
        if len(self.q):
            return  # the store lags the core by exactly the queue; compared once it is drained
        core = {(mid, c) for c, ds in self.core.pending.items() for mid in ds}
        stored = {k for k, d in self.store.deliveries.items() if not d.dead}
        assert core == stored
        # nothing silently lost: every obligation ever created is pending or explicitly settled
        assert self.created <= core | self.settled
        for ds in self.core.pending.values():
            for d in ds.values():
                assert d.attempt <= 4
                assert d.message.deliveries[d.client_id] is d


TestCoreMatchesStore = CoreMatchesStore.TestCase
TestCoreMatchesStore.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
