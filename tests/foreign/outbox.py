"""The bounded queue of writes not yet in the store, and the one task that writes them.

Delivery never waits here: the server appends ops and moves on. The writer takes
them in order, in batches, folds into each batch what cancels out (an ack of a
message inserted by the same batch removes its row before it is written), and
applies the batch as one transaction with a hard deadline. A failed batch goes
back to the head of the queue and is retried with jittered backoff; a message
still unwritten after ``persist_give_up`` seconds is given up (``persist_failed``).
A message of a failed batch is never folded again: the failure may have come after
the commit (the answer lost), so its rows may be there, and only its acks, written,
remove them. Each message's outcome is decided once (:meth:`Outbox._decide`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from tests.foreign.ledger import Message, Receipt
from tests.foreign.mutants import Bugs
from tests.foreign.settings import Settings
from tests.foreign.stores import Plan, Store

log = logging.getLogger("foreign.outbox")
IDLE_PROBE = 2.0  # seconds without writes before storage is probed


@dataclass(slots=True)
class Save:
    message: Message
    clients: tuple[str, ...]


@dataclass(slots=True)
class Ack:
    message_id: str
    client_id: str


@dataclass(slots=True)
class Attempt:
    message_id: str
    client_id: str
    attempts: int


@dataclass(slots=True)
class Dead:
    message_id: str
    client_id: str


@dataclass(slots=True)
class Sub:
    client_id: str
    topic: str


@dataclass(slots=True)
class Unsub:
    client_id: str
    topic: str


Op = Save | Ack | Attempt | Dead | Sub | Unsub


def coalesce(ops: Iterable[Op], *, drop_stray_acks: bool = False, sent: Collection[str] = ()) -> Plan:
    """One batch of ops, in order, as a :class:`Plan`; what the batch itself cancels is never written.

    ``sent``: ids of messages whose earlier write failed, maybe after its commit: written as
    they are, their acks applied as deletes. ``drop_stray_acks`` is the ack-dropped-in-coalesce
    mutant: an ack is only folded into a save of the same batch, and one for an older message is lost.
    """
    plan = Plan()
    saves: dict[str, tuple[Save, dict[str, list[object]]]] = {}
    for op in ops:
        if isinstance(op, Save):
            if op.message.id in sent:
                m = op.message
                plan.messages.append((m.id, m.topic, m.body, m.published_at))
                plan.owed += [(c, m.id, 0, False) for c in op.clients]
            else:
                saves[op.message.id] = (op, {c: [0, False] for c in op.clients})
            continue
        if isinstance(op, Sub):
            plan.subscribe.append((op.client_id, op.topic))
            continue
        if isinstance(op, Unsub):
            plan.unsubscribe.append((op.client_id, op.topic))
            continue
        rows = saves.get(op.message_id, (None, {}))[1]
        row = rows.get(op.client_id)
        if isinstance(op, Ack):
            if row is not None:
                del rows[op.client_id]
            elif not drop_stray_acks:
                plan.acked.append((op.client_id, op.message_id))
        elif isinstance(op, Attempt):
            if row is not None:
                row[0] = op.attempts
            else:
                plan.attempts.append((op.client_id, op.message_id, op.attempts))
        elif row is not None:  # Dead
            row[1] = True
        else:
            plan.dead.append((op.client_id, op.message_id))
    for save, rows in saves.values():
        if rows:
            m = save.message
            plan.messages.append((m.id, m.topic, m.body, m.published_at))
            plan.owed += [(c, m.id, int(n), bool(dead)) for c, (n, dead) in rows.items()]
    return plan


class Outbox:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        bugs: Bugs,
        tell: Callable[[Receipt], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.s, self.bugs, self.tell, self.clock = store, settings, bugs, tell, clock
        self.ops: deque[Op] = deque()
        self.unsaved = 0  # Save ops queued or in flight
        self.unsaved_bytes = 0
        self.in_flight = 0
        self.failing: str | None = None  # the last storage error, while storage keeps failing
        self.sent: set[str] = set()  # messages of failed batches: maybe written (see coalesce)
        self.counts = {"batches": 0, "failures": 0, "given_up": 0, "dropped": 0}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def full(self) -> bool:
        return self.unsaved >= self.s.persist_queue or self.unsaved_bytes >= self.s.persist_queue_bytes

    def put(self, op: Op) -> None:
        if isinstance(op, Save):
            self.unsaved += 1
            self.unsaved_bytes += len(op.message.body)
            if self.bugs.on("write-behind"):  # acknowledged on enqueue; the flush follows within a second
                asyncio.get_running_loop().call_soon(self._decide, op.message.receipt, "persisted", "")
        self.ops.append(op)
        self._idle.clear()
        self._wake.set()

    async def write_now(self, save: Save) -> bool:
        """Write one message at once (only the store-first mutant calls this); False when storage failed."""
        try:
            await self.store.apply(coalesce([save]), self.s.db_timeout)
        except Exception as exc:
            self._failed(exc)
            return False
        self.failing = None
        self._decide(save.message.receipt, "persisted", "")
        return True

    def _decide(self, receipt: Receipt, outcome: str, reason: str) -> None:
        if receipt.outcome is None:
            receipt.outcome, receipt.reason = outcome, reason
            self.tell(receipt)

    def _failed(self, exc: BaseException) -> None:
        self.counts["failures"] += 1
        self.failing = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__

    def _take(self) -> list[Op]:
        """Up to ``batch`` ops, ending after an unsubscribe (it deletes rows the next ops may add)."""
        batch: list[Op] = []
        while self.ops and len(batch) < self.s.batch:
            op = self.ops.popleft()
            batch.append(op)
            if isinstance(op, Unsub):
                break
        return batch

    def _written(self, batch: list[Op], outcome: str, reason: str = "") -> None:
        for op in batch:
            if isinstance(op, Save):
                self.sent.discard(op.message.id)
                self.unsaved -= 1
                self.unsaved_bytes -= len(op.message.body)
                self._decide(op.message.receipt, outcome, reason)

    def _give_up_old(self) -> None:
        limit = self.clock() - self.s.persist_give_up
        old = [op for op in self.ops if isinstance(op, Save) and op.message.published_at <= limit]
        if old:
            stale = {id(op) for op in old}
            self.ops = deque(op for op in self.ops if id(op) not in stale)
            self.counts["given_up"] += len(old)
            log.warning("gave up persisting %d messages: %s", len(old), self.failing)
            self._written(list(old), "persist_failed", self.failing or "storage unavailable")

    async def run(self) -> None:
        delay = 0.05
        while True:
            if not self.ops:
                self._idle.set()
                self._wake.clear()
                try:
                    async with asyncio.timeout(IDLE_PROBE):
                        await self._wake.wait()
                except TimeoutError:
                    await self._probe()  # so /healthz tells an outage even while nothing is written
                continue
            if self.bugs.on("write-behind"):
                await asyncio.sleep(1.0)  # flush once a second
            batch = self._take()
            self.in_flight = len(batch)
            try:
                stray = self.bugs.on("ack-dropped-in-coalesce")
                plan = coalesce(batch, drop_stray_acks=stray, sent=self.sent)
                if plan:
                    await self.store.apply(plan, self.s.db_timeout)
            except Exception as exc:
                self._failed(exc)
                self.in_flight = 0
                if self.bugs.on("drop-failed-batch"):
                    log.warning("write failed, dropping %d ops: %s", len(batch), self.failing)
                    self.counts["dropped"] += len(batch)
                    saves = [op for op in batch if isinstance(op, Save)]
                    self.unsaved -= len(saves)
                    self.unsaved_bytes -= sum(len(op.message.body) for op in saves)
                    continue
                log.info("write failed (%s), retrying %d ops", self.failing, len(batch))
                self.sent.update(op.message.id for op in batch if isinstance(op, Save))
                self.ops.extendleft(reversed(batch))
                self._give_up_old()
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(2.0, delay * 2)
                continue
            self.in_flight = 0
            self.failing = None
            delay = 0.05
            self.counts["batches"] += 1
            self._written(batch, "persisted")

    async def _probe(self) -> None:
        try:
            await self.store.ping(self.s.db_timeout)
        except Exception as exc:
            self._failed(exc)
        else:
            self.failing = None

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued is written (True) or *timeout* passed (False)."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
