"""Who owes what to whom: subscriptions, live messages, outstanding deliveries, the dedup window.

No I/O and no timers here (the clock is passed in), so the bookkeeping can be reasoned
about on its own; the server owns sockets and retry timers and keeps one opaque timer
handle on each :class:`Delivery`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False, slots=True)
class Receipt:
    """What a publisher is owed about one message id; outlives the message for the dedup window."""

    id: str
    topic: str
    publisher: str | None
    recipients: int
    expires: float
    outcome: str | None = None  # "persisted" | "persist_failed"
    reason: str = ""
    told: bool = False


@dataclass(eq=False, slots=True)
class Message:
    receipt: Receipt
    body: str  # payload, JSON text
    published_at: float
    owed: set[str] = field(default_factory=set)  # client_ids with the delivery still outstanding

    @property
    def id(self) -> str:
        return self.receipt.id

    @property
    def topic(self) -> str:
        return self.receipt.topic


@dataclass(eq=False, slots=True)
class Delivery:
    message: Message
    client_id: str
    attempts: int = 0
    timer: Any = None  # the server's retry handle, None while not scheduled


class IdInUse(Exception):
    """A publish id still live on another topic: acks carry only the id, so it cannot be reused."""


class Ledger:
    def __init__(self, dedup_window: float, backlog_cap: int | None = None) -> None:
        self.window = dedup_window
        self.backlog_cap = backlog_cap
        self.topics: dict[str, set[str]] = {}  # topic -> client_ids
        self.messages: dict[str, Message] = {}  # live: some delivery still outstanding
        self.pending: dict[str, dict[str, Delivery]] = {}  # client_id -> message id -> delivery
        self.receipts: dict[tuple[str, str], Receipt] = {}
        self._receipt_order: deque[Receipt] = deque()
        self._by_age: deque[Message] = deque()  # publish order, for the TTL sweep
        self.dead_lettered = 0
        self.evicted = 0

    # --- subscriptions ---------------------------------------------------------------------------

    def subscribe(self, client_id: str, topic: str) -> bool:
        members = self.topics.setdefault(topic, set())
        new = client_id not in members
        members.add(client_id)
        return new

    def unsubscribe(self, client_id: str, topic: str) -> list[Delivery]:
        """Drop the subscription and, as PROTOCOL.md says, this client's outstanding deliveries on it."""
        members = self.topics.get(topic)
        if members is not None:
            members.discard(client_id)
            if not members:
                del self.topics[topic]
        gone = [d for d in self.pending.get(client_id, {}).values() if d.message.topic == topic]
        for d in gone:
            self._settle(d)
        return gone

    def recipients(self, topic: str) -> list[str]:
        """Fan-out order: client_id descending (deliberately not subscription order)."""
        return sorted(self.topics.get(topic, ()), reverse=True)

    # --- publishing ------------------------------------------------------------------------------

    def duplicate_of(self, topic: str, msg_id: str) -> Receipt | None:
        """The earlier publish this one repeats, or None; raises :class:`IdInUse` across topics."""
        live = self.messages.get(msg_id)
        if live is not None:
            if live.topic != topic:
                raise IdInUse(f"id {msg_id!r} is outstanding on topic {live.topic!r}")
            return live.receipt
        return self.receipts.get((topic, msg_id))

    def publish(
        self, msg_id: str, topic: str, body: str, publisher: str | None, now: float
    ) -> tuple[Message, list[Delivery], list[Delivery]]:
        """Create the message and one delivery per current subscriber: (message, deliveries, evicted)."""
        clients = self.recipients(topic)
        receipt = Receipt(msg_id, topic, publisher, len(clients), now + self.window)
        msg = Message(receipt, body, now, set(clients))
        self._remember(receipt)
        deliveries = [Delivery(msg, c) for c in clients]
        evicted: list[Delivery] = []
        if deliveries:
            self.messages[msg_id] = msg
            self._by_age.append(msg)
            for d in deliveries:
                evicted += self._add(d)
        return msg, deliveries, evicted

    def _add(self, d: Delivery) -> list[Delivery]:
        queue = self.pending.setdefault(d.client_id, {})
        queue[d.message.id] = d
        if self.backlog_cap is None or len(queue) <= self.backlog_cap:
            return []
        oldest = queue[next(iter(queue))]  # a memory guard: forget the oldest of a backed-up client
        self._settle(oldest)
        self.evicted += 1
        return [oldest]

    def _remember(self, receipt: Receipt) -> None:
        self.receipts[(receipt.topic, receipt.id)] = receipt
        self._receipt_order.append(receipt)

    # --- settling --------------------------------------------------------------------------------

    def ack(self, client_id: str, msg_id: str) -> Delivery | None:
        d = self.pending.get(client_id, {}).get(msg_id)
        if d is not None:
            self._settle(d)
        return d

    def dead_letter(self, d: Delivery) -> None:
        self._settle(d)
        self.dead_lettered += 1

    def _settle(self, d: Delivery) -> None:
        queue = self.pending.get(d.client_id)
        if queue is not None and queue.pop(d.message.id, None) is not None and not queue:
            del self.pending[d.client_id]
        msg = d.message
        msg.owed.discard(d.client_id)
        if not msg.owed and self.messages.get(msg.id) is msg:
            del self.messages[msg.id]

    def outstanding(self, client_id: str, topic: str | None = None) -> list[Delivery]:
        ds = self.pending.get(client_id, {}).values()
        return [d for d in ds if topic is None or d.message.topic == topic]

    def expired(self, now: float, ttl: float) -> list[Delivery]:
        """Deliveries of messages older than *ttl*, online recipient or not; and old receipts forgotten."""
        out: list[Delivery] = []
        while self._by_age and self._by_age[0].published_at + ttl <= now:
            msg = self._by_age.popleft()
            out += [self.pending[c][msg.id] for c in sorted(msg.owed) if msg.id in self.pending.get(c, {})]
        while self._receipt_order and self._receipt_order[0].expires <= now:
            r = self._receipt_order.popleft()
            if self.receipts.get((r.topic, r.id)) is r:
                del self.receipts[(r.topic, r.id)]
        return out

    # --- hydration -------------------------------------------------------------------------------

    def restore(
        self,
        subscriptions: Iterable[tuple[str, str]],
        rows: Iterable[tuple[str, str, str, float, str, int]],
        now: float,
    ) -> list[Delivery]:
        """Rebuild from the store: (client_id, topic) pairs and (id, topic, body, published_at,
        client_id, attempts) rows in publish order. The publishers were told long ago."""
        for client_id, topic in subscriptions:
            self.subscribe(client_id, topic)
        restored: list[Delivery] = []
        for msg_id, topic, body, published_at, client_id, attempts in rows:
            msg = self.messages.get(msg_id)
            if msg is None:
                receipt = Receipt(msg_id, topic, None, 0, max(now, published_at + self.window), "persisted")
                receipt.told = True
                msg = Message(receipt, body, published_at)
                self.messages[msg_id] = msg
                self._by_age.append(msg)
                self._remember(receipt)
            msg.owed.add(client_id)
            msg.receipt.recipients += 1
            d = Delivery(msg, client_id, attempts)
            self.pending.setdefault(client_id, {})[msg_id] = d
            restored.append(d)
        return restored
