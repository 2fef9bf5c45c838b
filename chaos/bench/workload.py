"""Client-side workload of the broker benchmark: N subscribers and one publisher.

The same workload drives the bare relay and the broker, so that the only
difference between the two figures is the server. Subscribers of the broker
ack every delivery (that is part of the protocol's cost); the relay has no
acks. Latency is measured publish-to-deliver inside this one process with
``time.perf_counter`` stamped into the payload, so no cross-process clock is
involved.

Subscribers run on websockets' sans-I/O ``ClientProtocol`` under a plain
``asyncio.Protocol``: one callback per TCP read instead of a task switch per
frame, and their acks leave in one write per read. On two cores the client
process shares the machine with the server, and a heavier client would make
the benchmark measure itself rather than the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

TOPIC = "bench"


@dataclass
class Tally:
    """What the subscribers saw; shared by all of them (one event loop, no locks needed)."""

    deliveries: int = 0
    latencies: list[float] = field(default_factory=list)
    record_latency: bool = False
    per_message: dict[int, int] = field(default_factory=dict)
    complete: int = 0  # messages received by every subscriber
    progress: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class PublisherState:
    sent: int = 0
    published: int = 0
    persisted: int = 0
    persist_failed: int = 0
    errors: list[str] = field(default_factory=list)


class _LeanClient(asyncio.Protocol):
    """A subscriber or the publisher: sans-I/O websockets under an asyncio protocol."""

    def __init__(self, url: str, workload: Workload, publisher: bool = False) -> None:
        self.ws = ClientProtocol(parse_uri(url))
        self.workload = workload
        self.publisher = publisher
        self.ack = workload.flavour == "broker"
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.replies: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def _flush(self) -> None:
        if self.transport is not None and (out := self.ws.data_to_send()):
            self.transport.write(b"".join(out))

    def send(self, frame: dict[str, object]) -> None:
        self.ws.send_text(json.dumps(frame).encode())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if event.status_code == 101 and not self.opened.done():
                    self.opened.set_result(None)
                elif not self.opened.done():
                    self.opened.set_exception(RuntimeError(f"handshake refused: HTTP {event.status_code}"))
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self._on_text(event.data)
        self._flush()

    def _on_text(self, data: bytes) -> None:
        msg = json.loads(data)
        if self.publisher:
            self.workload.count_reply(msg)
            return
        if msg.get("type") != "message":
            self.replies.put_nowait(msg)
            return
        now = time.perf_counter()
        tally, payload = self.workload.tally, msg["payload"]
        tally.deliveries += 1
        if tally.record_latency:
            tally.latencies.append(now - payload["t"])
        seq = payload["seq"]
        seen = tally.per_message.get(seq, 0) + 1
        if seen >= self.workload.n:
            tally.per_message.pop(seq, None)
            tally.complete += 1
            tally.progress.set()
        else:
            tally.per_message[seq] = seen
        if self.ack:
            self.ws.send_text(b'{"type":"ack","id":%s}' % json.dumps(msg["id"]).encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("connection closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def close(self) -> None:
        if self.transport is None or self.closed.done():
            return
        self.ws.send_close()
        self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 2)
        except TimeoutError:
            self.transport.abort()


class Workload:
    """Connects the clients to one server (``relay`` or ``broker`` flavour) and drives phases."""

    def __init__(self, url: str, flavour: str, subscribers: int) -> None:
        self.url = url
        self.flavour = flavour
        self.n = subscribers
        self.tally = Tally()
        self.pub = PublisherState()
        self._clients: list[_LeanClient] = []
        self._publisher: _LeanClient | None = None
        self._seq = itertools.count()

    # --- connections -------------------------------------------------------

    def _sub_url(self, i: int) -> str:
        if self.flavour == "relay":
            return f"{self.url}/?role=sub"
        return f"{self.url}/?client_id=bench-sub-{i}"

    async def __aenter__(self) -> Workload:
        try:
            for i in range(self.n):
                sub = await self._open(self._sub_url(i))
                if self.flavour == "broker":
                    sub.send({"type": "subscribe", "topic": TOPIC})
                    reply = await asyncio.wait_for(sub.replies.get(), 10)
                    if reply.get("type") != "subscribed":
                        raise RuntimeError(f"subscribe refused: {reply}")
            role = "role=pub" if self.flavour == "relay" else "client_id=bench-pub"
            pub_url = f"{self.url}/?{role}"
            self._publisher = await self._open(pub_url, publisher=True)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _open(self, url: str, publisher: bool = False) -> _LeanClient:
        uri = parse_uri(url)
        _, client = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
            lambda: _LeanClient(url, self, publisher), uri.host, uri.port), 10)
        self._clients.append(client)
        await asyncio.wait_for(client.opened, 10)
        return client

    async def __aexit__(self, *exc: object) -> None:
        for client in self._clients:
            await client.close()

    def count_reply(self, msg: dict[str, object]) -> None:
        """The publisher's replies: published, then persisted or persist_failed."""
        kind = msg.get("type")
        if kind == "published":
            self.pub.published += 1
        elif kind == "persisted":
            self.pub.persisted += 1
        elif kind == "persist_failed":
            self.pub.persist_failed += 1
        elif kind == "error" and len(self.pub.errors) < 20:
            self.pub.errors.append(str(msg.get("code", "?")))

    # --- publishing --------------------------------------------------------

    def _publish_one(self) -> None:
        assert self._publisher is not None
        seq = next(self._seq)
        payload = {"t": time.perf_counter(), "seq": seq, "pad": "x" * 64}
        if self.flavour == "relay":
            frame = {"type": "message", "topic": TOPIC, "id": f"m{seq}", "payload": payload,
                     "attempt": 1, "published_at": time.time()}
        else:
            frame = {"type": "publish", "topic": TOPIC, "id": f"m{seq}", "payload": payload}
        self._publisher.send(frame)
        self.pub.sent += 1

    async def saturate(self, seconds: float, window: int, warmup: float = 0.5) -> float:
        """Publish as fast as the slowest subscriber allows; return deliveries per second."""
        tally = self.tally
        deadline = time.perf_counter() + warmup + seconds
        start = time.perf_counter() + warmup
        counted_from: int | None = None
        while (now := time.perf_counter()) < deadline:
            if counted_from is None and now >= start:
                counted_from = tally.deliveries
            if self.pub.sent - tally.complete < window:
                self._publish_one()
                continue
            tally.progress.clear()
            try:
                await asyncio.wait_for(tally.progress.wait(), 30)
            except TimeoutError:
                raise RuntimeError("deliveries stopped for 30 s during the benchmark") from None
        delivered = tally.deliveries - (counted_from or 0)
        await self.drain()
        return delivered / seconds

    async def paced(self, seconds: float, rate: float) -> list[float]:
        """Publish ``rate`` messages per second open-loop; return publish-to-deliver latencies."""
        tally = self.tally
        tally.latencies = []
        tally.record_latency = True
        start = time.perf_counter()
        total = max(1, int(seconds * rate))
        for k in range(total):
            due = start + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not synchronisation
            self._publish_one()
        await self.drain()
        tally.record_latency = False
        return tally.latencies

    async def drain(self, timeout: float = 30) -> None:
        """Wait until every message sent so far reached every subscriber."""
        await self.wait_until(lambda: self.tally.complete >= self.pub.sent, timeout,
                              "subscribers did not receive every message")

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait on the subscribers' progress event until ``predicate`` holds (no fixed sleeps)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.tally.progress.clear()
                    with contextlib.suppress(TimeoutError):
                        # The publisher's replies do not set the event, so re-check now and then.
                        await asyncio.wait_for(self.tally.progress.wait(), 0.05)
        except TimeoutError:
            raise RuntimeError(f"{what} within {timeout:g} s") from None
