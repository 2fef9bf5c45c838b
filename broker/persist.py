"""Write-behind bookkeeping, pure: the bounded spill queue and the storage circuit breaker.

The queue holds the ordered op log that is not committed yet. Its bound is on
*messages* (count and payload bytes), because a message is the only thing the
broker can refuse: a publish that does not fit is answered ``overloaded`` and
not accepted. Acks, attempts and subscription changes always ride along; they
are bounded by a much larger hard cap, past which the oldest of them would
only cost duplicates after a restart, and are counted when dropped.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from itertools import islice

from .store import Op, SaveAck, SaveAttempt, SaveMessage


@dataclass(slots=True)
class Entry:
    op: Op
    enqueued: float
    size: int = 0  # payload bytes, for SaveMessage only
    skip: bool = False  # coalesced away: committed without being written
    sent: bool = False  # part of a write that failed: it may have committed all the same


class SpillQueue:
    def __init__(self, max_messages: int = 100_000, max_bytes: int = 64 << 20, hard_cap: int | None = None):
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("persistence queue limits must be at least 1")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.hard_cap = hard_cap or max(100_000, 20 * max_messages)
        self.entries: deque[Entry] = deque()
        self.messages = 0
        self.bytes = 0
        self.dropped_ops = 0

    def __len__(self) -> int:
        return len(self.entries)

    def admits(self, size: int) -> bool:
        """Would one more message of ``size`` bytes fit?"""
        return self.messages < self.max_messages and self.bytes + size <= self.max_bytes

    def push_message(self, op: SaveMessage, now: float, size: int) -> None:
        self.entries.append(Entry(op, now, size))
        self.messages += 1
        self.bytes += size

    def push(self, op: Op, now: float) -> bool:
        """Queue a non-message op; False (and counted) only past the hard cap."""
        if len(self.entries) >= self.hard_cap:
            self.dropped_ops += 1
            return False
        self.entries.append(Entry(op, now))
        return True

    def aged(self, cutoff: float, limit: int) -> int:
        """How many leading entries (at most ``limit``) were queued at or before ``cutoff``."""
        n = 0
        for e in self.entries:
            if n >= limit or e.enqueued > cutoff:
                break
            n += 1
        return n

    def peek(self, n: int) -> list[Op]:
        return [e.op for e in islice(self.entries, n)]

    def take(self, n: int, lookahead: int = 0) -> tuple[int, list[Op]]:
        """The next batch: how many entries it spans, and the ops that must actually be written.

        Coalescing: a message of this batch whose every recipient acked it (the
        acks may sit up to ``lookahead`` entries further on) leaves no trace in
        the store, so it and its acks and attempts are skipped, now and when the
        later entries come up. A crash in between loses nothing: the acks are
        real. A dead-lettered or unsubscribed recipient never acks, so a message
        with one is always written. Nor is a message coalesced once it was
        in a write that failed: that write may have committed (the
        connection died before the answer), and only its acks remove the rows.
        """
        left: dict[str, set[str]] = {}
        related: dict[str, list[Entry]] = {}
        batch: list[Entry] = []
        for i, e in enumerate(islice(self.entries, n + lookahead)):
            op = e.op
            kind = type(op)
            if i < n:
                batch.append(e)
                if kind is SaveMessage and not e.skip and not e.sent:
                    left[op.message.id] = set(op.recipients)  # type: ignore[union-attr]
                    related[op.message.id] = [e]  # type: ignore[union-attr]
                    continue
            if kind is SaveAck or kind is SaveAttempt:
                waiting = left.get(op.message_id)  # type: ignore[union-attr]
                if waiting is None:
                    continue
                if kind is SaveAck:
                    waiting.discard(op.client_id)  # type: ignore[union-attr]
                related[op.message_id].append(e)  # type: ignore[union-attr]
        for mid, waiting in left.items():
            if not waiting:
                for e in related[mid]:
                    e.skip = True
        return len(batch), [e.op for e in batch if not e.skip]

    def maybe_written(self, n: int) -> None:
        """The write of the first ``n`` entries failed; what it carried may be in the store anyway."""
        for e in islice(self.entries, n):
            if not e.skip:
                e.sent = True

    def commit(self, n: int) -> list[SaveMessage]:
        """Remove the first ``n`` entries (just written); return the messages among them."""
        done: list[SaveMessage] = []
        popleft = self.entries.popleft
        for _ in range(n):
            e = popleft()
            if isinstance(e.op, SaveMessage):
                self.messages -= 1
                self.bytes -= e.size
                done.append(e.op)  # type: ignore[arg-type]
        return done

    def oldest_message_age(self, now: float) -> float:
        for e in self.entries:
            if isinstance(e.op, SaveMessage):
                return now - e.enqueued
        return 0.0

    def expire(self, now: float, ttl: float) -> list[SaveMessage]:
        """Give up on messages queued longer than ``ttl``; return them (the publisher is told)."""
        if self.oldest_message_age(now) <= ttl:
            return []
        expired: list[SaveMessage] = []
        kept: deque[Entry] = deque()
        for e in self.entries:
            if isinstance(e.op, SaveMessage) and now - e.enqueued > ttl:
                expired.append(e.op)
                self.messages -= 1
                self.bytes -= e.size
            else:
                kept.append(e)
        self.entries = kept
        return expired


class Backoff:
    """Exponential backoff with full jitter between failed writes."""

    def __init__(self, initial: float = 0.05, cap: float = 5.0, rng: random.Random | None = None):
        self.initial = initial
        self.cap = cap
        self.rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return self.rng.random() * min(self.cap, self.initial * 2.0 ** min(self.failures - 1, 62))

    def reset(self) -> None:
        self.failures = 0


class CircuitBreaker:
    """Stops hammering a failing store: open after ``threshold`` consecutive failures.

    While open, no call is made until the cool-down ends; then one probe is let
    through (half-open). A failed probe reopens it with a doubled cool-down.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, threshold: int = 5, cooldown: float = 1.0, max_cooldown: float = 30.0):
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.cooldown = cooldown
        self.failures = 0
        self.state = self.CLOSED
        self.opened_at = 0.0
        self.opens = 0

    def allow(self, now: float) -> bool:
        if self.state == self.OPEN:
            if now - self.opened_at < self.cooldown:
                return False
            self.state = self.HALF_OPEN
        return True

    def retry_at(self) -> float:
        return self.opened_at + self.cooldown

    def success(self) -> None:
        self.failures = 0
        self.state = self.CLOSED
        self.cooldown = self.base_cooldown

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == self.HALF_OPEN:
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self._open(now)
        elif self.state == self.CLOSED and self.failures >= self.threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = self.OPEN
        self.opened_at = now
        self.opens += 1
