"""Spill queue, backoff and circuit breaker (pure), and the writer against a real MemoryStore."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from broker.persist import Backoff, CircuitBreaker, SpillQueue
from broker.store import SaveAck, SaveAttempt, SaveMessage, SaveSubscription, StoredMessage, StoreError
from broker.store_memory import MemoryStore
from broker.writer import PersistenceWriter

from .harness import run_async


def msg(mid: str) -> SaveMessage:
    return SaveMessage(StoredMessage(mid, "t", 1, 0.0, "p"), ("a",))


def test_spill_queue_bounds_messages_by_count_and_bytes() -> None:
    q = SpillQueue(max_messages=2, max_bytes=100)
    assert q.admits(60)
    q.push_message(msg("m1"), 0.0, 60)
    assert not q.admits(41) and q.admits(40)
    q.push_message(msg("m2"), 0.0, 10)
    assert not q.admits(1)  # count bound
    assert q.push(SaveAck("m1", "a"), 0.0)  # other ops always ride along
    assert len(q) == 3 and q.peek(2) == [msg("m1"), msg("m2")]
    assert q.commit(2) == [msg("m1"), msg("m2")]
    assert (q.messages, q.bytes, len(q)) == (0, 0, 1)
    with pytest.raises(ValueError):
        SpillQueue(0)


def test_spill_queue_hard_cap_counts_dropped_ops() -> None:
    q = SpillQueue(max_messages=1, hard_cap=2)
    assert q.push(SaveSubscription("a", "t"), 0) and q.push(SaveSubscription("b", "t"), 0)
    assert not q.push(SaveSubscription("c", "t"), 0) and q.dropped_ops == 1


def test_spill_queue_gives_up_only_old_messages() -> None:
    q = SpillQueue()
    q.push_message(msg("old"), 0.0, 5)
    q.push(SaveAck("old", "a"), 1.0)
    q.push_message(msg("new"), 50.0, 5)
    assert q.expire(55.0, ttl=60) == []
    assert q.expire(61.0, ttl=60) == [msg("old")]
    assert q.peek(10) == [SaveAck("old", "a"), msg("new")] and q.messages == 1 and q.bytes == 5


def test_backoff_full_jitter_capped_and_reset() -> None:
    b = Backoff(initial=0.1, cap=1.0, rng=random.Random(3))
    delays = [b.next_delay() for _ in range(30)]
    assert all(0 <= d <= 1.0 for d in delays) and delays[0] <= 0.1
    b.reset()
    assert b.next_delay() <= 0.1


def test_circuit_breaker_opens_probes_and_closes() -> None:
    cb = CircuitBreaker(threshold=2, cooldown=1.0, max_cooldown=3.0)
    cb.failure(0.0)
    assert cb.state == "closed" and cb.allow(0.0)
    cb.failure(0.0)
    assert cb.state == "open" and not cb.allow(0.5)
    assert cb.allow(1.0) and cb.state == "half_open"
    cb.failure(1.0)  # failed probe: reopen with doubled cool-down
    assert cb.state == "open" and not cb.allow(2.5) and cb.allow(3.0)
    cb.success()
    assert cb.state == "closed" and cb.cooldown == 1.0 and cb.failures == 0


class FlakyStore(MemoryStore):
    """A MemoryStore whose apply fails while ``down`` (pure in-process stand-in, no I/O)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.calls = 0
        self.called = asyncio.Condition()

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(10), self.called:
            await self.called.wait_for(lambda: self.calls >= n)

    async def apply(self, ops):  # type: ignore[no-untyped-def]
        self.calls += 1
        async with self.called:
            self.called.notify_all()
        if self.down:
            raise StoreError("database is down")
        await super().apply(ops)


@run_async(30)
async def test_writer_retries_until_storage_returns_then_reports_persisted() -> None:
    store = FlakyStore()
    q = SpillQueue()
    persisted: list[str] = []
    writer = PersistenceWriter(
        store,
        q,
        on_persisted=lambda ops: persisted.extend(o.message.id for o in ops),
        on_given_up=lambda ops, r: None,
        persist_ttl=60,
    )
    task = asyncio.create_task(writer.run())
    try:
        q.push_message(msg("m1"), time.time(), 1)
        writer.notify()
        await store.wait_calls(2)
        assert not writer.healthy and writer.failures >= 2 and persisted == []
        store.down = False
        assert await writer.flush(10)
        assert persisted == ["m1"] and "m1" in store.messages and writer.healthy
    finally:
        task.cancel()


@run_async(30)
async def test_writer_gives_up_after_persist_ttl_with_a_reason() -> None:
    now = [0.0]
    store = FlakyStore()
    q = SpillQueue()
    failed: list[tuple[str, str]] = []
    writer = PersistenceWriter(
        store,
        q,
        on_persisted=lambda ops: None,
        clock=lambda: now[0],
        on_given_up=lambda ops, r: failed.extend((o.message.id, r) for o in ops),
        persist_ttl=5,
    )
    task = asyncio.create_task(writer.run())
    try:
        q.push_message(msg("m1"), 0.0, 1)
        writer.notify()
        await store.wait_calls(1)
        now[0] = 6.0
        assert await writer.flush(10)
        assert failed and failed[0][0] == "m1" and "database is down" in failed[0][1]
        assert writer.given_up == 1 and len(q) == 0
    finally:
        task.cancel()


