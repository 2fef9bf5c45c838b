"""Toxic types: their attributes, validation and what each does to a link's chunks.

Each runner is a coroutine driving one stage of one link (see ``link.py``).  A
runner only looks at the head of its input queue while it waits, and pops or
shortens that head in the same synchronous step in which it forwards data; so
when the stage is interrupted (toxic updated or removed) every byte it has not
forwarded yet is still in its queue and can be handed on unmodified, in order.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Chunk = tuple[bytes, float]  # (data, receive time on the loop's monotonic clock)
EOF = None
Item = Chunk | None


class StageApi(Protocol):
    """What a runner may do with its stage (implemented by ``link.Stage``)."""

    items: deque[Item]
    state: dict[str, Any]
    toxic: Toxic
    rng: random.Random

    def now(self) -> float: ...
    async def wait(self, timeout: float | None = None) -> bool: ...
    def forward(self, item: Item) -> None: ...
    def drop_all(self) -> None: ...
    def close(self) -> None: ...
    def reset_connection_at(self, when: float) -> None: ...


@dataclass
class Toxic:
    """A toxic's shared settings; every link running it reads them live."""

    name: str
    type: str
    stream: str  # as sent by the client (echoed back), e.g. "UpStream"
    toxicity: float
    attributes: dict[str, int] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return self.stream.lower()

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": _float32_json(self.toxicity),
        }


def _float32_json(value: float) -> float | int:
    """Go prints float32 values in their shortest form and whole numbers without '.0'."""
    f32 = struct.unpack("f", struct.pack("f", value))[0]
    if f32 == int(f32) and abs(f32) < 1e21:
        return int(f32)
    for digits in range(1, 10):
        short = float(f"{f32:.{digits}g}")
        if struct.unpack("f", struct.pack("f", short))[0] == f32:
            return short
    return f32


# ---------------------------------------------------------------------------- validation


class AttributeError400(ValueError):
    """An attribute value the Go server would crash or hang on."""


def _validate_bandwidth(a: dict[str, int]) -> None:
    if a["rate"] < 0:
        raise AttributeError400("bandwidth rate must be >= 0 (0 stalls the stream)")


def _validate_slicer(a: dict[str, int]) -> None:
    if a["average_size"] <= 0:
        raise AttributeError400("slicer average_size must be > 0")
    if a["size_variation"] < 0:
        raise AttributeError400("slicer size_variation must be >= 0")
    if a["size_variation"] > a["average_size"]:
        raise AttributeError400("slicer size_variation must not exceed average_size")


def _no_check(a: dict[str, int]) -> None:
    return None


# ---------------------------------------------------------------------------- pure helpers


def latency_target(received: float, latency_ms: int, jitter_ms: int, rng: random.Random) -> float:
    """When a chunk received at ``received`` may leave: receive time + latency +/- jitter."""
    delay = latency_ms
    if jitter_ms > 0:
        delay += rng.randrange(-jitter_ms, jitter_ms)
    return received + max(delay, 0) / 1000.0


