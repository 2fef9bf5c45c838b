"""The writer's linger: acks that arrive while a message waits cancel its writes; progress is guaranteed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from broker.persist import SpillQueue
from broker.store import Op, SaveAck, SaveMessage, StoredMessage
from broker.store_memory import MemoryStore
from broker.writer import PersistenceWriter

from .harness import run_async


def msg(mid: str) -> SaveMessage:
    return SaveMessage(StoredMessage(mid, "t", {"n": 1}, 1.0, "p"), ("a",))


class RecordingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[Op] = []

    async def apply(self, ops: Sequence[Op]) -> None:
        self.written += ops
        await super().apply(ops)


def test_aged_counts_leading_entries_up_to_the_cutoff_and_limit() -> None:
    q = SpillQueue()
    for i, t in enumerate([1.0, 2.0, 3.0, 2.5]):
        q.push_message(msg(f"m{i}"), t, 1)
    assert q.aged(0.5, 10) == 0
    assert q.aged(2.0, 10) == 2
    assert q.aged(2.9, 10) == 2  # stops at the first entry that is too young
    assert q.aged(9.0, 3) == 3


@run_async(30)
async def test_an_ack_within_the_linger_cancels_the_message_write() -> None:
    store = RecordingStore()
    q = SpillQueue()
    persisted: list[str] = []
    writer = PersistenceWriter(
        store,
        q,
        on_persisted=lambda ops: persisted.extend(o.message.id for o in ops),
        on_given_up=lambda ops, r: None,
        linger=0.2,
    )
    task = asyncio.create_task(writer.run())
    try:
        q.push_message(msg("m1"), time.time(), 1)
        writer.notify()
        await asyncio.sleep(0)  # the writer is lingering now
        q.push(SaveAck("m1", "a"), time.time())
        q.push_message(msg("m2"), time.time(), 1)
        writer.notify()
        assert await writer.flush(10)
        assert persisted == ["m1", "m2"]
        assert [type(op).__name__ for op in store.written] == ["SaveMessage"]  # m2 only: m1 left no trace
        assert store.written[0] == msg("m2")
    finally:
        task.cancel()


@run_async(30)
async def test_lingering_makes_progress_when_the_clock_stands_still() -> None:
    store = RecordingStore()
    q = SpillQueue()
    persisted: list[str] = []
    writer = PersistenceWriter(
        store,
        q,
        on_persisted=lambda ops: persisted.extend(o.message.id for o in ops),
        on_given_up=lambda ops, r: None,
        clock=lambda: 100.0,
        linger=0.05,
    )
    task = asyncio.create_task(writer.run())
    try:
        for i in range(3):
            q.push_message(msg(f"m{i}"), 100.0, 1)
        writer.notify()
        assert await writer.flush(10)
        assert persisted == ["m0", "m1", "m2"] and len(store.written) == 3
    finally:
        task.cancel()