def take_all(ops: list, n: int, lookahead: int = 0) -> list[list]:
    """Push ``ops``, then drain them in batches of ``n``: the writes of each batch."""
    q = SpillQueue()
    for op in ops:
        if isinstance(op, SaveMessage):
            q.push_message(op, 0.0, 1)
        else:
            q.push(op, 0.0)
    out = []
    while len(q):
        count, writes = q.take(n, lookahead)
        q.commit(count)
        out.append(writes)
    return out


def test_coalescing_skips_only_messages_fully_acked() -> None:
    from broker.store import DropSubscription, SaveAttempt, SaveDeadLetter

    two = SaveMessage(StoredMessage("m2", "t", 1, 0.0, "p"), ("a", "b"))
    none = SaveMessage(StoredMessage("m0", "t", 1, 0.0, "p"), ())
    sub = SaveSubscription("a", "t")
    ops = [
        sub,
        msg("m1"),
        two,
        none,
        SaveAttempt("m1", "a", 2),
        SaveAck("m1", "a"),
        SaveAck("m2", "a"),
        SaveAck("old", "a"),
    ]
    assert take_all(ops, 100) == [[sub, two, SaveAck("m2", "a"), SaveAck("old", "a")]]
    dead = [msg("m1"), SaveDeadLetter("m1", "a", "ttl")]
    assert take_all(dead, 100) == [dead]  # a dead letter is kept, not an ack
    dropped = [msg("m1"), DropSubscription("a", "t")]
    assert take_all(dropped, 100) == [dropped]
    # the ack is beyond this batch: written in order without lookahead, skipped with it
    late = [msg("m1"), SaveSubscription("b", "t"), SaveAck("m1", "a")]
    assert take_all(late, 2) == [[msg("m1"), SaveSubscription("b", "t")], [SaveAck("m1", "a")]]
    assert take_all(late, 2, lookahead=2) == [[SaveSubscription("b", "t")], []]
    # an ack of an earlier incarnation of the id (before its SaveMessage) does not count
    reused = [SaveAck("m1", "a"), msg("m1")]
    assert take_all(reused, 100) == [reused]


def test_a_message_in_a_failed_write_is_never_coalesced_away() -> None:
    """A write that failed may have committed (the connection died before the answer): its message
    rows are in the store, and only its acks, written, remove them."""
    q = SpillQueue()
    q.push_message(msg("m1"), 0.0, 1)
    q.push(SaveSubscription("b", "t"), 0.0)
    assert q.take(2) == (2, [msg("m1"), SaveSubscription("b", "t")])
    q.maybe_written(2)  # the write failed; meanwhile the ack came
    q.push(SaveAck("m1", "a"), 0.0)
    assert q.take(3, lookahead=3) == (3, [msg("m1"), SaveSubscription("b", "t"), SaveAck("m1", "a")])
    # a message coalesced in the failed take was not written by it: still coalesced
    q = SpillQueue()
    q.push_message(msg("m2"), 0.0, 1)
    q.push(SaveAck("m2", "a"), 0.0)
    assert q.take(2) == (2, [])
    q.maybe_written(2)
    assert q.take(2) == (2, [])


class CommitThenFail(MemoryStore):
    """Its first apply commits, lets an ack in (*on_first*), then fails as a connection lost
    before the commit's answer would (pure in-process stand-in, no I/O)."""

    def __init__(self, on_first) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.on_first, self.calls = on_first, 0

    async def apply(self, ops):  # type: ignore[no-untyped-def]
        self.calls += 1
        await super().apply(ops)
        if self.calls == 1:
            self.on_first()
            raise StoreError("connection lost before the commit's answer")


@run_async(30)
async def test_an_ack_after_an_ambiguous_commit_still_removes_the_row() -> None:
    """Found by the soak: a batch committed as the storage link died, retried once its acks were
    in; coalescing then dropped both message and acks, and the rows stayed (zombies)."""
    q = SpillQueue()
    store = CommitThenFail(lambda: q.push(SaveAck("m1", "a"), time.time()))
    writer = PersistenceWriter(store, q, on_persisted=lambda ops: None, on_given_up=lambda ops, r: None)
    task = asyncio.create_task(writer.run())
    try:
        q.push_message(msg("m1"), time.time(), 1)
        writer.notify()
        assert await writer.flush(10)
        assert store.calls >= 1 and len(q) == 0
        assert (await store.load()).deliveries == []
    finally:
        task.cancel()

@run_async(30)
async def test_coalesced_batches_leave_the_store_as_applying_everything_would() -> None:
    ops = [
        SaveSubscription("a", "t"),
        msg("m1"),
        msg("m2"),
        SaveAttempt("m2", "a", 2),
        SaveAck("m1", "a"),
        msg("m3"),
        SaveAck("m3", "a"),
    ]
    full = MemoryStore()
    await full.apply(ops)
    for n in (1, 2, 3, 7):
        short = MemoryStore()
        for writes in take_all(ops, n, lookahead=n):
            await short.apply(writes)
        assert (await full.load()) == (await short.load()), n
