"""The background persistence writer: drains the spill queue into the store in batches.

It is the only thing that awaits storage in normal operation. Every call has a
deadline; failures back off with full jitter and trip a circuit breaker, so a
dead database costs neither delivery latency nor a storm of reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .logs import event
from .persist import Backoff, CircuitBreaker, SpillQueue
from .store import SaveMessage, Store


class PersistenceWriter:
    def __init__(
        self,
        store: Store,
        queue: SpillQueue,
        *,
        on_persisted: Callable[[list[SaveMessage]], None],
        on_given_up: Callable[[list[SaveMessage], str], None],
        clock: Callable[[], float] = time.time,
        batch_max: int = 1000,
        persist_ttl: float = 120.0,
        db_timeout: float = 2.0,
        linger: float = 0.0,
    ) -> None:
        self.store = store
        self.queue = queue
        self.on_persisted = on_persisted
        self.on_given_up = on_given_up
        self.clock = clock
        self.batch_max = batch_max
        self.persist_ttl = persist_ttl
        self.linger = linger
        # The store enforces its own timeout; this outer one only guards against a store that does not.
        self.deadline = db_timeout * 2 + 1.0
        self.breaker = CircuitBreaker(threshold=3, cooldown=0.5, max_cooldown=5.0)
        self.backoff = Backoff(initial=0.05, cap=2.0)
        self.failures = 0  # failed storage calls
        self.given_up = 0  # messages told persist_failed
        self.batches = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def notify(self) -> None:
        """Call after queueing ops; cheap when the writer is already awake."""
        self._idle.clear()
        self._wake.set()

    @property
    def healthy(self) -> bool:
        return self.last_error is None and self.breaker.state == CircuitBreaker.CLOSED

    async def flush(self, timeout: float) -> bool:
        """Wait (bounded) until everything queued so far is written; True when it was."""
        if not self.queue:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    def _give_up(self, now: float) -> None:
        expired = self.queue.expire(now, self.persist_ttl)
        if expired:
            reason = f"storage unavailable for over {self.persist_ttl:g} s: {self.last_error or 'timeout'}"
            self.given_up += len(expired)
            event("persist_given_up", logging.WARNING, messages=len(expired), reason=reason)
            self.on_given_up(expired, reason)

    async def run(self) -> None:
        """Drain forever; a bug in one iteration is logged and retried, never a silently dead writer."""
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                self.last_error = "internal error in the persistence writer (see log)"
                logging.getLogger("broker").exception("persistence writer failed; restarting it")
                await asyncio.sleep(self.backoff.next_delay())

    async def _run(self) -> None:
        queue = self.queue
        while True:
            if not queue:
                self._idle.set()
                await self._wake.wait()
                self._wake.clear()
                continue
            now = self.clock()
            self._give_up(now)
            if not queue:
                continue
            if not self.breaker.allow(now):
                await asyncio.sleep(max(0.0, self.breaker.retry_at() - now))
                continue
            limit = self.batch_max
            if self.linger > 0:
                # Let acks catch up: a message acked before its batch is taken is never written.
                wait = queue.entries[0].enqueued + self.linger - now
                if wait > 0 and len(queue) < limit:
                    await asyncio.sleep(min(wait, self.linger))  # real time: bounded even if the clock is not
                    now = self.clock()
                aged = queue.aged(now - self.linger, limit)
                limit = aged or limit  # nothing old enough (the clock stood still): take what is there
            count, writes = queue.take(limit, lookahead=self.batch_max)
            try:
                if writes:
                    async with asyncio.timeout(self.deadline):
                        await self.store.apply(writes)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # StoreError, TimeoutError, or a driver error the store let through
                queue.maybe_written(count)  # it may have committed before its connection died
                self.failures += 1
                first = self.last_error is None
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                was = self.breaker.state
                self.breaker.failure(self.clock())
                if first or was != self.breaker.state:
                    event(
                        "persist_failed",
                        logging.WARNING,
                        error=self.last_error,
                        backlog=len(queue),
                        breaker=self.breaker.state,
                    )
                await asyncio.sleep(self.backoff.next_delay())
                continue
            done = queue.commit(count)
            self.batches += 1
            if self.last_error is not None:
                event("persist_recovered", backlog=len(queue))
            self.last_error = None
            self.breaker.success()
            self.backoff.reset()
            if done:
                self.on_persisted(done)
