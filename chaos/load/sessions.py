"""A publisher and a subscriber on :class:`~chaos.load.client.FastPortClient`, counting and recording.

These hold the per-frame hot path of the load rig, so they stay free of Locust
(a :class:`Sink` carries Locust's ``request`` event in) and are written for
cost: one ``time.time()`` per frame, attribute counters, one HDR record, one
request event, one recorder call, and acks queued into the read's single write.

Payload of every publish: ``{"t": send time, "p": publisher client_id, "s": seq,
"c": crc32 of d, "d": data}``; its id (and ref) is ``<client_id>-<seq>``. A
subscriber takes push latency from ``t``, spots duplicates with one bit per
(publisher, seq) and corruption with the CRC. Payloads of other publishers
still count: latency from the broker's ``published_at``, duplicates by id.
"""

from __future__ import annotations

import base64
import collections
import os
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import orjson
from gevent.event import Event

from chaos.load.client import CloseInfo, FastPortClient
from chaos.load.recorder import NullRecorder, Recorder
from chaos.load.settings import ACK_MODES
from chaos.load.stats import LoadStats

REQUEST_TYPE = "fastport"
_time = time.time
_crc32 = zlib.crc32
_dumps = orjson.dumps


class Refused(Exception):
    """The broker answered a publish with an ``error`` frame (its code is the message)."""


class PersistFailed(Exception):
    """The broker gave up persisting a message (``persist_failed``)."""


class ConnectFailed(Exception):
    """A connection attempt failed."""


def _no_fire(**kwargs: Any) -> None:
    pass


class Sink:
    """Where sessions report: counters and histograms, the recorder, and Locust's request event.

    Two shortcuts of the delivery path, each worth about a tenth of the rig's
    CPU: ``log_request`` (when set) is Locust's ``stats.log_request``, called
    directly instead of firing the ``request`` event, which the users set only
    while Locust's own stats listener is the event's sole listener; and
    ``recording`` is False for a :class:`NullRecorder`, so nothing is called.
    """

    def __init__(
        self,
        stats: LoadStats | None = None,
        recorder: Recorder | None = None,
        fire: Callable[..., None] | None = None,
    ) -> None:
        self.stats = stats if stats is not None else LoadStats()
        self.fire = fire or _no_fire
        self.log_request: Callable[[str, str, float, int], None] | None = None
        self.context: dict[str, Any] = {}
        self.set_recorder(recorder if recorder is not None else NullRecorder())

    def set_recorder(self, recorder: Recorder) -> None:
        self.recorder: Recorder = recorder
        self.recording = not isinstance(recorder, NullRecorder)


class _Session:
    """Connection bookkeeping shared by both roles: connect metric, connects, disconnects."""

    def __init__(
        self,
        url: str,
        client_id: str,
        sink: Sink,
        *,
        token: str | None,
        reconnect: bool,
        query: dict[str, str] | None = None,
    ) -> None:
        self.client_id = client_id
        self.sink = sink
        self._connect_started = 0.0
        self.client = FastPortClient(
            url,
            client_id,
            token=token,
            on_frame=self._on_frame,
            on_open=self._on_open,
            on_close=self._on_close,
            on_connecting=self._on_connecting,
            on_connect_failed=self._on_connect_failed,
            reconnect=reconnect,
            query=query,
        )

    def start(self, timeout: float = 10.0) -> None:
        self.client.start(wait=True, timeout=timeout)

    def _on_connecting(self, attempt: int) -> None:
        self._connect_started = now = _time()
        self.sink.recorder.connect_invoked(self.client_id, now, attempt)

    def _on_open(self, connection: int) -> None:
        sink, now = self.sink, _time()
        sink.stats.connects += 1
        latency = now - self._connect_started
        sink.stats.record("connect", latency)
        sink.fire(
            request_type=REQUEST_TYPE,
            name="connect",
            response_time=latency * 1000,
            response_length=0,
            exception=None,
            context=sink.context,
        )
        sink.recorder.connected(self.client_id, now, connection)

    def _on_connect_failed(self, error: str) -> None:
        sink, now = self.sink, _time()
        sink.stats.connect_failed += 1
        sink.fire(
            request_type=REQUEST_TYPE,
            name="connect",
            response_time=(now - self._connect_started) * 1000,
            response_length=0,
            exception=ConnectFailed(error),
            context=sink.context,
        )
        sink.recorder.connect_failed(self.client_id, now, error)

    def _on_close(self, info: CloseInfo) -> None:
        self.sink.stats.disconnects += 1
        self.sink.recorder.disconnected(self.client_id, _time(), info.cause, info.code)

    def _on_frame(self, frame: dict[str, Any], size: int) -> None:
        raise NotImplementedError

    def _error(self, frame: dict[str, Any]) -> None:
        self.sink.stats.errors += 1
        self.sink.recorder.error(self.client_id, _time(), str(frame.get("code")), str(frame.get("message")))


