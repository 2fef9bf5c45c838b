"""The broker's delivery bookkeeping: a pure core with no I/O and an injected clock.

It owns every delivery obligation (message, client_id), the durable
subscriptions, the retry schedule and the publish-id dedup window. Each call
returns what the I/O shell must send and appends to :attr:`DeliveryCore.outbox`
the store operations that must be persisted, in order. The shell decides how
and when to write bytes and ops; the core never awaits anything, so it can be
tested exhaustively with a fake clock and a seeded RNG.

Scheduling is per message, not per delivery: a message sits in one heap entry
at the earliest due time of its deliveries (or its TTL), so a fan-out of 100
costs one heap push and an ack costs two dict pops.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .frames import MessageEncoder
from .store import (
    DropSubscription,
    Op,
    SaveAck,
    SaveAttempt,
    SaveDeadLetter,
    SaveMessage,
    SaveSubscription,
    Snapshot,
    StoredMessage,
)

INF = math.inf


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: delay n is uniform in [minimum, min(cap, initial * 2**(n-1))].

    ``initial`` is therefore the latest the first retry can come; ``minimum``
    keeps a jittered delay from collapsing to zero, which would burn the retry
    budget during a blip.
    """

    initial: float = 4.0
    minimum: float = 0.25
    cap: float = 30.0
    max_attempts: int = 10
    ttl: float = 3600.0

    def __post_init__(self) -> None:
        if not (0 <= self.minimum <= self.initial <= self.cap):
            raise ValueError("retry settings need 0 <= minimum <= initial <= cap")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.ttl <= 0:
            raise ValueError("ttl must be positive")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Delay after the ``attempt``-th send (1-based) before the next one."""
        ceiling = min(self.cap, self.initial * 2.0 ** min(attempt - 1, 62))
        return self.minimum + rng.random() * (ceiling - self.minimum)


class IdConflict(Exception):
    """A publish reused a message id that is live on another topic."""


class Message:
    __slots__ = (
        "id",
        "topic",
        "payload",
        "published_at",
        "publisher",
        "encoder",
        "deliveries",
        "expires_at",
        "check_at",
    )

    def __init__(
        self, mid: str, topic: str, payload: Any, published_at: float, publisher: str, ttl: float
    ) -> None:
        self.id = mid
        self.topic = topic
        self.payload = payload
        self.published_at = published_at
        self.publisher = publisher
        self.encoder = MessageEncoder(topic, mid, payload, published_at)
        self.deliveries: dict[str, Delivery] = {}
        self.expires_at = published_at + ttl
        self.check_at = INF  # time of this message's live heap entry


class Delivery:
    """One obligation. ``due`` is None while nothing is scheduled (recipient offline)."""

    __slots__ = ("message", "client_id", "attempt", "due")

    def __init__(self, message: Message, client_id: str, attempt: int = 0, due: float | None = None) -> None:
        self.message = message
        self.client_id = client_id
        self.attempt = attempt
        self.due = due


@dataclass(slots=True)
class PublishResult:
    id: str
    recipients: int
    duplicate: bool
    frame: bytes | None = None  # the attempt-1 message frame, None for a duplicate
    online: list[str] | None = None  # client_ids to send ``frame`` to now


@dataclass(slots=True)
class Stats:
    published: int = 0
    duplicates: int = 0
    delivered: int = 0  # message frames handed out (first deliveries, retries, replays)
    retried: int = 0  # of which attempt >= 2
    acked: int = 0
    dead_lettered: int = 0
    dead_loaded: int = 0  # dead deliveries found in the store at hydration
    hydrated_deliveries: int = 0


class DeliveryCore:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        policy: RetryPolicy | None = None,
        dedup_window: float = 120.0,
    ) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.policy = policy or RetryPolicy()
        self.dedup_window = dedup_window
        self.messages: dict[str, Message] = {}
        self.subscribers: dict[str, dict[str, None]] = {}  # topic -> ordered set of client_ids
        self.topics_of: dict[str, set[str]] = {}  # client_id -> topics
        self.pending: dict[str, dict[str, Delivery]] = {}  # client_id -> message id -> delivery
        self.online: set[str] = set()
        self.dedup: OrderedDict[str, tuple[str, float, int]] = OrderedDict()  # id -> (topic, seen, n)
        self.dead_ids: dict[str, str] = {}  # id -> topic of messages with a dead-lettered delivery
        self.outbox: list[Op] = []
        self.stats = Stats()
        self._heap: list[tuple[float, int, str]] = []
        self._staged: list[tuple[float, int, str]] = []  # heap entries of new messages, pushed lazily
        self._staged_min = INF
        # A lower bound of the oldest dedup entry's time: pruning is skipped while it is in the window.
        self._dedup_head = INF
        self._seq = 0

    # --- helpers -------------------------------------------------------------

    def take_ops(self) -> list[Op]:
        ops, self.outbox = self.outbox, []
        return ops

    def _schedule(self, msg: Message, when: float) -> None:
        if when < msg.check_at:
            msg.check_at = when
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, msg.id))

    def _forget(self, d: Delivery) -> None:
        msg = d.message
        msg.deliveries.pop(d.client_id, None)
        cp = self.pending.get(d.client_id)
        if cp is not None:
            cp.pop(msg.id, None)
            if not cp:
                del self.pending[d.client_id]
        if not msg.deliveries:
            self.messages.pop(msg.id, None)

    def _dead(self, d: Delivery, reason: str) -> None:
        self._forget(d)
        self.dead_ids[d.message.id] = d.message.topic
        self.stats.dead_lettered += 1
        self.outbox.append(SaveDeadLetter(d.message.id, d.client_id, reason))

    def _send(self, d: Delivery, now: float, schedule: bool = True) -> bytes:
        """Count one more attempt of ``d`` and return its frame."""
        d.attempt += 1
        d.due = now + self.policy.delay(d.attempt, self.rng)
        if schedule:
            self._schedule(d.message, d.due)
        self.stats.delivered += 1
        if d.attempt > 1:
            self.stats.retried += 1
            self.outbox.append(SaveAttempt(d.message.id, d.client_id, d.attempt))
        return d.message.encoder.frame(d.attempt)

    def _prune_dedup(self, now: float) -> None:
        horizon = now - self.dedup_window
        if self._dedup_head >= horizon:  # the oldest entry is still in the window: the usual case
            return
        dedup = self.dedup
        while dedup:
            _, (_, seen, _) = next(iter(dedup.items()))
            if seen >= horizon:
                self._dedup_head = seen
                return
            dedup.popitem(last=False)
        self._dedup_head = INF

    def new_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    # --- connections -----------------------------------------------------------

    def connect(self, client_id: str) -> None:
        """The client is reachable: resume the retry schedule of its outstanding deliveries."""
        self.online.add(client_id)
        now = self.clock()
        for d in self.pending.get(client_id, {}).values():
            if d.due is None:
                d.due = now + self.policy.delay(max(d.attempt, 1), self.rng)
                self._schedule(d.message, d.due)

    def disconnect(self, client_id: str) -> None:
        """No retries while offline; the deliveries stay outstanding (and under TTL)."""
        self.online.discard(client_id)

    # --- frames -------------------------------------------------------------------

    def subscribe(self, client_id: str, topic: str) -> list[bytes]:
        """Make the subscription durable and replay every outstanding delivery on ``topic``."""
        subs = self.subscribers.setdefault(topic, {})
        if client_id not in subs:
            subs[client_id] = None
            self.topics_of.setdefault(client_id, set()).add(topic)
            self.outbox.append(SaveSubscription(client_id, topic))
        cp = self.pending.get(client_id)
        if not cp or client_id not in self.online:
            return []
        now = self.clock()
        limit = self.policy.max_attempts
        replay = [d for d in cp.values() if d.message.topic == topic]
        frames = []
        for d in replay:
            if now >= d.message.expires_at:
                self._dead(d, "ttl")
            elif d.attempt < limit:
                frames.append(self._send(d, now))
        return frames

    def unsubscribe(self, client_id: str, topic: str) -> int:
        """Drop the subscription and this client's outstanding deliveries on it; return how many."""
        subs = self.subscribers.get(topic)
        was = subs is not None and subs.pop(client_id, 0) is None
        if subs is not None and not subs:
            del self.subscribers[topic]
        topics = self.topics_of.get(client_id)
        if topics is not None:
            topics.discard(topic)
            if not topics:
                del self.topics_of[client_id]
        cp = self.pending.get(client_id)
        dropped = [d for d in cp.values() if d.message.topic == topic] if cp else []
        for d in dropped:
            self._forget(d)
        if was or dropped:
            self.outbox.append(DropSubscription(client_id, topic))
        return len(dropped)

    def publish(self, publisher: str, topic: str, mid: str | None, payload: Any) -> PublishResult:
        """Create one obligation per subscriber and return the frame for those online.

        Raises :class:`IdConflict` when ``mid`` is live or recent on another topic.
        """
        now = self.clock()
        self._prune_dedup(now)
        if mid is None:
            mid = self.new_id()
        else:
            seen = self.dedup.get(mid)
            if seen is None and mid in self.messages:
                live = self.messages[mid]
                seen = (live.topic, live.published_at, len(live.deliveries))
            if seen is None and mid in self.dead_ids:
                # The store keeps dead-lettered messages, so their ids stay taken (inserts are ignored).
                seen = (self.dead_ids[mid], 0.0, 0)
            if seen is not None:
                if seen[0] != topic:
                    raise IdConflict(f"id {mid!r} is in use on topic {seen[0]!r}")
                self.stats.duplicates += 1
                return PublishResult(mid, seen[2], True)
        subs = self.subscribers.get(topic)
        recipients = tuple(subs) if subs else ()
        msg = Message(mid, topic, payload, now, publisher, self.policy.ttl)
        self.stats.published += 1
        if now < self._dedup_head:
            self._dedup_head = now
        self.dedup[mid] = (topic, now, len(recipients))
        self.outbox.append(SaveMessage(StoredMessage(mid, topic, payload, now, publisher), recipients))
        online: list[str] = []
        if recipients:
            self.messages[mid] = msg
            first = INF
            pending, is_online = self.pending, self.online
            deliveries = msg.deliveries
            # policy.delay(1, rng) for each recipient, unrolled (a fan-out of 100 calls it 100 times).
            policy, draw = self.policy, self.rng.random
            floor, spread = policy.minimum, min(policy.cap, policy.initial) - policy.minimum
            for cid in recipients:
                if cid in is_online:
                    # Each delivery gets its own jitter so retries of a burst spread out.
                    due = now + (floor + draw() * spread)
                    d = Delivery(msg, cid, 1, due)
                    if due < first:
                        first = due
                    online.append(cid)
                else:
                    d = Delivery(msg, cid)
                deliveries[cid] = d
                cp = pending.get(cid)
                if cp is None:
                    pending[cid] = {mid: d}
                else:
                    cp[mid] = d
            self.stats.delivered += len(online)
            # Staged, not pushed: most messages are acked long before their first retry is due,
            # and then never cost a heap push and pop (see _unstage).
            when = msg.check_at = min(first, msg.expires_at)
            self._seq += 1
            self._staged.append((when, self._seq, mid))
            if when < self._staged_min:
                self._staged_min = when
        return PublishResult(mid, len(recipients), False, msg.encoder.first, online)

    def ack(self, client_id: str, mid: str) -> bool:
        """The delivery is done; O(1). Returns False for an unknown or already settled delivery."""
        cp = self.pending.get(client_id)
        if cp is None:
            return False
        d = cp.pop(mid, None)
        if d is None:
            return False
        if not cp:
            del self.pending[client_id]
        msg = d.message
        del msg.deliveries[client_id]
        if not msg.deliveries:
            del self.messages[mid]
        self.stats.acked += 1
        self.outbox.append(SaveAck(mid, client_id))
        return True

    # --- time ---------------------------------------------------------------------

    def _unstage(self) -> None:
        """Move the staged entries of messages still outstanding into the heap; drop the rest."""
        staged, self._staged, self._staged_min = self._staged, [], INF
        messages, heap, push = self.messages, self._heap, heapq.heappush
        for entry in staged:
            msg = messages.get(entry[2])
            if msg is not None and msg.check_at == entry[0]:
                push(heap, entry)

    def next_deadline(self) -> float | None:
        first = self._heap[0][0] if self._heap else INF
        if self._staged_min < first:
            first = self._staged_min
        return None if first == INF else first

    def tick(self) -> list[tuple[str, bytes]]:
        """Run every due retry and expiry; return (client_id, frame) pairs to send now."""
        now = self.clock()
        if self._staged:
            self._unstage()
        heap = self._heap
        sends: list[tuple[str, bytes]] = []
        limit = self.policy.max_attempts
        while heap and heap[0][0] <= now:
            when, _, mid = heapq.heappop(heap)
            msg = self.messages.get(mid)
            if msg is None or msg.check_at != when:
                continue  # settled, or superseded by an earlier entry
            msg.check_at = INF
            if now >= msg.expires_at:
                for d in list(msg.deliveries.values()):
                    self._dead(d, "ttl")
                continue
            nxt = msg.expires_at
            for d in list(msg.deliveries.values()):
                if d.due is None:
                    continue
                if d.due <= now:
                    if d.client_id not in self.online:
                        d.due = None
                        continue
                    if d.attempt >= limit:
                        self._dead(d, "max_attempts")
                        continue
                    sends.append((d.client_id, self._send(d, now, schedule=False)))
                if d.due is not None and d.due < nxt:
                    nxt = d.due
            if msg.deliveries:
                self._schedule(msg, nxt)
        return sends

    # --- hydration ----------------------------------------------------------------

    def hydrate(self, snap: Snapshot) -> None:
        """Rebuild subscriptions and obligations from the store; nothing is online yet."""
        for cid, topic in snap.subscriptions:
            self.subscribers.setdefault(topic, {})[cid] = None
            self.topics_of.setdefault(cid, set()).add(topic)
        now = self.clock()
        horizon = now - self.dedup_window
        for m in sorted(snap.messages, key=lambda m: m.published_at):
            msg = Message(m.id, m.topic, m.payload, m.published_at, m.publisher, self.policy.ttl)
            self.messages[m.id] = msg
            if m.published_at >= horizon:
                self.dedup[m.id] = (m.topic, m.published_at, 0)
                self._dedup_head = min(self._dedup_head, m.published_at)
        for sd in snap.deliveries:
            msg = self.messages.get(sd.message_id)
            if msg is None:
                continue
            if sd.dead:
                self.stats.dead_loaded += 1
                self.dead_ids[msg.id] = msg.topic
                continue
            d = Delivery(msg, sd.client_id, sd.attempt)
            msg.deliveries[sd.client_id] = d
            self.pending.setdefault(sd.client_id, {})[msg.id] = d
            self.stats.hydrated_deliveries += 1
        for mid, msg in list(self.messages.items()):
            if not msg.deliveries:
                del self.messages[mid]
            else:
                entry = self.dedup.get(mid)
                if entry is not None:
                    self.dedup[mid] = (entry[0], entry[1], len(msg.deliveries))
                self._schedule(msg, msg.expires_at)

    # --- introspection ------------------------------------------------------------

    def outstanding(self) -> int:
        return sum(len(cp) for cp in self.pending.values())
