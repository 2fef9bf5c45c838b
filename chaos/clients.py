"""Workload clients that speak PROTOCOL.md and record everything they observe into the history.

They behave like careful real clients (a fixed client_id, reconnect with bounded
exponential backoff, resubscribe after every reconnect, idempotent publish ids)
so that what they record is what a production client would have seen. Each
client is one history *process* named by its client_id; the event vocabulary is
in docs/checkers.md.

Scenarios never sleep to synchronise: :func:`wait_for` re-evaluates a condition
after every event appended to the history and raises :class:`HangError` (with
what is still missing) only when nothing happens for the whole timeout.

Payloads are recorded as a digest and a length (:mod:`chaos.checkers.digest`),
not whole: integrity is still checked, and a history of large messages stays small.

Two mechanisms the subscriber faults need live here because they need the
client's socket: :meth:`Subscriber.abort` cuts the TCP connection
(``transport.abort()``, no close frame) and :meth:`Subscriber.pause_reading`
makes the subscriber a slow consumer (it stops reading, so the broker's sends
back up). They record nothing themselves: the faults of
:mod:`chaos.faults.subscriber` record their windows, as every fault does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import socket
import sys
import termios
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from chaos.checkers import digest
from chaos.checkers.digest import payload_checksum
from chaos.history import History

log = logging.getLogger(__name__)

AckMode = Literal["always", "late", "never"]
ACK_MODES = ("always", "late", "never")


class HangError(TimeoutError):
    """Nothing satisfied a wait before its timeout; the message says what was still missing."""


class ClientClosed(RuntimeError):
    """The client was closed (or gave up reconnecting) while an operation waited on it."""


async def wait_for(
    history: History,
    until: Callable[[], bool],
    *,
    timeout: float = 10.0,
    what: str = "a condition",
    describe: Callable[[], str] | None = None,
) -> None:
    """Return as soon as ``until()`` is true, re-checked after every appended event.

    ``until`` runs on the event loop thread, so it may read client state freely;
    it must be cheap. On timeout raises :class:`HangError` with ``describe()``.
    """
    if until():
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    scheduled = False

    def check() -> None:
        nonlocal scheduled
        scheduled = False
        if done.done():
            return
        try:
            if until():
                done.set_result(None)
        except Exception as exc:  # a broken condition fails the wait now instead of hanging it
            done.set_exception(exc)

    loop_thread = threading.get_ident()

    def on_event(_ev: object) -> None:
        nonlocal scheduled
        if not scheduled and not done.done():
            scheduled = True
            if threading.get_ident() == loop_thread:
                loop.call_soon(check)  # the common case: no self-pipe write per event
                return
            with contextlib.suppress(RuntimeError):  # loop closed: the waiter is gone anyway
                loop.call_soon_threadsafe(check)

    remove = history.add_listener(on_event)
    try:
        check()
        async with asyncio.timeout(timeout):
            await done
    except TimeoutError:
        detail = f": {describe()}" if describe is not None else ""
        raise HangError(f"timed out after {timeout}s waiting for {what}{detail}") from None
    finally:
        remove()


def client_url(url: str, client_id: str, token: str | None = None) -> str:
    """*url* with ``client_id`` (and ``token``) in the query, keeping any query it already has."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"broker url must start with ws:// or wss://, got {url!r}")
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("client_id", "token")]
    query.append(("client_id", client_id))
    if token is not None:
        query.append(("token", token))
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), ""))


