"""The broker: client frames in, deliveries and replies out, persistence outcomes back to publishers.

Everything about *what* to deliver lives in :mod:`broker.delivery`, bytes on
sockets in :mod:`broker.connection`, the HTTP side in :mod:`broker.endpoints`.
This class wires them: it turns each frame into calls on the delivery core,
hands the frames the core returns to sessions, and feeds the core's store ops
to the persistence writer. Frame handling is synchronous: a publish never
awaits storage or another client's socket (unless a ``--flaw`` publish path
says so; the flaws are strategies in :mod:`broker.publishing` and
:mod:`broker.hydration`, so nothing here branches on them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from websockets.http11 import Request, Response

from . import frames as F
from .auth import Rights, load_tokens
from .config import Config
from .connection import Connection, Listener, Settings
from .delivery import DeliveryCore, IdConflict, PublishResult, RetryPolicy
from .endpoints import Admission, health, route
from .hydration import Hydration, hydration
from .logs import event
from .persist import SpillQueue
from .publishing import PublishPath, publish_path
from .retry_timer import RetryTimer
from .session import SESSION_REPLACED, SLOW_CONSUMER, Session
from .startup import StartupError, make_store, open_store
from .store import SaveMessage, Store
from .writer import PersistenceWriter

__all__ = ["Broker", "StartupError"]


class Broker:
    def __init__(
        self,
        cfg: Config,
        store: Store | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        publishing: PublishPath | None = None,
        hydrating: Hydration | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.tokens: dict[str, Rights] | None = load_tokens(cfg.auth) if cfg.auth else None
        self.store: Store = store if store is not None else make_store(cfg)
        self.flaws = cfg.flaws
        self.publishing = publishing or publish_path(cfg.flaws, cfg.compression)
        self.hydrating = hydrating or hydration(cfg.flaws)
        policy = RetryPolicy(
            initial=cfg.retry_initial,
            minimum=cfg.retry_min,
            cap=cfg.retry_max,
            max_attempts=cfg.max_attempts,
            ttl=cfg.ttl,
        )
        self.core = DeliveryCore(clock=clock, rng=rng, policy=policy, dedup_window=cfg.dedup_window)
        self.queue = SpillQueue(cfg.persist_queue_limit, cfg.persist_queue_bytes)
        self.writer = PersistenceWriter(
            self.store,
            self.queue,
            on_persisted=self._persisted,
            on_given_up=self._given_up,
            clock=clock,
            batch_max=cfg.persist_batch,
            persist_ttl=cfg.persist_ttl,
            db_timeout=cfg.db_timeout,
            linger=cfg.persist_linger if self.store.durable else 0.0,  # coalescing pays off only for real I/O
        )
        self.timer = RetryTimer(self.core, clock, self._due)
        self.conns: dict[str, Session] = {}
        self.waiters: dict[str, list[Session]] = {}  # message id -> publishers waiting for persisted
        self.failed_ids: OrderedDict[str, str] = OrderedDict()  # recently given-up ids -> reason
        self.counters: dict[str, int] = {
            "overloaded": 0,
            "slow_consumers": 0,
            "takeovers": 0,
            "connections": 0,
            "rejected_handshakes": 0,
        }
        self.errors: dict[str, int] = dict.fromkeys(F.ERROR_CODES, 0)
        self.listener: Listener | None = None
        self.port: int | None = None
        self.stopping = False
        self.started_at = clock()
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ----------------------------------------------------------------

    async def bind(self) -> None:
        """Bind the port without accepting yet, so a taken port fails before anything else starts."""
        cfg = self.cfg
        settings = Settings(
            max_size=cfg.max_frame + 65536,  # a bit over: frames just above the limit get a too_large error
            compression=cfg.compression,
            ping_interval=cfg.ping_interval or None,
            close_timeout=2.0,
            max_queue=cfg.max_queue,
        )
        self.listener = Listener(self, settings)
        self.port = await self.listener.bind(cfg.host, cfg.port)

    async def unbind(self) -> None:
        """Give the port back without ever having served (start-up failed or was interrupted)."""
        if self.listener is not None:
            self.listener.close()
            await self.listener.wait_closed()

    async def open_store(self) -> None:
        """Open the store and hydrate (as the hydration strategy says), retrying until ``startup_timeout``."""
        snapshot = await open_store(self.store, self.cfg, self.hydrating)
        self.hydrating.apply(self.core, snapshot)
        self.timer.arm()

    async def start(self) -> None:
        assert self.listener is not None
        self._tasks.append(asyncio.get_running_loop().create_task(self.writer.run()))
        await self.listener.start_serving()

    async def shutdown(self) -> None:
        """Stop accepting, let persistence catch up, close clients with 1001, stop. Bounded."""
        self.stopping = True
        end = time.monotonic() + self.cfg.shutdown_timeout
        listener = self.listener
        assert listener is not None
        listener.stop_accepting()  # existing sessions continue for now
        # Persist while publishers can still be told 'persisted'.
        first = 3.0 if self.writer.healthy else 1.0  # storage failing: do not spend the budget waiting for it
        await self.writer.flush(max(0.1, min(first, end - time.monotonic() - 3.0)))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, min(1.0, end - time.monotonic() - 3.0))):
                while any(s.queue for s in self.conns.values()):  # noqa: ASYNC110 - bounded, shutdown only
                    await asyncio.sleep(0.02)
        listener.close()  # 1001 going away, then wait for the connections to go
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, end - time.monotonic() - 1.0)):
                await listener.wait_closed()
        flushed = await self.writer.flush(max(0.1, end - time.monotonic() - 0.5))
        self.timer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(0.1, end - time.monotonic())):
                await self.store.close()
        event("stopped", unpersisted_ops=len(self.queue), flushed=flushed)

    def health(self) -> dict[str, Any]:
        return health(self)

    # --- connections (the listener's Application) ------------------------------------

    def process_request(self, conn: Connection, request: Request) -> Response | None:
        answer = route(self, request)
        if isinstance(answer, Admission):
            conn.context = answer
            return None
        return answer

    def connection_open(self, conn: Connection) -> None:
        admitted: Admission = conn.context
        client_id = admitted.client_id
        s = Session(conn, client_id, admitted.rights, self.cfg.send_queue, self._overflow)
        conn.context = s
        old = self.conns.get(client_id)
        if old is not None:
            self.counters["takeovers"] += 1
            old.fail(SESSION_REPLACED, "replaced by a newer connection with the same client_id")
        self.conns[client_id] = s
        self.counters["connections"] += 1
        self.core.connect(client_id)
        self.timer.arm()
        event("connected", logging.DEBUG, client_id=client_id)
        conn.on_message = partial(self.handle, s)

    def connection_closed(self, conn: Connection) -> None:
        s: Session = conn.context
        s.stop()
        if self.conns.get(s.client_id) is s:
            del self.conns[s.client_id]
            self.core.disconnect(s.client_id)
        event("disconnected", logging.DEBUG, client_id=s.client_id, code=conn.close_code)

    def _overflow(self, s: Session) -> None:
        """Slow-consumer policy: close it; its deliveries stay outstanding and are retried later."""
        if not s.closed:
            self.counters["slow_consumers"] += 1
            event("slow_consumer_closed", logging.WARNING, client_id=s.client_id, queued=len(s.queue))
            s.fail(SLOW_CONSUMER, "slow consumer: send queue overflowed")

    # --- frames ---------------------------------------------------------------------

    def handle(self, s: Session, data: str | bytes) -> Awaitable[None] | None:
        """One client frame. Returns an awaitable only when the publish path awaits (a flaw)."""
        frame: F.ClientFrame | None = None
        try:
            frame = F.parse(data, self.cfg.max_frame)
            if (
                s.rights.expires_at is not None
                and not isinstance(frame, F.Ping)
                and s.rights.expired(self.clock())
            ):
                raise F.FrameError(F.UNAUTHORIZED, "token expired; reconnect with a valid token", frame.ref)
            if type(frame) is F.Ack:
                if self.core.ack(s.client_id, frame.id):
                    self._flush_ops()
            elif type(frame) is F.Publish:
                pending = self.publishing.publish(self, s, frame, len(data))
                if pending is not None:
                    return self._guard(s, pending, frame.ref)
            elif type(frame) is F.Subscribe:
                self._subscribe(s, frame)
            elif type(frame) is F.Unsubscribe:
                self.core.unsubscribe(s.client_id, frame.topic)
                self._flush_ops()
                s.send(F.unsubscribed_frame(frame.topic))
            else:
                s.send(F.pong_frame(frame.ref))
        except F.FrameError as exc:
            self._error(s, exc)
        except Exception:
            logging.getLogger("broker").exception("internal error handling a frame")
            ref = frame.ref if frame is not None else None
            self._error(s, F.FrameError(F.INTERNAL, "internal error; see the broker log", ref))
        return None

    async def _guard(self, s: Session, pending: Awaitable[None], ref: Any) -> None:
        """Errors of an awaiting publish path: refused frames as usual, anything else as ``internal``."""
        try:
            await pending
        except F.FrameError as exc:
            self._error(s, exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            event("publish_failed", logging.ERROR, error=error, flaws=sorted(self.flaws))
            self._error(s, F.FrameError(F.INTERNAL, f"publish failed: {type(exc).__name__}", ref))

    def _error(self, s: Session, exc: F.FrameError) -> None:
        self.errors[exc.code] += 1
        s.send(F.error_from(exc))
        if exc.code == F.TOO_LARGE:
            s.fail(1009, "frame too large")

    def _subscribe(self, s: Session, frame: F.Subscribe) -> None:
        if not s.rights.may_subscribe(frame.topic):
            raise F.FrameError(F.FORBIDDEN, f"not allowed to subscribe to {frame.topic!r}", frame.ref)
        replay = self.core.subscribe(s.client_id, frame.topic)
        self._flush_ops()
        s.send(F.subscribed_frame(frame.topic))
        for data in replay:
            s.send(data, bounded=False)
        self.timer.arm()

    # --- what publish paths use -------------------------------------------------------

    def admit(self, s: Session, frame: F.Publish, size: int) -> None:
        """Refuse a publish this client may not make, or that the broker cannot take now."""
        if not s.rights.may_publish(frame.topic):
            raise F.FrameError(F.FORBIDDEN, f"not allowed to publish to {frame.topic!r}", frame.ref)
        if self.stopping:
            raise F.FrameError(F.OVERLOADED, "broker is shutting down", frame.ref)
        if not self.queue.admits(size):
            self.counters["overloaded"] += 1
            raise F.FrameError(F.OVERLOADED, "persistence backlog is full; retry later", frame.ref)

    def accept(self, s: Session, frame: F.Publish) -> PublishResult:
        """Record the message in the delivery core: its obligations, or that it is a duplicate."""
        try:
            return self.core.publish(s.client_id, frame.topic, frame.id, frame.payload)
        except IdConflict as exc:
            raise F.FrameError(F.BAD_REQUEST, str(exc), frame.ref) from None

    def persist(self, size: int) -> None:
        """Queue what the core recorded for storage and re-arm the retry timer."""
        self._flush_ops(size)
        self.timer.arm()

    def tell_outcome(self, s: Session, mid: str) -> None:
        """A duplicate publish gets the original's persistence outcome too."""
        waiting = self.waiters.get(mid)
        if waiting is not None:
            waiting.append(s)
        elif mid in self.failed_ids:
            s.send(F.persist_failed_frame(mid, self.failed_ids[mid]))
        else:
            s.send(F.persisted_frame(mid))

    # --- persistence ------------------------------------------------------------------

    def _flush_ops(self, size: int = 0) -> None:
        ops = self.core.take_ops()
        if not ops:
            return
        now = self.clock()
        q = self.queue
        for op in ops:
            if type(op) is SaveMessage:
                q.push_message(op, now, size)
            else:
                q.push(op, now)
        self.writer.notify()

    def _persisted(self, ops: list[SaveMessage]) -> None:
        waiters = self.waiters
        for op in ops:
            mid = op.message.id
            for s in waiters.pop(mid, ()):
                s.send(F.persisted_frame(mid))

    def _given_up(self, ops: list[SaveMessage], reason: str) -> None:
        for op in ops:
            mid = op.message.id
            self.failed_ids[mid] = reason
            if len(self.failed_ids) > 10_000:
                self.failed_ids.popitem(last=False)
            for s in self.waiters.pop(mid, ()):
                s.send(F.persist_failed_frame(mid, reason))

    def _due(self, sends: list[tuple[str, bytes]]) -> None:
        """Retries the timer found due: send each to its recipient if connected."""
        conns = self.conns
        for cid, data in sends:
            s = conns.get(cid)
            if s is not None:
                s.send(data)
        self._flush_ops()