class PublisherSession(_Session):
    """Publishes ``<client_id>-<seq>`` messages; measures publish->published and publish->persisted.

    At most ``window`` publishes wait for their ``published`` answer; those are
    sent again with the same id after a reconnect (the broker dedups by id).
    ``relay=True`` speaks the bench relay's dialect instead (message frames, no answers).
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        sink: Sink,
        *,
        payload_size: int = 64,
        incompressible: bool = False,
        window: int = 100,
        token: str | None = None,
        reconnect: bool = True,
        relay: bool = False,
    ) -> None:
        super().__init__(
            url, client_id, sink, token=token, reconnect=reconnect, query={"role": "pub"} if relay else None
        )
        self.payload_size = payload_size
        self.incompressible = incompressible
        self.window = window
        self.relay = relay
        self.seq = 0
        # id -> (sent at, topic, frame, digest, length), until `published` (or a refusal)
        self.pending: dict[str, tuple[float, str, bytes, int, int]] = {}
        self.unpersisted: dict[str, float] = {}  # id -> sent at, until persisted / persist_failed
        self.room = Event()  # set while the window has room
        self.room.set()
        self._answered = Event()  # pulsed when the last pending publish is answered
        self._data = "x" * payload_size

    def _payload_data(self) -> str:
        if not self.incompressible:
            return self._data
        raw = os.urandom(self.payload_size * 3 // 4 + 3)
        return base64.b64encode(raw).decode("ascii")[: self.payload_size]

    def publish(self, topic: str) -> str:
        """Send the next message to *topic* (queued for the reconnect when offline); returns its id."""
        cid, seq = self.client_id, self.seq
        self.seq = seq + 1
        msg_id = f"{cid}-{seq}"
        data = self._payload_data()
        digest = _crc32(data.encode())
        now = _time()
        payload = {"t": now, "p": cid, "s": seq, "c": digest, "d": data}
        if self.relay:
            frame = {
                "type": "message",
                "topic": topic,
                "id": msg_id,
                "payload": payload,
                "attempt": 1,
                "published_at": now,
            }
        else:
            frame = {"type": "publish", "topic": topic, "id": msg_id, "ref": msg_id, "payload": payload}
        encoded = _dumps(frame)
        if not self.relay:
            self.pending[msg_id] = (now, topic, encoded, digest, len(data))
            self.unpersisted[msg_id] = now
            if len(self.pending) >= self.window:
                self.room.clear()
        self.client.send_text(encoded)
        self.sink.stats.sent += 1
        self.sink.recorder.publish_invoked(cid, msg_id, topic, now, digest, len(data))
        return msg_id

    def wait_room(self, timeout: float = 60.0) -> bool:
        """Block while the window is full; False if it stayed full for *timeout*."""
        return self.room.wait(timeout) is True or len(self.pending) < self.window

    def wait_answered(self, timeout: float) -> bool:
        """Until every publish got its ``published`` or a refusal (the end-of-run drain)."""
        deadline = _time() + timeout
        while self.pending and self.client.connected:
            left = deadline - _time()
            if left <= 0:
                return False
            self._answered.clear()
            self._answered.wait(min(left, 1.0))
        return not self.pending

    def _on_open(self, connection: int) -> None:
        super()._on_open(connection)
        if self.pending:
            rec, cid, now = self.sink.recorder, self.client_id, _time()
            for msg_id, (_, topic, encoded, digest, length) in self.pending.items():
                self.client.send_text(encoded)
                self.sink.stats.resent += 1
                rec.publish_invoked(cid, msg_id, topic, now, digest, length)

    def _on_frame(self, frame: dict[str, Any], size: int) -> None:
        kind = frame["type"]
        sink = self.sink
        stats = sink.stats
        if kind == "published":
            msg_id = frame.get("id")
            entry = self.pending.pop(msg_id, None)  # type: ignore[arg-type]
            now = _time()
            sink.recorder.published(self.client_id, msg_id, now, frame.get("recipients", -1))  # type: ignore[arg-type]
            if entry is not None:
                stats.published += 1
                latency = now - entry[0]
                stats.record("published", latency)
                sink.fire(
                    request_type=REQUEST_TYPE,
                    name="published",
                    response_time=latency * 1000,
                    response_length=size,
                    exception=None,
                    context=sink.context,
                )
                if len(self.pending) < self.window:
                    self.room.set()
                if not self.pending:
                    self._answered.set()
        elif kind == "persisted" or kind == "persist_failed":
            msg_id = frame.get("id")
            sent = self.unpersisted.pop(msg_id, None)  # type: ignore[arg-type]
            now = _time()
            failed = kind == "persist_failed"
            if failed:
                stats.persist_failed += 1
                sink.recorder.persist_failed(self.client_id, msg_id, now, str(frame.get("reason")))  # type: ignore[arg-type]
            else:
                stats.persisted += 1
                sink.recorder.persisted(self.client_id, msg_id, now)  # type: ignore[arg-type]
            if sent is not None:
                latency = now - sent
                if not failed:
                    stats.record("persisted", latency)
                sink.fire(
                    request_type=REQUEST_TYPE,
                    name="persisted",
                    response_time=latency * 1000,
                    response_length=size,
                    context=sink.context,
                    exception=PersistFailed(str(frame.get("reason"))) if failed else None,
                )
        elif kind == "error":
            ref = frame.get("ref")
            entry = self.pending.pop(ref, None) if isinstance(ref, str) else None
            if entry is None:
                self._error(frame)
                return
            self.unpersisted.pop(ref, None)  # type: ignore[arg-type]
            code = str(frame.get("code"))
            now = _time()
            stats.refused += 1
            if code == "overloaded":
                stats.overloaded += 1
            sink.recorder.refused(self.client_id, ref, now, code)  # type: ignore[arg-type]
            sink.fire(
                request_type=REQUEST_TYPE,
                name="published",
                response_time=(now - entry[0]) * 1000,
                response_length=size,
                exception=Refused(code),
                context=sink.context,
            )
            if len(self.pending) < self.window:
                self.room.set()
            if not self.pending:
                self._answered.set()

    def close(self, timeout: float = 1.0) -> None:
        self.client.close(timeout)
        self.room.set()
        self._answered.set()


class SubscriberSession(_Session):
    """Subscribes to *topics*, measures push latency and counts every delivery; acks by *ack_mode*.

    ``always`` acks in the same write as the read that brought the message,
    ``late`` after ``ack_delay`` seconds, ``never`` not at all (the broker
    redelivers until its max attempts). ``on_delivery(publisher, seq)`` is an
    optional hook (the benchmark's flow control).
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        topics: Iterable[str],
        sink: Sink,
        *,
        ack_mode: str = "always",
        ack_delay: float = 2.0,
        token: str | None = None,
        reconnect: bool = True,
        relay: bool = False,
        on_delivery: Callable[[str, int], None] | None = None,
    ) -> None:
        if ack_mode not in ACK_MODES:
            raise ValueError(f"ack_mode must be one of {ACK_MODES}, got {ack_mode!r}")
        super().__init__(
            url, client_id, sink, token=token, reconnect=reconnect, query={"role": "sub"} if relay else None
        )
        self.relay = relay
        self.ack_mode = "never" if relay else ack_mode
        self.ack_delay = ack_delay
        self.on_delivery = on_delivery
        for topic in () if relay else topics:
            self.client.topics[topic] = None
        self._seen: dict[str, bytearray] = {}  # publisher -> one bit per seq
        self._seen_ids: set[str] = set()  # deliveries of foreign payloads
        self._late: collections.deque[tuple[float, str]] = collections.deque()
        self._late_timer: gevent.Greenlet | None = None
        self._ack_always = self.ack_mode == "always"
        self._ack_late = self.ack_mode == "late"

    def start(self, timeout: float = 10.0) -> None:
        """Connect and wait until every topic is confirmed ``subscribed``."""
        super().start(timeout)
        self.client.wait_subscribed(timeout=timeout)

    def _on_open(self, connection: int) -> None:
        super()._on_open(connection)
        rec, cid, now = self.sink.recorder, self.client_id, _time()
        for topic in self.client.topics:
            rec.subscribe_invoked(cid, topic, now)

    def _on_frame(self, frame: dict[str, Any], size: int) -> None:
        kind = frame["type"]
        if kind != "message":
            self._on_reply(kind, frame)
            return
        now = _time()
        sink = self.sink
        stats = sink.stats
        stats.delivered += 1
        msg_id = frame["id"]
        attempt = frame.get("attempt", 1)
        if attempt != 1:
            stats.redelivered += 1
        payload = frame.get("payload")
        try:
            sent, publisher, seq, data = payload["t"], payload["p"], payload["s"], payload["d"]  # type: ignore[index]
            digest = _crc32(data.encode())
            if digest != payload["c"]:  # type: ignore[index]
                stats.corrupt += 1
            bits = self._seen.get(publisher)
            if bits is None:
                bits = self._seen[publisher] = bytearray(4096)
            i, bit = seq >> 3, 1 << (seq & 7)
            if i >= len(bits):
                bits.extend(bytes(i - len(bits) + 4096))
            if bits[i] & bit:
                stats.duplicates += 1
            else:
                bits[i] |= bit
            if self.on_delivery is not None:
                self.on_delivery(publisher, seq)
        except (TypeError, KeyError, AttributeError):
            sent, digest = frame.get("published_at") or now, 0
            if msg_id in self._seen_ids:
                stats.duplicates += 1
            else:
                self._seen_ids.add(msg_id)
        latency = now - sent
        us = int(latency * 1e6)
        metric = "push" if attempt == 1 else "redelivery"  # a retry's age would hide the push tail
        stats.hist[metric].record_value(us if us > 0 else 1)
        log_request = sink.log_request
        if log_request is not None:
            log_request(REQUEST_TYPE, metric, latency * 1000, size)
        else:
            sink.fire(
                request_type=REQUEST_TYPE,
                name=metric,
                response_time=latency * 1000,
                response_length=size,
                exception=None,
                context=sink.context,
            )
        recording = sink.recording
        if recording:
            sink.recorder.delivered(self.client_id, msg_id, frame.get("topic"), now, attempt, digest)
        if self._ack_always:
            if self.client.ack(msg_id):
                stats.acked += 1
                if recording:
                    sink.recorder.acked(self.client_id, msg_id, now)
        elif self._ack_late:
            self._late.append((now + self.ack_delay, msg_id))
            if self._late_timer is None:
                self._late_timer = gevent.spawn(self._ack_later)

    def _on_reply(self, kind: str, frame: dict[str, Any]) -> None:
        rec = self.sink.recorder
        if kind == "subscribed":
            rec.subscribed(self.client_id, frame.get("topic"), _time())  # type: ignore[arg-type]
        elif kind == "unsubscribed":
            rec.unsubscribed(self.client_id, frame.get("topic"), _time())  # type: ignore[arg-type]
        elif kind == "error":
            self._error(frame)

    def _ack_later(self) -> None:
        """The ``late`` acks, in delivery order, each once its delay is over (a timer, not a sync)."""
        late, client, stats, rec, cid = (
            self._late,
            self.client,
            self.sink.stats,
            self.sink.recorder,
            self.client_id,
        )
        try:
            while late:
                wait = late[0][0] - _time()
                if wait > 0:
                    gevent.sleep(wait)
                now = _time()
                due = []
                while late and late[0][0] <= now:
                    due.append(late.popleft()[1])
                sent = client.ack_many(due)
                stats.acked += sent
                for msg_id in due[:sent]:
                    rec.acked(cid, msg_id, now)
        finally:
            self._late_timer = None

    def barrier(self, timeout: float = 10.0) -> None:
        """Return once every frame the broker queued for this connection before now was handled."""
        self.client.roundtrip(timeout)

    def close(self, timeout: float = 1.0, unsubscribe: bool = True) -> None:
        if self._late_timer is not None:
            self._late_timer.kill(block=False)
        if unsubscribe and not self.relay and self.client.connected:
            for topic in list(self.client.topics):
                self.client.unsubscribe(topic, wait=False)
        self.client.close(timeout)