def _short(items: Iterable[str], limit: int = 10) -> str:
    items = sorted(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


class _Client:
    """Connection loop shared by both clients: connect, read frames, reconnect with backoff."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        history: History,
        token: str | None = None,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.05, 1.0),
        open_timeout: float = 10.0,
        rcvbuf: int | None = None,
    ) -> None:
        """*rcvbuf*: a small socket receive buffer (SO_RCVBUF, bytes), so that a reader that stops
        reading backs the broker up after little data (the ``subscriber-slow`` fault)."""
        if not client_id:
            raise ValueError("client_id must be a non-empty string")
        if backoff[0] <= 0 or backoff[1] < backoff[0]:
            raise ValueError(f"backoff must be (initial > 0, cap >= initial), got {backoff}")
        self.url = client_url(url, client_id, token)
        self.client_id = client_id
        self.history = history
        self.reconnect = reconnect
        self.backoff = backoff
        self.open_timeout = open_timeout
        if rcvbuf is not None and rcvbuf < 1024:
            raise ValueError(f"rcvbuf must be at least 1024 bytes, got {rcvbuf!r}")
        self.rcvbuf = rcvbuf
        self.ws: ClientConnection | None = None
        self.connections = 0  # successful connects so far
        self.wire_bytes = 0  # bytes received off the socket, over all connections
        self.last_error: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._readable = asyncio.Event()
        self._readable.set()
        self._cause: str | None = None  # why we are about to lose the connection (abort, close)
        self._given_up: str | None = None

    async def _socket(self) -> socket.socket:
        """A connected TCP socket with the small receive buffer asked for (set before connecting)."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(self.rcvbuf or 0))
            sock.setblocking(False)
            async with asyncio.timeout(self.open_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _count_wire_bytes(self, ws: ClientConnection) -> None:
        """Count the bytes this connection receives off the socket (compressed or not, as sent)."""
        inner = ws.data_received

        def data_received(data: bytes) -> None:
            self.wire_bytes += len(data)
            inner(data)

        ws.data_received = data_received  # type: ignore[method-assign]  # asyncio calls it on the instance

    def socket_backlog(self) -> int | None:
        """Bytes waiting in this connection's kernel receive queue (FIONREAD), or None."""
        ws = self.ws
        sock = None if ws is None else ws.transport.get_extra_info("socket")
        if sock is None:
            return None
        try:
            buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return None
        return int.from_bytes(buf, sys.byteorder, signed=True)

    def record(
        self, type_: str, f: str, topic: str | None = None, id: str | None = None, value: Any = None
    ) -> None:
        self.history.append(self.client_id, type_, f, topic, id, value)

    @property
    def connected(self) -> bool:
        return self.ws is not None

    async def start(self, timeout: float = 10.0) -> None:
        """Start the connection loop and wait until connected (and, for subscribers, subscribed)."""
        if self._task is not None:
            raise RuntimeError(f"client {self.client_id} already started")
        self._task = asyncio.create_task(self._run(), name=f"client-{self.client_id}")
        await self.wait_connected(timeout)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self._wait(
            lambda: self.connected,
            timeout=timeout,
            what=f"{self.client_id} to connect to {self.url}",
            describe=lambda: f"last error {self.last_error}",
        )

    async def _wait(
        self,
        until: Callable[[], bool],
        *,
        timeout: float,
        what: str,
        describe: Callable[[], str] | None = None,
    ) -> None:
        """:func:`wait_for`, but fail fast with :class:`ClientClosed` when this client stops for good."""
        stopped = lambda: self._given_up is not None or self._closing.is_set()  # noqa: E731
        await wait_for(
            self.history, lambda: until() or stopped(), timeout=timeout, what=what, describe=describe
        )
        if not until():
            raise ClientClosed(f"{self.client_id}: {self._given_up or 'closed'} while waiting for {what}")

    async def close(self) -> None:
        """Clean close (close frame), no reconnect; idempotent, also after a failure."""
        self._closing.set()
        await self._before_close()
        ws = self.ws
        if ws is not None:
            self._cause = "close"
            with contextlib.suppress(Exception):
                await ws.close()
        task, self._task = self._task, None
        if task is not None:
            if ws is None:  # connecting or backing off: nothing to close cleanly
                task.cancel()
            try:
                await asyncio.wait_for(task, timeout=10.0)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._after_close()

    async def _before_close(self) -> None:
        pass

    async def _after_close(self) -> None:
        pass

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, frame: dict[str, Any]) -> bool:
        """Send one frame on the current connection; False when there is none or it just broke."""
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            return False
        return True

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception as exc:  # a bug or a broker we cannot talk to: say so, never hang the waiters
            self._given_up = f"client crashed: {type(exc).__name__}: {exc}"
            self.record("info", "error", value={"code": "client:crashed", "message": self._given_up})
            log.exception("client %s crashed", self.client_id)

    async def _loop(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            await self._before_connect()
            attempt += 1
            self.record("invoke", "connect", value={"attempt": attempt})
            try:
                sock = await self._socket() if self.rcvbuf else None
                ws = await connect(
                    self.url, sock=sock, open_timeout=self.open_timeout, max_size=None, close_timeout=2.0
                )
            except InvalidURI as exc:
                self._given_up = f"bad url: {exc}"
                self.record(
                    "fail", "connect", value={"attempt": attempt, "error": "InvalidURI", "reason": str(exc)}
                )
                return
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed, EOFError) as exc:
                self.last_error = {"error": type(exc).__name__, "reason": str(exc)}
                self.record("fail", "connect", value={"attempt": attempt, **self.last_error})
                if not self.reconnect:
                    self._given_up = f"cannot connect: {exc}"
                    return
                delay = min(self.backoff[1], self.backoff[0] * 2 ** min(attempt - 1, 30))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):  # backoff, cut short by close()
                        await self._closing.wait()
                continue
            attempt = 0
            self.connections += 1
            self._cause = None
            self._count_wire_bytes(ws)
            self.ws = ws
            self.record("ok", "connect", value={"connection": self.connections})
            try:
                await self._on_connected()
                await self._read(ws)
            except ConnectionClosed:
                pass
            finally:
                self.ws = None
                rcvd = ws.protocol.close_rcvd
                self.record(
                    "info",
                    "disconnect",
                    value={
                        "cause": self._cause
                        or ("closed-by-broker" if rcvd is not None else "connection-lost"),
                        "code": rcvd.code if rcvd is not None else None,
                        "reason": rcvd.reason if rcvd is not None else None,
                    },
                )
                await self._on_disconnected()
            if not self.reconnect:
                self._given_up = "connection lost and reconnect is off"
                return

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            if not self._readable.is_set():  # slow consumer: wait to be resumed, but notice a lost connection
                resumed = asyncio.ensure_future(self._readable.wait())
                closed = asyncio.ensure_future(ws.wait_closed())
                try:
                    await asyncio.wait({resumed, closed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    resumed.cancel()
                    closed.cancel()
            raw = await ws.recv()
            try:
                frame = json.loads(raw)
                if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                    raise ValueError("not an object with a string 'type'")
            except ValueError as exc:
                self.record(
                    "info",
                    "error",
                    value={"code": "client:bad-frame", "message": str(exc), "raw": str(raw)[:200]},
                )
                continue
            await self._on_frame(frame)

    async def _on_connected(self) -> None:
        pass

    async def _on_disconnected(self) -> None:
        pass

    async def _before_connect(self) -> None:
        pass

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "error":
            self.last_error = frame
            self.record("info", "error", value={k: frame.get(k) for k in ("code", "message", "ref")})
        elif frame["type"] != "pong":
            self.record("info", "unexpected", value={"frame": frame})


class Subscriber(_Client):
    """Subscribes to *topics*, records every delivery, acks by policy, resubscribes after reconnects.

    ``ack``: ``"always"`` acks each delivery at once, ``"late"`` after ``ack_delay``
    seconds, ``"never"`` not at all (call :meth:`ack` yourself).
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        topics: Iterable[str] = (),
        *,
        history: History,
        ack: AckMode = "always",
        ack_delay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if ack not in ACK_MODES:
            raise ValueError(f"ack must be one of {ACK_MODES}, got {ack!r}")
        if not math.isfinite(ack_delay) or ack_delay < 0:
            raise ValueError(f"ack_delay must be a finite number >= 0, got {ack_delay!r}")
        super().__init__(url, client_id, history=history, **kwargs)
        self.topics: list[str] = list(dict.fromkeys(topics))
        self.ack_mode = ack
        self.ack_delay = ack_delay
        self.received: dict[str, int] = {}  # message id -> deliveries seen
        self.unacked: dict[str, str] = {}  # message id -> topic, delivered but not acked yet
        self.subscribed: set[str] = set()  # topics confirmed on the current connection
        self._late: dict[str, asyncio.TimerHandle] = {}  # pending "late" acks by message id
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._paused = False
        self._unsubscribed: dict[str, int] = {}  # topic -> `unsubscribed` answers seen
        self._awaited: list[set[str]] = []  # id sets that wait_received calls still miss

    async def start(self, timeout: float = 10.0) -> None:
        await super().start(timeout)
        await self.wait_subscribed(self.topics, timeout)

    async def wait_resubscribed(self, after: int, timeout: float = 30.0) -> None:
        """Until a connection newer than the *after*-th is up and subscribed to every topic again."""
        want = set(self.topics)
        await self._wait(
            lambda: self.connections > after and want <= self.subscribed,
            timeout=timeout,
            what=f"{self.client_id} to reconnect and resubscribe",
            describe=lambda: f"connections {self.connections}, last error {self.last_error}",
        )

    async def wait_subscribed(self, topics: Collection[str], timeout: float = 10.0) -> None:
        want = set(topics)
        await self._wait(
            lambda: want <= self.subscribed,
            timeout=timeout,
            what=f"{self.client_id} to be subscribed to {sorted(want)}",
            describe=lambda: f"missing {_short(want - self.subscribed)}; last error {self.last_error}",
        )

    async def subscribe(self, topic: str, timeout: float = 10.0) -> None:
        if topic not in self.topics:
            self.topics.append(topic)
        self.subscribed.discard(topic)
        if self.connected:
            await self._send_subscribe(topic)
        await self.wait_subscribed([topic], timeout)

    async def unsubscribe(self, topic: str, timeout: float = 10.0) -> None:
        if topic in self.topics:
            self.topics.remove(topic)
        before = self._unsubscribed.get(topic, 0)
        self.record("invoke", "unsubscribe", topic)
        if not await self.send({"type": "unsubscribe", "topic": topic}):
            raise ClientClosed(f"{self.client_id}: not connected, cannot unsubscribe from {topic!r}")
        await self._wait(
            lambda: self._unsubscribed.get(topic, 0) > before,
            timeout=timeout,
            what=f"{self.client_id} to be unsubscribed from {topic!r}",
            describe=lambda: f"last error {self.last_error}",
        )

    async def _send_subscribe(self, topic: str) -> None:
        self.record("invoke", "subscribe", topic)
        await self.send({"type": "subscribe", "topic": topic})

    async def _on_connected(self) -> None:
        self.subscribed.clear()
        for topic in list(self.topics):
            await self._send_subscribe(topic)

    async def _on_disconnected(self) -> None:
        self.subscribed.clear()

    async def _before_connect(self) -> None:
        # A reader stalled on purpose comes back when it reads again, not while it is stalled
        # (a broker that closed it for being slow must not get it back at once, replays and all).
        closing = asyncio.ensure_future(self._closing.wait())
        resumed = asyncio.ensure_future(self._readable.wait())
        try:
            await asyncio.wait({closing, resumed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            resumed.cancel()

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "message":
            msg_id, topic = frame.get("id"), frame.get("topic")
            if not isinstance(msg_id, str):
                self.record("info", "error", topic, value={"code": "client:bad-message", "frame": frame})
                return
            self.received[msg_id] = self.received.get(msg_id, 0) + 1
            for waiting in self._awaited:
                waiting.discard(msg_id)
            self.unacked[msg_id] = topic
            self.record(
                "ok",
                "deliver",
                topic,
                msg_id,
                {
                    **digest.record(frame.get("payload")),
                    "attempt": frame.get("attempt"),
                    "published_at": frame.get("published_at"),
                },
            )
            if self.ack_mode == "always":
                await self.ack(msg_id)
            elif self.ack_mode == "late":
                loop = asyncio.get_running_loop()
                if (old := self._late.pop(msg_id, None)) is not None:
                    old.cancel()  # a redelivery restarts the delay
                self._late[msg_id] = loop.call_later(self.ack_delay, self._late_ack, msg_id)
        elif kind in ("subscribed", "unsubscribed"):
            topic = frame.get("topic")
            if not isinstance(topic, str):
                self.record("info", "error", value={"code": "client:bad-frame", "frame": frame})
                return
            if kind == "subscribed":
                self.subscribed.add(topic)
            else:
                self.subscribed.discard(topic)
            if kind == "unsubscribed":
                self._unsubscribed[topic] = self._unsubscribed.get(topic, 0) + 1
            self.record("ok", "subscribe" if kind == "subscribed" else "unsubscribe", topic)
        else:
            await super()._on_frame(frame)

    @property
    def acks_pending(self) -> int:
        """Late acks whose delay still runs (one that fired is sent before its ``ack`` event is
        recorded, so a wait on this re-checked after each event sees it go)."""
        return len(self._late)

    def _late_ack(self, msg_id: str) -> None:
        self._late.pop(msg_id, None)
        task = asyncio.create_task(self.ack(msg_id))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def ack(self, msg_id: str) -> bool:
        """Ack one delivery now (recorded ``ok ack`` if sent, ``fail ack`` if the connection was gone)."""
        topic = self.unacked.pop(msg_id, None)
        if await self.send({"type": "ack", "id": msg_id}):
            self.record("ok", "ack", topic, msg_id)
            return True
        self.record("fail", "ack", topic, msg_id, {"reason": "not connected"})
        return False

    async def ack_all(self) -> int:
        """Ack every delivery not acked yet (for ``ack="never"`` scenarios); returns how many were sent."""
        return sum([await self.ack(m) for m in list(self.unacked)])

    async def wait_received(self, ids: Iterable[str], timeout: float = 10.0) -> None:
        """Until every id in *ids* was delivered at least once."""
        missing = set(ids) - self.received.keys()
        self._awaited.append(missing)  # _on_frame discards each delivered id: O(1) per event
        try:
            await self._wait(
                lambda: not missing,
                timeout=timeout,
                what=f"{self.client_id} to receive {len(missing)} ids",
                describe=lambda: f"still missing {len(missing)}: {_short(missing)}",
            )
        finally:
            self._awaited.remove(missing)

    # --- nemesis ---------------------------------------------------------

    def abort(self) -> bool:
        """Cut the TCP connection without a close frame; the client reconnects (if enabled).

        False when it was not connected. The ``subscriber-cut`` fault records the window.
        """
        ws = self.ws
        if ws is None:
            return False
        self._cause = "abort"
        ws.transport.abort()
        return True

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_reading(self) -> bool:
        """Stop reading from the socket (slow consumer) until :meth:`resume_reading`.

        False when not connected or already paused. The ``subscriber-slow`` fault records the window.
        """
        ws = self.ws
        if ws is None or self._paused:
            return False
        self._readable.clear()
        ws.transport.pause_reading()
        self._paused = True
        return True

    def resume_reading(self) -> None:
        ws = self.ws
        self._readable.set()  # also lets a reader closed while stalled reconnect
        if ws is not None:
            ws.transport.resume_reading()
        self._paused = False

    async def _before_close(self) -> None:
        if self._paused:  # a paused socket could not read the close handshake
            self.resume_reading()

    async def _after_close(self) -> None:
        for h in self._late.values():
            h.cancel()
        self._late.clear()
        for t in list(self._ack_tasks):
            t.cancel()
        if self._ack_tasks:
            await asyncio.gather(*self._ack_tasks, return_exceptions=True)
        if self._paused:
            self.resume_reading()


@dataclass(frozen=True, slots=True)
class PublishAnswer:
    """The broker's answer to one publish, as the publisher saw it."""

    id: str
    status: Literal["published", "refused", "timeout", "closed"]
    recipients: int | None = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "published"


class Publisher(_Client):
    """Publishes with deterministic ids ``<client_id>-<seq>`` and self-checking payloads.

    The wire payload is ``{"id", "publisher", "seq", "data", "sha256"}`` where
    ``sha256`` is :func:`~chaos.checkers.integrity.payload_checksum` of ``data``,
    so a delivery can be checked without the history too. A publish in flight
    when the connection drops is sent again, with the same id, after reconnect
    (the broker dedups by id).
    """

    def __init__(self, url: str, client_id: str, *, history: History, **kwargs: Any) -> None:
        super().__init__(url, client_id, history=history, **kwargs)
        self.seq = 0
        self.persisted: dict[str, str] = {}  # id -> "persisted" | "persist_failed"
        self._pending: dict[str, tuple[dict[str, Any], asyncio.Future[PublishAnswer]]] = {}
        self.topics_by_id: dict[str, str] = {}  # every id published, for answers that come late

    def next_id(self) -> str:
        msg_id = f"{self.client_id}-{self.seq}"
        self.seq += 1
        return msg_id

    async def publish(
        self, topic: str, payload: Any = None, id: str | None = None, *, timeout: float = 10.0
    ) -> PublishAnswer:
        """Publish and wait for ``published`` (or an error); never raises on broker trouble.

        Status ``timeout`` when no answer came within *timeout* (recorded as ``info publish``),
        ``refused`` on an error frame, ``closed`` when the client was closed meanwhile.
        """
        if id is not None and (not isinstance(id, str) or not id):
            raise ValueError(f"publish id must be a non-empty string, got {id!r}")
        if id is not None and id in self._pending:
            raise ValueError(f"publish id {id!r} is already in flight")
        try:
            checksum = payload_checksum(payload)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"payload must be JSON-serialisable: {exc}") from None
        seq = self.seq
        msg_id = id if id is not None else self.next_id()
        if id is not None:
            self.seq += 1
        body = {
            "id": msg_id,
            "publisher": self.client_id,
            "seq": seq,
            "data": payload,
            "sha256": checksum,
        }
        frame = {"type": "publish", "topic": topic, "payload": body, "id": msg_id, "ref": msg_id}
        fut: asyncio.Future[PublishAnswer] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = (frame, fut)
        self.topics_by_id[msg_id] = topic
        self.record("invoke", "publish", topic, msg_id, digest.record(body))
        try:
            async with asyncio.timeout(timeout):
                await self.send(frame)  # if not connected, _on_connected sends it
                return await fut
        except TimeoutError:
            self.record("info", "publish", topic, msg_id, {"reason": f"no answer within {timeout}s"})
            return PublishAnswer(msg_id, "timeout")
        finally:
            self._pending.pop(msg_id, None)

    async def _on_connected(self) -> None:
        for msg_id, (frame, _) in list(self._pending.items()):
            self.record("info", "publish", frame["topic"], msg_id, {"reason": "sent after (re)connect"})
            await self.send(frame)

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        msg_id = frame.get("id")
        if kind == "published":
            entry = self._pending.get(msg_id) if isinstance(msg_id, str) else None
            topic = self.topics_by_id.get(msg_id) if isinstance(msg_id, str) else None
            self.record("ok", "publish", topic, msg_id, {"recipients": frame.get("recipients")})
            if entry is not None and not entry[1].done():
                entry[1].set_result(PublishAnswer(msg_id, "published", frame.get("recipients")))
        elif kind in ("persisted", "persist_failed") and isinstance(msg_id, str):
            self.persisted[msg_id] = kind
            topic = self.topics_by_id.get(msg_id) if isinstance(msg_id, str) else None
            if kind == "persisted":
                self.record("ok", "persisted", topic, msg_id)
            else:
                self.record("fail", "persist_failed", topic, msg_id, {"reason": frame.get("reason")})
        elif kind == "error" and isinstance(frame.get("ref"), str) and frame["ref"] in self._pending:
            entry = self._pending[frame["ref"]]
            error = {k: frame.get(k) for k in ("code", "message")}
            self.last_error = frame
            self.record("fail", "publish", entry[0]["topic"], frame["ref"], error)
            if not entry[1].done():
                entry[1].set_result(PublishAnswer(frame["ref"], "refused", error=error))
        else:
            await super()._on_frame(frame)

    async def wait_persisted(self, ids: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        """Until each id got ``persisted`` or ``persist_failed``; returns id -> outcome."""
        want = set(ids)
        await self._wait(
            lambda: want <= self.persisted.keys(),
            timeout=timeout,
            what=f"{self.client_id}: persistence outcome of {len(want)} messages",
            describe=lambda: f"no outcome yet for {_short(want - self.persisted.keys())}",
        )
        return {i: self.persisted[i] for i in want}

    async def _after_close(self) -> None:
        for msg_id, (_, fut) in list(self._pending.items()):
            if not fut.done():
                fut.set_result(PublishAnswer(msg_id, "closed"))
