"""The I/O shell: WebSocket sessions, fan-out, retry timers, ``/healthz`` and ``/metrics``, shutdown.

Shape: ``websockets``' asyncio server with its defaults (permessage-deflate on, 1 MiB
``max_size``, so an oversized frame gets the library's own 1009 close). Every
connection owns a queue and a pump task; fan-out and retries only append to queues,
so a stuck socket stalls its own pump and nothing else. Retries are one
``call_later`` handle per outstanding delivery, armed while its recipient is
connected and cancelled when it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
import weakref
from collections import Counter
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.foreign import wire
from tests.foreign.access import OPEN, Access, Grant
from tests.foreign.ledger import Delivery, IdInUse, Ledger, Receipt
from tests.foreign.mutants import Bugs
from tests.foreign.outbox import Ack, Attempt, Dead, Outbox, Save, Sub, Unsub
from tests.foreign.settings import Settings
from tests.foreign.stores import Store

log = logging.getLogger("foreign")
HIGH_WATER = 1 << 20  # drain-stall mutant: backlog after which fan-out waits for a laggard
UNTOLD_CAP = 10_000


class SessionGone(Exception):
    """The connection is closed or closing (or was just closed as a slow consumer)."""


class Session:
    def __init__(self, ws: ServerConnection, client_id: str, grant: Grant, s: Settings) -> None:
        self.ws, self.client_id, self.grant = ws, client_id, grant
        self.limit, self.limit_bytes = s.send_queue, s.send_queue_bytes
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.bytes = 0
        self.gone = False
        self.pump = asyncio.create_task(self._pump())

    def push(self, frame: str, *, force: bool = False) -> None:
        """Queue one frame for this connection; *force* skips the slow-consumer bound (replies, replays)."""
        if self.gone:
            raise SessionGone(self.client_id)
        if not force and (self.queue.qsize() >= self.limit or self.bytes + len(frame) > self.limit_bytes):
            self.kick(1013, "slow consumer")
            raise SessionGone(f"{self.client_id}: slow consumer")
        self.bytes += len(frame)
        self.queue.put_nowait(frame)

    async def _pump(self) -> None:
        try:
            while True:
                frame = await self.queue.get()
                try:
                    await self.ws.send(frame)
                finally:
                    self.bytes -= len(frame)
                    self.queue.task_done()
        except ConnectionClosed:
            pass
        finally:
            self.gone = True
            while not self.queue.empty():  # nobody may wait forever on drained()
                self.bytes -= len(self.queue.get_nowait())
                self.queue.task_done()

    def kick(self, code: int, reason: str) -> None:
        if not self.gone:
            self.gone = True
            asyncio.get_running_loop().create_task(self.ws.close(code, reason))

    async def drained(self) -> None:
        await self.queue.join()


def _response(status: int, body: str, content_type: str) -> Response:
    data = body.encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return Response(status, HTTPStatus(status).phrase, headers, data)


class Broker:
    def __init__(self, settings: Settings, store: Store, bugs: Bugs, access: Access | None = None) -> None:
        self.s, self.store, self.bugs = settings, store, bugs
        self.access = access or Access()
        self.ledger = Ledger(settings.dedup_window, backlog_cap=1000 if bugs.on("backlog-cap") else None)
        self.outbox = Outbox(store, settings, bugs, self._tell)
        self.sessions: dict[str, Session] = {}
        self.grants: weakref.WeakKeyDictionary[ServerConnection, Grant] = weakref.WeakKeyDictionary()
        self.untold: dict[str, list[Receipt]] = {}
        self.counts: Counter[str] = Counter()
        self.stopping = False
        self.started = time.time()
        self._tasks: list[asyncio.Task[Any]] = []

    # --- life cycle ------------------------------------------------------------------------------

    async def hydrate(self) -> None:
        snap = await self.store.load()
        restored = self.ledger.restore(snap.subscriptions, snap.rows, time.time())
        if self.bugs.on("reencode-on-load"):
            for d in restored:
                d.message.body = wire.encode(d.message.body)
        self.ledger.dead_lettered = snap.dead
        log.info("hydrated %d subscriptions, %d deliveries", len(snap.subscriptions), len(restored))

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self.outbox.run()))
        self._tasks.append(asyncio.create_task(self._sweep()))

    async def shutdown(self, server: Server) -> None:
        """SIGTERM: stop accepting, let publishers hear their outcomes, close everyone 1001, flush."""
        self.stopping = True
        server.close(close_connections=False)
        await self.outbox.flush(1.0 if self.outbox.failing else 2.5)
        sessions = list(self.sessions.values())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.gather(*(s.drained() for s in sessions))
        closing = [asyncio.create_task(s.ws.close(1001, "broker shutting down")) for s in sessions]
        if closing:
            await asyncio.wait(closing, timeout=2.0)
        for s in sessions:
            s.ws.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await server.wait_closed()
        await self.outbox.flush(1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()
        log.info("stopped, %d ops unwritten", len(self.outbox.ops))

    async def _sweep(self) -> None:
        """TTL: dead-letter what is too old, whether its recipient is online or not."""
        while True:
            await asyncio.sleep(1.0)
            for d in self.ledger.expired(time.time(), self.s.ttl):
                self._bury(d, "ttl")

    # --- HTTP side of the port ---------------------------------------------------------------------

    def http(self, conn: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            return _response(200, json.dumps(self.health()), "application/json")
        if path == "/metrics":
            return _response(200, self.metrics(), "text/plain; version=0.0.4")
        if path != "/":
            return _response(404, "not found\n", "text/plain")
        params = parse_qs(query)
        client_id = params.get("client_id", [None])[0]
        if client_id is not None and not wire.CLIENT_ID.fullmatch(client_id):
            return _response(400, "client_id must be 1..128 chars of [A-Za-z0-9_.:-]\n", "text/plain")
        token = params.get("token", [None])[0]
        bearer = request.headers.get("Authorization", "")
        if token is None and bearer.startswith("Bearer "):
            token = bearer[7:]
        status, grant = self.access.admit(token, client_id)
        if status != 200:
            return _response(status, HTTPStatus(status).phrase + "\n", "text/plain")
        self.grants[conn] = grant
        return None

    def health(self) -> dict[str, Any]:
        reasons = []
        if self.outbox.failing:
            reasons.append(f"storage failing: {self.outbox.failing}")
        if self.outbox.full():
            reasons.append("persistence queue full")
        status = "stopping" if self.stopping else ("degraded" if reasons else "ok")
        return {
            "status": status,
            "reasons": reasons,
            "store": self.store.name,
            "unpersisted": self.outbox.unsaved,
            "clients": len(self.sessions),
            "mutant": self.bugs.name,
            "uptime": round(time.time() - self.started, 3),
        }

    def metrics(self) -> str:
        values = {
            **{f"{k}_total": v for k, v in sorted(self.counts.items())},
            **{f"persist_{k}_total": v for k, v in self.outbox.counts.items()},
            "dead_lettered_total": self.ledger.dead_lettered,
            "evicted_total": self.ledger.evicted,
            "unpersisted_messages": self.outbox.unsaved,
            "outstanding_deliveries": sum(len(q) for q in self.ledger.pending.values()),
            "clients": len(self.sessions),
        }
        return "".join(f"foreign_{k.replace(':', '_')} {v}\n" for k, v in values.items())

    # --- connections -------------------------------------------------------------------------------

    async def serve(self, ws: ServerConnection) -> None:
        grant = self.grants.pop(ws, OPEN)
        client_id = parse_qs(ws.request.path.partition("?")[2]).get("client_id", [None])[0]
        client_id = client_id or grant.client_id or "~" + uuid.uuid4().hex  # '~': never a real id
        session = Session(ws, client_id, grant, self.s)
        old = self.sessions.get(client_id)
        if old is not None:
            old.kick(4001, "replaced by a newer connection")
            self._pause(client_id)
        self.sessions[client_id] = session
        self.counts["connections"] += 1
        self._resume(client_id)
        for receipt in self.untold.pop(client_id, []):
            if not receipt.told:
                self._tell(receipt)
        try:
            async for raw in ws:
                await self._on_frame(session, raw)
        except ConnectionClosed:
            pass
        finally:
            session.gone = True
            if self.sessions.get(client_id) is session:
                del self.sessions[client_id]
                self._pause(client_id)
            session.pump.cancel()

    def _answer(self, session: Session, frame: str) -> None:
        with contextlib.suppress(SessionGone):
            session.push(frame, force=True)

    async def _on_frame(self, session: Session, raw: str | bytes) -> None:
        trusting = self.bugs.on("non-object-crash")
        try:
            frame = wire.parse(raw, trusting=trusting)
            topic = frame.topic
            if (
                topic is not None
                and frame.kind != "unsubscribe"
                and not session.grant.allows(frame.kind, topic)
            ):
                raise wire.Refused("forbidden", f"not allowed to {frame.kind} on {topic!r}", frame.ref)
            await self._dispatch(session, frame)
        except wire.Refused as r:
            self.counts[f"error:{r.code}"] += 1
            self._answer(session, wire.error(r.code, r.message, r.ref))
        except SessionGone:
            pass
        except Exception:
            if trusting:
                raise
            log.exception("frame from %s failed", session.client_id)
            self.counts["error:internal"] += 1
            self._answer(session, wire.error("internal", "internal error"))

    async def _dispatch(self, session: Session, f: wire.Frame) -> None:
        cid = session.client_id
        ref = f.ref if f.has_ref else None
        if f.kind == "ping":
            self._answer(session, wire.reply("pong", ref=ref))
        elif f.kind == "ack":
            d = self.ledger.ack(cid, f.id or "")
            if d is not None:
                self._cancel(d)
                self.counts["acked"] += 1
                self.outbox.put(Ack(d.message.id, cid))
        elif f.kind == "subscribe":
            topic = f.topic or ""
            if self.ledger.subscribe(cid, topic):
                self.outbox.put(Sub(cid, topic))
            self._answer(session, wire.reply("subscribed", topic=topic))
            if not self.bugs.on("no-replay"):
                for d in self.ledger.outstanding(cid, topic):
                    self._cancel(d)
                    self._send(d, force=True)
        elif f.kind == "unsubscribe":
            topic = f.topic or ""
            for d in self.ledger.unsubscribe(cid, topic):
                self._cancel(d)
            self.outbox.put(Unsub(cid, topic))
            self._answer(session, wire.reply("unsubscribed", topic=topic))
        else:
            await self._publish(session, f, ref)

    # --- publishing and delivery ---------------------------------------------------------------

    async def _publish(self, session: Session, f: wire.Frame, ref: Any) -> None:
        topic, body = f.topic or "", f.body or "null"
        msg_id = f.id or uuid.uuid4().hex
        try:
            dup = self.ledger.duplicate_of(topic, msg_id)
        except IdInUse as exc:
            raise wire.Refused("bad_request", str(exc), f.ref) from None
        if dup is not None:
            self.counts["duplicates"] += 1
            self._answer(session, wire.reply("published", id=msg_id, ref=ref, recipients=dup.recipients))
            if dup.outcome is not None and not dup.told:
                self._tell(dup)
            return
        if self.outbox.full():
            self.counts["overloaded"] += 1
            raise wire.Refused("overloaded", "too many messages wait for storage; retry later", f.ref)
        msg, deliveries, evicted = self.ledger.publish(msg_id, topic, body, session.client_id, time.time())
        self.counts["published"] += 1
        for d in evicted:
            self._cancel(d)
            self.outbox.put(Ack(d.message.id, d.client_id))
        save = Save(msg, tuple(d.client_id for d in deliveries))
        if not self.bugs.on("store-first") or not await self.outbox.write_now(save):
            self.outbox.put(save)
        await self._fan_out(deliveries)
        self._answer(session, wire.reply("published", id=msg_id, ref=ref, recipients=len(deliveries)))

    async def _fan_out(self, deliveries: list[Delivery]) -> None:
        if self.bugs.on("serial-fanout"):
            for d in deliveries:
                s = self.sessions.get(d.client_id)
                if s is not None:
                    d.attempts = 1
                    self._arm(d, self._backoff(1))
                    m = d.message
                    with contextlib.suppress(ConnectionClosed):
                        await s.ws.send(wire.message(m.topic, m.id, m.body, 1, m.published_at))
            return
        if self.bugs.on("fanout-abort"):
            try:
                for d in deliveries:
                    self._send(d)
            except SessionGone as exc:
                log.info("fan-out stopped: %s", exc)
            return
        for d in deliveries:
            s = self.sessions.get(d.client_id)
            if self.bugs.on("drain-stall") and s is not None and s.bytes > HIGH_WATER:
                await s.drained()  # let a laggard catch up before piling on more
            with contextlib.suppress(SessionGone):  # its delivery stays outstanding, resumed on reconnect
                self._send(d)

    def _send(self, d: Delivery, *, force: bool = False) -> None:
        """One attempt of *d* on its recipient's session, then its next retry armed; raises SessionGone."""
        d.timer = None
        session = self.sessions.get(d.client_id)
        if session is None:
            return  # offline: resumed when it connects
        if d.attempts >= self.s.max_attempts:
            self._bury(d, "max attempts")
            return
        m = d.message
        session.push(wire.message(m.topic, m.id, m.body, d.attempts + 1, m.published_at), force=force)
        d.attempts += 1
        self.counts["delivered"] += 1
        if d.attempts > 1:
            self.counts["retried"] += 1
            self.outbox.put(Attempt(m.id, d.client_id, d.attempts))
        if self.bugs.on("sent-means-done"):
            self.ledger.ack(d.client_id, m.id)  # the socket took it: delivered
            return
        self._arm(d, self._backoff(d.attempts))

    def _backoff(self, attempts: int) -> float:
        top = min(self.s.retry_cap, self.s.retry_first * 2 ** min(attempts - 1, 30))
        return random.uniform(top / 2, top)

    def _arm(self, d: Delivery, delay: float) -> None:
        self._cancel(d)
        d.timer = self.loop.call_later(delay, self._retry, d)

    def _cancel(self, d: Delivery) -> None:
        if d.timer is not None:
            d.timer.cancel()
            d.timer = None

    def _retry(self, d: Delivery) -> None:
        d.timer = None
        if self.ledger.pending.get(d.client_id, {}).get(d.message.id) is d:
            with contextlib.suppress(SessionGone):
                self._send(d)

    def _resume(self, client_id: str) -> None:
        """A recipient connected: its outstanding deliveries resume (never-sent ones almost at once)."""
        for d in self.ledger.outstanding(client_id):
            if d.timer is None:
                self._arm(d, min(0.5, self.s.retry_first) if d.attempts == 0 else self._backoff(d.attempts))

    def _pause(self, client_id: str) -> None:
        for d in self.ledger.outstanding(client_id):
            self._cancel(d)

    def _bury(self, d: Delivery, why: str) -> None:
        self._cancel(d)
        self.ledger.dead_letter(d)
        self.outbox.put(Dead(d.message.id, d.client_id))
        log.warning("dead-lettered %s -> %s (%s, %d attempts)", d.message.id, d.client_id, why, d.attempts)

    def _tell(self, receipt: Receipt) -> None:
        """The publisher hears the outcome once; if it is offline, when it next connects."""
        fields: dict[str, Any] = {"id": receipt.id}
        if receipt.outcome == "persist_failed":
            fields["reason"] = receipt.reason
        session = self.sessions.get(receipt.publisher or "")
        if session is not None:
            with contextlib.suppress(SessionGone):
                session.push(wire.reply(receipt.outcome or "persisted", **fields), force=True)
                receipt.told = True
        if not receipt.told and receipt.publisher and not receipt.publisher.startswith("~"):
            waiting = self.untold.setdefault(receipt.publisher, [])
            if len(waiting) < UNTOLD_CAP:
                waiting.append(receipt)