def slice_sizes(length: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Piece sizes for slicer: halve (mid-point moved by +/-variation) until <= average+variation."""
    sizes: list[int] = []
    stack = [(0, length)]
    while stack:
        start, end = stack.pop()
        if (end - start) - average <= variation:
            sizes.append(end - start)
            continue
        mid = start + (end - start) // 2
        if variation > 0:
            mid += rng.randrange(variation * 2) - variation
        stack.append((mid, end))
        stack.append((start, mid))
    return [s for s in sizes if s > 0]


# ---------------------------------------------------------------------------- runners


async def run_noop(st: StageApi) -> None:
    while True:
        await st.wait()
        while st.items:
            item = st.items.popleft()
            st.forward(item)
            if item is EOF:
                return


async def run_latency(st: StageApi) -> None:
    """Delay each chunk to receive time + latency (+/- jitter); delays pipeline, never add up."""
    while True:
        await st.wait()
        item = st.items[0]
        if item is EOF:
            st.items.popleft()
            st.forward(EOF)
            return
        data, received = item
        attrs = st.toxic.attributes
        target = latency_target(received, attrs["latency"], attrs["jitter"], st.rng)
        pause = target - st.now()
        if pause > 0:
            await asyncio.sleep(pause)
        st.items.popleft()
        # The next latency toxic counts from when this one released the chunk, so two add up.
        st.forward((data, max(target, received)))


async def run_bandwidth(st: StageApi) -> None:
    """Limit to ``rate`` KB/s; chunks above rate*100 bytes leave in pieces every 100 ms."""
    debt = 0.0  # seconds owed, as in Go (the remainder of one sleep offsets the next)
    while True:
        await st.wait()
        if st.items[0] is EOF:
            st.items.popleft()
            st.forward(EOF)
            return
        rate = st.toxic.attributes["rate"]
        if rate <= 0:
            await asyncio.Event().wait()  # stall: hold data until updated or removed
        data, received = st.items[0]  # type: ignore[misc]
        debt += len(data) / (rate * 1000.0)
        piece = rate * 100
        while len(data) > piece:
            await asyncio.sleep(0.1)
            st.items[0] = (data[piece:], received)
            st.forward((data[:piece], received))
            data = data[piece:]
            debt -= 0.1
        start = st.now()
        if debt > 0:
            await asyncio.sleep(debt)
        debt -= st.now() - start
        st.items.popleft()
        st.forward((data, received))


async def run_slow_close(st: StageApi) -> None:
    """Pass data untouched; hold the EOF back for ``delay`` ms."""
    while True:
        await st.wait()
        while st.items:
            if st.items[0] is EOF:
                await asyncio.sleep(max(st.toxic.attributes["delay"], 0) / 1000.0)
                st.items.popleft()
                st.forward(EOF)
                return
            st.forward(st.items.popleft())


async def run_timeout(st: StageApi) -> None:
    """Drop everything; close after ``timeout`` ms without incoming data (0 = never)."""
    while True:
        ms = st.toxic.attributes["timeout"]
        got = await st.wait(ms / 1000.0 if ms > 0 else None)
        if not got:
            st.close()
            return
        if any(item is EOF for item in st.items):
            st.close()
            return
        st.drop_all()


async def run_reset_peer(st: StageApi) -> None:
    """On the first chunk: drop data and reset (RST) the connection ``timeout`` ms later."""
    if "reset_at" not in st.state:
        await st.wait()
        if st.items[0] is EOF:
            st.items.popleft()
            st.forward(EOF)
            return
        ms = max(st.toxic.attributes["timeout"], 0)
        st.state["reset_at"] = st.now() + ms / 1000.0
        # Scheduled on the connection, not this task: like Go it fires even if the toxic is removed.
        st.reset_connection_at(st.state["reset_at"])
    while True:
        st.drop_all()
        await st.wait()


async def run_slicer(st: StageApi) -> None:
    """Split each chunk into pieces of about ``average_size`` bytes, ``delay`` us apart."""
    while True:
        await st.wait()
        if st.items[0] is EOF:
            st.items.popleft()
            st.forward(EOF)
            return
        data, received = st.items[0]  # type: ignore[misc]
        a = st.toxic.attributes
        sizes = slice_sizes(len(data), a["average_size"], a["size_variation"], st.rng)
        delay = a["delay"] / 1e6
        offset = 0
        for size in sizes:
            piece = data[offset : offset + size]
            offset += size
            if offset < len(data):
                st.items[0] = (data[offset:], received)
            else:
                st.items.popleft()
            st.forward((piece, received))
            if delay > 0:
                await asyncio.sleep(delay)


async def run_limit_data(st: StageApi) -> None:
    """Forward ``bytes`` bytes in this direction (count survives restarts), then close."""
    sent = st.state.setdefault("sent", 0)
    while True:
        await st.wait()
        item = st.items.popleft()
        if item is EOF:
            st.forward(EOF)
            return
        data, received = item
        remaining = max(st.toxic.attributes["bytes"] - sent, 0)
        if len(data) > remaining:
            data = data[:remaining]
        if data:
            st.forward((data, received))
            sent += len(data)
            st.state["sent"] = sent
        if st.toxic.attributes["bytes"] - sent <= 0:
            st.close()
            return


async def run_limit_time(st: StageApi) -> None:
    """Extension: pass data, but close the link ``time`` ms after the toxic started on it."""
    started = st.state.setdefault("started", st.now())
    while True:
        ms = st.toxic.attributes["time"]
        left = started + ms / 1000.0 - st.now() if ms > 0 else None
        if left is not None and left <= 0:
            st.close()
            return
        await st.wait(left)
        while st.items:
            item = st.items.popleft()
            st.forward(item)
            if item is EOF:
                return


@dataclass(frozen=True)
class ToxicType:
    attributes: tuple[str, ...]
    run: Callable[[StageApi], Awaitable[None]]
    validate: Callable[[dict[str, int]], None] = _no_check
    close_on_remove: bool = False  # timeout: hand no corrupted stream to the app


TOXIC_TYPES: dict[str, ToxicType] = {
    "noop": ToxicType((), run_noop),
    "latency": ToxicType(("latency", "jitter"), run_latency),
    "bandwidth": ToxicType(("rate",), run_bandwidth, _validate_bandwidth),
    "slow_close": ToxicType(("delay",), run_slow_close),
    "timeout": ToxicType(("timeout",), run_timeout, close_on_remove=True),
    "reset_peer": ToxicType(("timeout",), run_reset_peer),
    "slicer": ToxicType(("average_size", "size_variation", "delay"), run_slicer, _validate_slicer),
    "limit_data": ToxicType(("bytes",), run_limit_data),
    # Extensions (new names only, so standard clients see standard behaviour):
    "limit_time": ToxicType(("time",), run_limit_time),
}
