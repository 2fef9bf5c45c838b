"""The broker's I/O shell: WebSocket sessions, fan-out, timers, HTTP endpoints, lifecycle.

Everything about *what* to deliver lives in :mod:`broker.delivery`; this
module only moves bytes. Frame handling is synchronous on the hot path: a
publish never awaits storage or another client's socket. Each connection owns
a bounded send queue drained by its own task, and a frame is written directly
when that queue is empty and the socket is not backed up (the common case),
as ``websockets.broadcast`` does, so fan-out costs no event-loop hop per
recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.speedups import apply_mask

from . import frames as F
from .auth import OPEN, AuthFileError, Rights, load_tokens, token_from
from .config import Config
from .delivery import DeliveryCore, IdConflict, RetryPolicy
from .logs import event
from .metrics import render as render_metrics
from .persist import SpillQueue
from .store import SaveMessage, Store, StoredMessage, StoreError
from .writer import PersistenceWriter

SESSION_REPLACED = 4000  # close code: a newer connection took over this client_id
SLOW_CONSUMER = 1013  # "try again later": the send queue overflowed

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_ADDRESS_IN_USE = 0, 1, 2, 3


class StartupError(Exception):
    """A clear, fatal start-up problem (bad auth file, store unavailable...)."""


def make_store(cfg: Config) -> Store:
    if cfg.store == "memory":
        from .store_memory import MemoryStore

        return MemoryStore()
    try:
        from .store_postgres import PostgresStore  # lazily: memory users need no driver
    except ImportError as exc:
        raise StartupError(f"--store postgres is unavailable: {exc}") from None
    return PostgresStore(cfg.dsn, timeout=cfg.db_timeout, pool_size=cfg.db_pool)


def text_header(size: int) -> bytes:
    """The header of an unmasked, uncompressed, final server text frame of ``size`` bytes (RFC 6455 5.2).

    Followed by the payload, it is byte for byte what ``Frame(TEXT, data).serialize(mask=False)``
    produces, without building a frame object per recipient; the payload buffer itself is shared.
    """
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


_background: set[asyncio.Task[None]] = set()  # keep fire-and-forget closes referenced


class FastConnection(ServerConnection):
    """A server connection that hands complete data frames to ``on_frame`` as they arrive.

    websockets parses each frame through generators into a ``Frame``, queues
    every message in an assembler and wakes the handler task for it: a task
    switch per frame, for every publish and every ack. Once the handler sets
    ``on_frame``, an unfragmented, masked text or binary frame (the only kind
    clients send in practice) is cut out of the TCP stream here and handled
    right in the read callback, if nothing is queued ahead of it, so order is
    kept. Every other frame (control frames, fragments, oversized or malformed
    ones, frames before the handler started) is fed, whole, to websockets'
    own parser, which therefore always sits at a frame boundary.
    """

    on_frame: Callable[[str | bytes], None] | None = None
    _pending: bytes | bytearray = b""  # the start of a frame not fully received yet
    _aligned = True  # False once websockets' parser may hold part of a frame: then it gets all bytes
    _request = b""  # bytes received during the handshake

    def data_received(self, data: bytes) -> None:
        proto = self.protocol
        if not self._aligned or proto.state is not State.OPEN or proto.extensions:
            if proto.state is State.CONNECTING and self._aligned:
                # A client may not send frames before the 101 response; if one did, its bytes
                # went to websockets with the request, so leave the whole stream to websockets.
                self._request += data
                head = self._request.find(b"\r\n\r\n")
                if head != -1 and head + 4 < len(self._request):
                    self._aligned = False
            super().data_received(data)
            return
        self._request = b""
        buf = self._pending + data if self._pending else data
        size, pos, max_size = len(buf), 0, proto.max_message_size
        if proto.max_fragment_size is not None:
            max_size = proto.max_fragment_size if max_size is None else min(max_size, proto.max_fragment_size)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if max_size is not None and length > max_size:
                # websockets fails it with 1009 at once, without buffering the payload.
                self._aligned = False
                self._pending = b""
                super().data_received(bytes(buf[pos:]))
                return
            if b1 & 0x80:
                head += 4
            end = head + length
            if end > size:
                break
            handler = self.on_frame
            if (
                (b0 == 0x81 or b0 == 0x82)  # FIN, no RSV bits, text or binary
                and b1 & 0x80  # masked, as client frames must be
                and handler is not None
                and proto.state is State.OPEN
                and not proto.expect_continuation_frame
                and not len(self.recv_messages.frames)
            ):
                payload = apply_mask(buf[head:end], buf[head - 4 : head])
                pos = end
                self._dispatch(handler, payload, b0 == 0x81)
            else:
                super().data_received(bytes(buf[pos:end]))  # one whole frame: the parser stays aligned
                pos = end
        self._pending = buf[pos:] if pos < size else b""

    def eof_received(self) -> bool | None:
        if self._pending and self._aligned:
            pending, self._pending = self._pending, b""
            super().data_received(bytes(pending))  # a frame cut short: websockets reports it
        return super().eof_received()

    def process_event(self, event: Any) -> None:
        handler = self.on_frame
        if (
            handler is None
            or type(event) is not Frame
            or not event.fin
            or (event.opcode is not Opcode.TEXT and event.opcode is not Opcode.BINARY)
            or len(self.recv_messages.frames)
        ):
            super().process_event(event)
            return
        self._dispatch(handler, event.data, event.opcode is Opcode.TEXT)

    def _dispatch(self, handler: Callable[[str | bytes], None], payload: bytes, text: bool) -> None:
        if text:
            try:
                data: str | bytes = payload.decode()
            except UnicodeDecodeError as exc:  # what recv() does with invalid UTF-8
                self.set_connection_exc(exc)
                self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                self.send_data()
                return
        else:
            data = bytes(payload)
        try:
            handler(data)
        except Exception:  # the handler catches its own errors; never break the read callback
            logging.getLogger("broker").exception("internal error handling a frame")


class Conn:
    """One WebSocket session: its identity, rights and bounded outgoing queue."""

    __slots__ = (
        "ws",
        "client_id",
        "rights",
        "queue",
        "limit",
        "wake",
        "sending",
        "closed",
        "sender",
        "on_overflow",
        "_write_limit",
        "_corked",
        "_loop",
    )

    def __init__(
        self,
        ws: ServerConnection,
        client_id: str,
        rights: Rights,
        limit: int,
        on_overflow: Callable[[Conn], None],
    ) -> None:
        self.ws = ws
        self.client_id = client_id
        self.rights = rights
        self.queue: deque[bytes] = deque()
        self.limit = limit
        self.wake = asyncio.Event()
        self.sending = False
        self.closed = False
        self.on_overflow = on_overflow
        self._write_limit = ws.transport.get_write_buffer_limits()[1]
        self._corked = False
        self._loop = asyncio.get_running_loop()
        self.sender = self._loop.create_task(self._drain())

    def send(self, data: bytes, bounded: bool = True) -> bool:
        """Hand one frame to this connection without awaiting; False if it could not take it.

        ``bounded=False`` skips the slow-consumer bound: a subscribe replay is
        queued whole (it is bounded by the client's outstanding deliveries).
        """
        if self.closed:
            return False
        ws = self.ws
        proto = ws.protocol
        if (
            not self.queue
            and not self.sending
            and proto.state is State.OPEN
            and ws.transport.get_write_buffer_size() <= self._write_limit
        ):
            try:
                if not proto.extensions and not proto.expect_continuation_frame:
                    writes = proto.writes  # what send_text would append, without a Frame per recipient
                    writes.append(text_header(len(data)))
                    writes.append(data)
                else:
                    proto.send_text(data)
            except Exception:  # a broken connection fails only itself
                self.fail(1011, "write failed")
                return False
            if not self._corked:  # one write (syscall) per connection per loop iteration
                self._corked = True
                self._loop.call_soon(self._uncork)
            return True
        if bounded and len(self.queue) >= self.limit:
            self.on_overflow(self)
            return False
        self.queue.append(data)
        self.wake.set()
        return True

    def _uncork(self) -> None:
        self._corked = False
        ws = self.ws
        try:
            chunks = ws.protocol.data_to_send()
            data = [c for c in chunks if c]
            if data:
                ws.transport.write(b"".join(data))
            if len(data) != len(chunks) and ws.transport.can_write_eof():  # websockets' half-close marker
                ws.transport.write_eof()
        except Exception:
            self.fail(1011, "write failed")

    async def _drain(self) -> None:
        queue, ws = self.queue, self.ws
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while queue:
                    data = queue.popleft()
                    self.sending = True
                    await ws.send(data, text=True)  # waits while the peer is slow: backpressure
                    self.sending = False
        except ConnectionClosed:
            pass
        finally:
            self.sending = False
            self.closed = True
            queue.clear()

    def fail(self, code: int, reason: str) -> None:
        """Close in the background; the handler's finally does the bookkeeping."""
        if self.closed:
            return
        self.closed = True
        self.queue.clear()
        task = asyncio.get_running_loop().create_task(self.ws.close(code, reason))
        _background.add(task)
        task.add_done_callback(_background.discard)

    def stop(self) -> None:
        self.closed = True
        self.queue.clear()
        self.sender.cancel()


class Broker:
    def __init__(
        self,
        cfg: Config,
        store: Store | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.tokens: dict[str, Rights] | None = load_tokens(cfg.auth) if cfg.auth else None
        self.store: Store = store if store is not None else make_store(cfg)
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
        self.conns: dict[str, Conn] = {}
        self.waiters: dict[str, list[Conn]] = {}  # message id -> publishers waiting for persisted
        self.failed_ids: OrderedDict[str, str] = OrderedDict()  # recently given-up ids -> reason
        self.counters: dict[str, int] = {
            "overloaded": 0,
            "slow_consumers": 0,
            "takeovers": 0,
            "connections": 0,
            "rejected_handshakes": 0,
        }
        self.errors: dict[str, int] = dict.fromkeys(F.ERROR_CODES, 0)
        self.flaws = cfg.flaws
        self.server: Server | None = None
        self.port: int | None = None
        self.stopping = False
        self.started_at = clock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._tasks: list[asyncio.Task[None]] = []
        self._store_first_pending = 0

    # --- lifecycle ----------------------------------------------------------------

    async def bind(self) -> None:
        """Bind the port without accepting yet, so a taken port fails before anything else starts."""
        cfg = self.cfg
        self.server = await serve(
            self._handler,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            compression="deflate" if cfg.compression else None,
            max_size=cfg.max_frame + 65536,  # a bit over: frames just above the limit get a too_large error
            ping_interval=cfg.ping_interval or None,
            ping_timeout=cfg.ping_interval or None,
            close_timeout=2.0,
            max_queue=self.cfg.max_queue,
            server_header=None,
            start_serving=False,
            create_connection=FastConnection,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def open_store(self) -> None:
        """Open the store and hydrate, retrying until ``startup_timeout``."""
        deadline = time.monotonic() + self.cfg.startup_timeout
        delay = 0.2
        while True:
            try:
                async with asyncio.timeout(self.cfg.db_timeout * 2 + 1):
                    await self.store.open()
                    snapshot = None
                    if self.store.durable and "no-hydrate" not in self.flaws:
                        snapshot = await self.store.load()
                break
            except (StoreError, TimeoutError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise StartupError(
                        f"cannot open the {self.cfg.store} store: {exc or type(exc).__name__}"
                    ) from None
                event("store_unavailable_retrying", logging.WARNING, error=str(exc) or type(exc).__name__)
                with contextlib.suppress(Exception):
                    await self.store.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        if snapshot is not None:
            self.core.hydrate(snapshot)
            event(
                "hydrated",
                subscriptions=len(snapshot.subscriptions),
                messages=len(self.core.messages),
                deliveries=self.core.stats.hydrated_deliveries,
                dead=self.core.stats.dead_loaded,
            )
            self._arm()
        elif "no-hydrate" in self.flaws:
            event("hydration_skipped", logging.WARNING, flaw="no-hydrate")

    async def start(self) -> None:
        assert self.server is not None
        self._tasks.append(asyncio.get_running_loop().create_task(self.writer.run()))
        await self.server.start_serving()

    async def shutdown(self) -> None:
        """Stop accepting, let persistence catch up, close clients with 1001, stop. Bounded."""
        self.stopping = True
        cfg = self.cfg
        end = time.monotonic() + cfg.shutdown_timeout
        assert self.server is not None
        self.server.server.close()  # stop accepting; existing sessions continue for now
        # Persist while publishers can still be told 'persisted'.
        first = 3.0 if self.writer.healthy else 1.0  # storage failing: do not spend the budget waiting for it
        await self.writer.flush(max(0.1, min(first, end - time.monotonic() - 3.0)))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, min(1.0, end - time.monotonic() - 3.0))):
                while any(c.queue for c in self.conns.values()):  # noqa: ASYNC110 - bounded, shutdown only
                    await asyncio.sleep(0.02)
        self.server.close()  # 1001 going away, then wait for the handlers
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, end - time.monotonic() - 1.0)):
                await self.server.wait_closed()
        flushed = await self.writer.flush(max(0.1, end - time.monotonic() - 0.5))
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(0.1, end - time.monotonic())):
                await self.store.close()
        event("stopped", unpersisted_ops=len(self.queue), flushed=flushed)

    # --- HTTP side of the handshake -------------------------------------------------

    def health(self) -> dict[str, Any]:
        reasons = []
        if self.writer.last_error is not None:
            reasons.append(f"storage: {self.writer.last_error}")
        if self.writer.breaker.state != "closed":
            reasons.append(f"storage circuit breaker {self.writer.breaker.state}")
        if self.queue.messages >= self.queue.max_messages:
            reasons.append("persistence queue full: publishes are refused with 'overloaded'")
        status = "stopping" if self.stopping else ("degraded" if reasons else "ok")
        return {
            "status": status,
            "reasons": reasons,
            "store": self.cfg.store,
            "durable": self.store.durable,
            "persist_backlog": len(self.queue),
            "clients": len(self.conns),
            "flaws": sorted(self.flaws),
            "uptime": round(self.clock() - self.started_at, 3),
        }

    def _http(self, status: int, body: str, content_type: str) -> Response:
        headers = Headers()
        headers["Content-Type"] = content_type
        headers["Content-Length"] = str(len(body.encode()))
        headers["Cache-Control"] = "no-store"
        return Response(status, HTTPStatus(status).phrase, headers, body.encode())

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/healthz":
            return self._http(200, json.dumps(self.health()) + "\n", "application/json")
        if url.path == "/metrics":
            return self._http(200, render_metrics(self), "text/plain; version=0.0.4; charset=utf-8")
        if url.path != "/":
            return self._reject(
                404, f"no such path {url.path!r}; WebSocket on '/', or GET /healthz, /metrics"
            )
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None  # websockets answers 426 Upgrade Required
        query = parse_qs(url.query)
        rights = OPEN
        if self.tokens is not None:
            token = token_from(query, request.headers.get("Authorization"))
            if token is None:
                return self._reject(401, "missing token: pass ?token= or 'Authorization: Bearer'")
            found = self.tokens.get(token)
            if found is None or found.expired(self.clock()):
                return self._reject(401, "unknown or expired token")
            rights = found
        ids = query.get("client_id")
        client_id = ids[0] if ids else None
        if client_id is not None and not F.valid_client_id(client_id):
            return self._reject(400, "client_id must be 1..128 chars of [A-Za-z0-9_.:-]")
        if rights.client_id is not None:
            if client_id is not None and client_id != rights.client_id:
                return self._reject(403, "this token is bound to another client_id")
            client_id = rights.client_id
        if client_id is None:
            client_id = "anon-" + self.core.new_id()[:16]
        ws.fastport = (client_id, rights)  # type: ignore[attr-defined]
        return None

    def _reject(self, status: int, text: str) -> Response:
        self.counters["rejected_handshakes"] += 1
        headers = Headers()
        headers["Content-Type"] = "text/plain; charset=utf-8"
        body = (text + "\n").encode()
        headers["Content-Length"] = str(len(body))
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="fastport"'
        return Response(status, HTTPStatus(status).phrase, headers, body)

    # --- sessions -------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        client_id, rights = ws.fastport  # type: ignore[attr-defined]
        conn = Conn(ws, client_id, rights, self.cfg.send_queue, self._overflow)
        old = self.conns.get(client_id)
        if old is not None:
            self.counters["takeovers"] += 1
            old.fail(SESSION_REPLACED, "replaced by a newer connection with the same client_id")
        self.conns[client_id] = conn
        self.counters["connections"] += 1
        self.core.connect(client_id)
        self._arm()
        event("connected", logging.DEBUG, client_id=client_id)
        flawed_publish = bool(self.flaws & {"store-first", "unguarded-fanout"})
        if not flawed_publish and isinstance(ws, FastConnection):
            ws.on_frame = lambda data: self._handle(conn, data)
        try:
            while True:
                try:
                    data = await ws.recv()
                except ConnectionClosed:
                    break
                if flawed_publish:
                    await self._handle_async(conn, data)
                else:
                    self._handle(conn, data)
        finally:
            if isinstance(ws, FastConnection):
                ws.on_frame = None
            conn.stop()
            if self.conns.get(client_id) is conn:
                del self.conns[client_id]
                self.core.disconnect(client_id)
            event("disconnected", logging.DEBUG, client_id=client_id, code=ws.close_code)

    def _overflow(self, conn: Conn) -> None:
        """Slow-consumer policy: close it; its deliveries stay outstanding and are retried later."""
        if not conn.closed:
            self.counters["slow_consumers"] += 1
            event("slow_consumer_closed", logging.WARNING, client_id=conn.client_id, queued=len(conn.queue))
            conn.fail(SLOW_CONSUMER, "slow consumer: send queue overflowed")

    def _error(self, conn: Conn, exc: F.FrameError) -> None:
        self.errors[exc.code] += 1
        conn.send(F.error_from(exc))
        if exc.code == F.TOO_LARGE:
            conn.fail(1009, "frame too large")

    def _handle(self, conn: Conn, data: str | bytes) -> None:
        frame: F.ClientFrame | None = None
        try:
            frame = F.parse(data, self.cfg.max_frame)
            if (
                conn.rights.expires_at is not None
                and not isinstance(frame, F.Ping)
                and conn.rights.expired(self.clock())
            ):
                raise F.FrameError(F.UNAUTHORIZED, "token expired; reconnect with a valid token", frame.ref)
            if type(frame) is F.Ack:
                if self.core.ack(conn.client_id, frame.id):
                    self._flush_ops()
            elif type(frame) is F.Publish:
                self._publish(conn, frame, len(data))
            elif type(frame) is F.Subscribe:
                self._subscribe(conn, frame)
            elif type(frame) is F.Unsubscribe:
                self.core.unsubscribe(conn.client_id, frame.topic)
                self._flush_ops()
                conn.send(F.unsubscribed_frame(frame.topic))
            else:
                conn.send(F.pong_frame(frame.ref))
        except F.FrameError as exc:
            self._error(conn, exc)
        except Exception:
            logging.getLogger("broker").exception("internal error handling a frame")
            ref = frame.ref if frame is not None else None
            self._error(conn, F.FrameError(F.INTERNAL, "internal error; see the broker log", ref))

    def _subscribe(self, conn: Conn, frame: F.Subscribe) -> None:
        if not conn.rights.may_subscribe(frame.topic):
            raise F.FrameError(F.FORBIDDEN, f"not allowed to subscribe to {frame.topic!r}", frame.ref)
        replay = self.core.subscribe(conn.client_id, frame.topic)
        self._flush_ops()
        conn.send(F.subscribed_frame(frame.topic))
        for data in replay:
            conn.send(data, bounded=False)
        self._arm()

    def _admit(self, conn: Conn, frame: F.Publish, size: int) -> None:
        if not conn.rights.may_publish(frame.topic):
            raise F.FrameError(F.FORBIDDEN, f"not allowed to publish to {frame.topic!r}", frame.ref)
        if self.stopping:
            raise F.FrameError(F.OVERLOADED, "broker is shutting down", frame.ref)
        if not self.queue.admits(size):
            self.counters["overloaded"] += 1
            raise F.FrameError(F.OVERLOADED, "persistence backlog is full; retry later", frame.ref)

    def _publish(self, conn: Conn, frame: F.Publish, size: int) -> None:
        self._admit(conn, frame, size)
        try:
            res = self.core.publish(conn.client_id, frame.topic, frame.id, frame.payload)
        except IdConflict as exc:
            raise F.FrameError(F.BAD_REQUEST, str(exc), frame.ref) from None
        if not res.duplicate:
            self.waiters[res.id] = [conn]
            conns = self.conns
            data = res.frame
            for cid in res.online or ():
                c = conns.get(cid)
                if c is not None:
                    c.send(data)  # type: ignore[arg-type]
            self._flush_ops(size)
            self._arm()
        conn.send(F.published_frame(res.id, frame.ref, res.recipients))
        if res.duplicate:
            self._tell_outcome(conn, res.id)

    def _tell_outcome(self, conn: Conn, mid: str) -> None:
        """A duplicate publish gets the original's persistence outcome too."""
        waiting = self.waiters.get(mid)
        if waiting is not None:
            waiting.append(conn)
        elif mid in self.failed_ids:
            conn.send(F.persist_failed_frame(mid, self.failed_ids[mid]))
        else:
            conn.send(F.persisted_frame(mid))

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
            for c in waiters.pop(mid, ()):
                c.send(F.persisted_frame(mid))

    def _given_up(self, ops: list[SaveMessage], reason: str) -> None:
        for op in ops:
            mid = op.message.id
            self.failed_ids[mid] = reason
            if len(self.failed_ids) > 10_000:
                self.failed_ids.popitem(last=False)
            for c in self.waiters.pop(mid, ()):
                c.send(F.persist_failed_frame(mid, reason))

    # --- retries ------------------------------------------------------------------

    def _arm(self) -> None:
        """Make sure the retry timer fires by the core's next deadline (10 ms granularity)."""
        deadline = self.core.next_deadline()
        if deadline is None or deadline >= self._timer_at - 0.01:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = deadline
        self._timer = loop.call_at(loop.time() + max(0.0, deadline - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        try:
            conns = self.conns
            for cid, data in self.core.tick():
                c = conns.get(cid)
                if c is not None:
                    c.send(data)
            self._flush_ops()
        except Exception:
            logging.getLogger("broker").exception("retry timer failed")
        finally:
            self._arm()

    # --- the original failures, on purpose ------------------------------------------

    async def _handle_async(self, conn: Conn, data: str | bytes) -> None:
        """Frame handling with the flawed publish paths; every other frame goes through ``_handle``."""
        try:
            frame = F.parse(data, self.cfg.max_frame)
        except F.FrameError:
            self._handle(conn, data)
            return
        if type(frame) is not F.Publish:
            self._handle(conn, data)
            return
        try:
            if conn.rights.expired(self.clock()):
                raise F.FrameError(F.UNAUTHORIZED, "token expired; reconnect with a valid token", frame.ref)
            if "store-first" in self.flaws:
                await self._publish_store_first(conn, frame, len(data))
            else:
                await self._publish_unguarded(conn, frame, len(data))
        except F.FrameError as exc:
            self._error(conn, exc)
        except Exception as exc:
            event(
                "publish_failed",
                logging.ERROR,
                error=f"{type(exc).__name__}: {exc}",
                flaws=sorted(self.flaws),
            )
            self._error(conn, F.FrameError(F.INTERNAL, f"publish failed: {type(exc).__name__}", frame.ref))

    async def _publish_store_first(self, conn: Conn, frame: F.Publish, size: int) -> None:
        """FMEA 1 as built: the message is written to storage before anyone gets it."""
        self._admit(conn, frame, size)
        mid = frame.id or self.core.new_id()
        seen = self.core.dedup.get(mid)
        if seen is None or seen[0] != frame.topic:
            subs = self.core.subscribers.get(frame.topic)
            op = SaveMessage(
                StoredMessage(mid, frame.topic, frame.payload, self.clock(), conn.client_id),
                tuple(subs) if subs else (),
            )
            await self.store.apply([op])  # the original `await cacheMessage()`: no fan-out until it returns
        self._publish(conn, F.Publish(frame.topic, frame.payload, mid, frame.ref), size)

    async def _publish_unguarded(self, conn: Conn, frame: F.Publish, size: int) -> None:
        """FMEA 2 as built: awaited sends in a loop; the first exception ends the fan-out."""
        self._admit(conn, frame, size)
        try:
            res = self.core.publish(conn.client_id, frame.topic, frame.id, frame.payload)
        except IdConflict as exc:
            raise F.FrameError(F.BAD_REQUEST, str(exc), frame.ref) from None
        self._flush_ops(size)
        self._arm()
        if not res.duplicate:
            self.waiters[res.id] = [conn]
            for cid in res.online or ():
                c = self.conns.get(cid)
                if c is not None:
                    await c.ws.send(res.frame, text=True)  # type: ignore[arg-type]
        conn.send(F.published_frame(res.id, frame.ref, res.recipients))
        if res.duplicate:
            self._tell_outcome(conn, res.id)


# --- process entry ----------------------------------------------------------------------


def _listening_line(broker: Broker) -> str:
    return json.dumps(
        {"event": "listening", "host": broker.cfg.host, "port": broker.port, "pid": os.getpid()}
    )


async def run(cfg: Config) -> int:
    try:
        broker = Broker(cfg)
    except (AuthFileError, StartupError) as exc:
        print(f"fastport broker: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE if isinstance(exc, AuthFileError) else EXIT_FAILURE
    try:
        await broker.bind()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"fastport broker: cannot listen on {cfg.host}:{cfg.port}: address already in use "
                f"(port {cfg.port})",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_ADDRESS_IN_USE
        print(
            f"fastport broker: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILURE
    assert broker.server is not None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await broker.open_store()
        except StartupError as exc:
            print(f"fastport broker: {exc}", file=sys.stderr, flush=True)
            broker.server.close()
            await broker.server.wait_closed()
            return EXIT_FAILURE
        if stop.is_set():
            broker.server.close()
            await broker.server.wait_closed()
            return EXIT_OK
        await broker.start()
        print(_listening_line(broker), flush=True)
        event(
            "listening",
            host=cfg.host,
            port=broker.port,
            store=cfg.store,
            flaws=sorted(cfg.flaws),
            auth="file" if cfg.auth else "open",
            loop="uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio",
        )
        await stop.wait()
        event("stopping", reason="signal")
        await broker.shutdown()
        return EXIT_OK
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
