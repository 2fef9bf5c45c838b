"""An in-process :class:`~broker.store.Store`: the default, not durable across restarts.

It applies the same operations as the PostgreSQL store, with the same
idempotence, so the persistence writer runs the same code path with either
store, and in-process tests can share one instance between two broker
instances to exercise hydration without a database.
"""

from __future__ import annotations

from collections.abc import Sequence

from .store import (
    DropSubscription,
    Op,
    SaveAck,
    SaveAttempt,
    SaveDeadLetter,
    SaveMessage,
    SaveSubscription,
    Snapshot,
    StoredDelivery,
    StoredMessage,
)


class MemoryStore:
    durable = False

    def __init__(self) -> None:
        self.messages: dict[str, StoredMessage] = {}
        self.deliveries: dict[tuple[str, str], StoredDelivery] = {}  # (message_id, client_id)
        self.by_message: dict[str, set[str]] = {}  # message_id -> client_ids with a delivery left
        self.subscriptions: dict[tuple[str, str], None] = {}  # ordered set of (client_id, topic)
        self.applied_batches = 0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def load(self) -> Snapshot:
        return Snapshot(
            subscriptions=list(self.subscriptions),
            messages=[m for mid, m in self.messages.items() if self.by_message.get(mid)],
            deliveries=list(self.deliveries.values()),
        )

    async def apply(self, ops: Sequence[Op]) -> None:
        ack, remove = SaveAck, self._remove
        for op in ops:
            if type(op) is ack:  # the most frequent op by far: one per delivery
                remove(op.message_id, op.client_id)  # type: ignore[union-attr]
            else:
                self.apply_one(op)
        self.applied_batches += 1

    def _remove(self, mid: str, cid: str) -> None:
        if self.deliveries.pop((mid, cid), None) is not None:
            left = self.by_message.get(mid)
            if left is not None:
                left.discard(cid)
                if not left:
                    del self.by_message[mid]
                    self.messages.pop(mid, None)

    def apply_one(self, op: Op) -> None:
        if isinstance(op, SaveMessage):
            mid = op.message.id
            if mid in self.messages:
                return  # insert, ignore conflicts: a retried batch must not duplicate
            if not op.recipients:
                return  # nothing is owed to anyone, so there is nothing to keep
            self.messages[mid] = op.message
            self.by_message[mid] = set(op.recipients)
            for cid in op.recipients:
                self.deliveries[(mid, cid)] = StoredDelivery(mid, cid, 0)
        elif isinstance(op, SaveAck):
            self._remove(op.message_id, op.client_id)
        elif isinstance(op, SaveAttempt):
            d = self.deliveries.get((op.message_id, op.client_id))
            if d is not None and not d.dead and op.attempt > d.attempt:
                self.deliveries[(op.message_id, op.client_id)] = StoredDelivery(
                    d.message_id, d.client_id, op.attempt
                )
        elif isinstance(op, SaveDeadLetter):
            d = self.deliveries.get((op.message_id, op.client_id))
            if d is not None:
                self.deliveries[(op.message_id, op.client_id)] = StoredDelivery(
                    d.message_id, d.client_id, d.attempt, dead=True
                )
        elif isinstance(op, SaveSubscription):
            self.subscriptions[(op.client_id, op.topic)] = None
        elif isinstance(op, DropSubscription):
            self.subscriptions.pop((op.client_id, op.topic), None)
            for (mid, cid), _ in list(self.deliveries.items()):
                if cid == op.client_id and self.messages[mid].topic == op.topic:
                    self._remove(mid, cid)
        else:  # pragma: no cover - the Op union is closed
            raise TypeError(f"unknown store operation {op!r}")
