"""Client-side workload of the broker benchmark: N subscribers and one publisher.

The same workload drives the bare relay and the broker, so that the only
difference between the two figures is the server. Subscribers of the broker
ack every delivery (that is part of the protocol's cost); the relay has no
acks. Latency is measured publish-to-deliver inside this one process with
``time.perf_counter`` stamped into the payload, so no cross-process clock is
involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect

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


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; ``nan`` for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Workload:
    """Connects the clients to one server (``relay`` or ``broker`` flavour) and drives phases."""

    def __init__(self, url: str, flavour: str, subscribers: int) -> None:
        self.url = url
        self.flavour = flavour
        self.n = subscribers
        self.tally = Tally()
        self.pub = PublisherState()
        self._subs: list[ClientConnection] = []
        self._publisher: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = itertools.count()

    # --- connections -------------------------------------------------------

    def _sub_url(self, i: int) -> str:
        if self.flavour == "relay":
            return f"{self.url}/?role=sub"
        return f"{self.url}/?client_id=bench-sub-{i}"

    async def __aenter__(self) -> Workload:
        try:
            for i in range(self.n):
                ws = await connect(self._sub_url(i), compression=None, max_queue=None,
                                   open_timeout=10, ping_interval=None)
                self._subs.append(ws)
                if self.flavour == "broker":
                    await ws.send(json.dumps({"type": "subscribe", "topic": TOPIC}))
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if reply.get("type") != "subscribed":
                        raise RuntimeError(f"subscribe refused: {reply}")
                self._tasks.append(asyncio.create_task(self._receive(ws)))
            role = "role=pub" if self.flavour == "relay" else "client_id=bench-pub"
            pub_url = f"{self.url}/?{role}"
            self._publisher = await connect(pub_url, compression=None, max_queue=None, open_timeout=10,
                                            ping_interval=None)
            if self.flavour == "broker":
                self._tasks.append(asyncio.create_task(self._publisher_replies(self._publisher)))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for ws in [*self._subs, *([self._publisher] if self._publisher else [])]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

    # --- receiving ---------------------------------------------------------

    async def _receive(self, ws: ClientConnection) -> None:
        tally, n, ack = self.tally, self.n, self.flavour == "broker"
        async for frame in ws:
            msg = json.loads(frame)
            if msg.get("type") != "message":
                continue
            now = time.perf_counter()
            payload = msg["payload"]
            tally.deliveries += 1
            if tally.record_latency:
                tally.latencies.append(now - payload["t"])
            seq = payload["seq"]
            seen = tally.per_message.get(seq, 0) + 1
            if seen >= n:
                tally.per_message.pop(seq, None)
                tally.complete += 1
                tally.progress.set()
            else:
                tally.per_message[seq] = seen
            if ack:
                await ws.send(json.dumps({"type": "ack", "id": msg["id"]}))

    async def _publisher_replies(self, ws: ClientConnection) -> None:
        async for frame in ws:
            msg = json.loads(frame)
            kind = msg.get("type")
            if kind == "published":
                self.pub.published += 1
            elif kind == "persisted":
                self.pub.persisted += 1
            elif kind == "persist_failed":
                self.pub.persist_failed += 1
            elif kind == "error" and len(self.pub.errors) < 20:
                self.pub.errors.append(msg.get("code", "?"))

    # --- publishing --------------------------------------------------------

    async def _publish_one(self) -> None:
        assert self._publisher is not None
        seq = next(self._seq)
        payload = {"t": time.perf_counter(), "seq": seq, "pad": "x" * 64}
        if self.flavour == "relay":
            frame = {"type": "message", "topic": TOPIC, "id": f"m{seq}", "payload": payload,
                     "attempt": 1, "published_at": time.time()}
        else:
            frame = {"type": "publish", "topic": TOPIC, "id": f"m{seq}", "payload": payload}
        await self._publisher.send(json.dumps(frame))
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
                await self._publish_one()
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
            await self._publish_one()
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
