"""One direction of a proxied connection: source socket -> chain of toxic stages -> destination.

With no toxics a link is a plain relay (``feed`` writes straight to the destination
transport), which keeps the no-toxic overhead near that of a bare asyncio relay.
With toxics, chunks stamped with their receive time flow through a list of
``Stage`` objects, each a queue plus a task running the toxic's coroutine.
Toxics are spliced into and out of live links: adding appends a stage, removing
cancels one and hands its queued chunks, unmodified and in order, to the next.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import TYPE_CHECKING, Any

from chaos.toxiproxy.toxics import EOF, TOXIC_TYPES, Item, Toxic

if TYPE_CHECKING:
    from chaos.toxiproxy.proxy import Connection

log = logging.getLogger(__name__)

# Bytes a link may hold inside its stages before it stops reading its source
# (Go's bound is 1024 chunks of up to 32 KiB in a latency toxic's buffer).
HOLD_HIGH = 32 * 1024 * 1024
HOLD_LOW = 8 * 1024 * 1024


class Stage:
    """A toxic running on one link: its input queue, its task and its per-link state."""

    def __init__(self, link: Link, toxic: Toxic) -> None:
        self.link = link
        self.toxic = toxic
        self.rng = link.rng
        self.items: deque[Item] = deque()
        self.state: dict[str, Any] = {}  # survives restarts (limit_data's count), not re-adds
        self.active = False
        self.finished = False  # has forwarded EOF / closed the link
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[bool] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """(Re)start on this link with a fresh toxicity draw, as Go does on every restart."""
        if self.finished:
            return
        self.active = self.rng.random() < self.toxic.toxicity
        if not self.active:
            while self.items and not self.finished:
                self.forward(self.items.popleft())
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await TOXIC_TYPES[self.toxic.type].run(self)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in a toxic must not hang the connection
            log.exception("toxic %s failed; closing the link", self.toxic.name)
            self.close()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()

    def restart(self) -> None:
        self.stop()
        self.start()

    # --- input ---------------------------------------------------------------------------------

    def put(self, item: Item) -> None:
        if self.finished:
            self.link.dropped(item)
        elif not self.active and not self.items:
            self.forward(item)
        else:
            self.items.append(item)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(True)

    # --- StageApi (used by runners) --------------------------------------------------------------

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the queue is non-empty; False if ``timeout`` seconds pass first."""
        if self.items:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter, False) if timeout is not None else None
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def forward(self, item: Item) -> None:
        if item is EOF:
            self.finished = True
        self.link.emit(self, item)

    def drop_all(self) -> None:
        while self.items:
            self.link.dropped(self.items.popleft())

    def close(self) -> None:
        """End this link's output here: drop what is queued and send EOF on."""
        self.drop_all()
        if not self.finished:
            self.forward(EOF)

    def reset_connection_at(self, when: float) -> None:
        self.link.conn.reset_at(when)


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class Link:
    """Bytes of one direction (``upstream`` = client->server) of one connection."""

    def __init__(
        self,
        conn: Connection,
        direction: str,
        src: asyncio.Transport,
        dst: asyncio.Transport,
        toxics: list[Toxic],
        rng: random.Random,
    ) -> None:
        self.conn = conn
        self.direction = direction
        self.src = src
        self.dst = dst
        self.rng = rng
        self.received = 0
        self.sent = 0
        self.held = 0  # bytes inside the stages
        self.done = False
        self.eof_fed = False
        self.dst_full = False
        self.src_paused = False
        self._holding = False
        self.stages: list[Stage] = []
        for toxic in toxics:
            stage = Stage(self, toxic)
            self.stages.append(stage)
        for stage in self.stages:
            stage.start()

    # --- input from the source socket ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.done:
            return
        if not self.stages:
            self.dst.write(data)
            self.sent += len(data)
            return
        self.held += len(data)
        self.stages[0].put((data, asyncio.get_running_loop().time()))
        if self.held > HOLD_HIGH and not self._holding:
            self._holding = True
            self.update_reading()

    def feed_eof(self) -> None:
        if self.eof_fed or self.done:
            return
        self.eof_fed = True
        if self.stages:
            self.stages[0].put(EOF)
        else:
            self.finish()

    # --- between stages and to the destination ---------------------------------------------------

    def emit(self, stage: Stage, item: Item) -> None:
        try:
            index = self.stages.index(stage)
        except ValueError:  # a removed stage's task that has not seen its cancellation yet
            self.dropped(item)
            return
        self._put_at(index + 1, item)

    def _put_at(self, index: int, item: Item) -> None:
        if index < len(self.stages):
            self.stages[index].put(item)
        else:
            self._deliver(item)

    def _deliver(self, item: Item) -> None:
        if item is EOF:
            self.finish()
            return
        data = item[0]
        self.held -= len(data)
        if self.done:
            return
        self.dst.write(data)
        self.sent += len(data)
        self._check_release()

    def dropped(self, item: Item) -> None:
        if item is not EOF:
            self.held -= len(item[0])
            self._check_release()

    def _check_release(self) -> None:
        if self._holding and self.held < HOLD_LOW:
            self._holding = False
            self.update_reading()

    def update_reading(self) -> None:
        """Pause the source while the destination or the stages are full (backpressure)."""
        pause = (self.dst_full or self._holding) and not self.done
        if pause == self.src_paused:
            return
        self.src_paused = pause
        try:
            if pause:
                self.src.pause_reading()
            else:
                self.src.resume_reading()
        except (RuntimeError, AttributeError):  # transport already closing
            pass

    def set_dst_full(self, full: bool) -> None:
        self.dst_full = full
        self.update_reading()

    def finish(self) -> None:
        """EOF reached the destination (or a toxic closed the link): close it, end the link."""
        if self.done:
            return
        self.done = True
        for stage in self.stages:
            stage.stop()
            stage.items.clear()
        self.held = 0
        self.conn.link_finished(self)

    def stop(self) -> None:
        """Connection torn down from outside: stop every stage without forwarding anything."""
        self.done = True
        for stage in self.stages:
            stage.stop()
            stage.items.clear()

    # --- live toxic changes ----------------------------------------------------------------------

    def add_toxic(self, toxic: Toxic) -> None:
        if self.done:
            return
        stage = Stage(self, toxic)
        self.stages.append(stage)
        stage.start()  # first, so chunks the previous stage releases on restart meet the new toxic
        if len(self.stages) > 1:
            self.stages[-2].restart()  # Go interrupts the previous last stage to splice

    def update_toxic(self, toxic: Toxic) -> None:
        for stage in self.stages:
            if stage.toxic is toxic:
                stage.restart()

    def remove_toxic(self, toxic: Toxic) -> None:
        index = next((i for i, s in enumerate(self.stages) if s.toxic is toxic), None)
        if index is None:
            return
        stage = self.stages.pop(index)
        stage.stop()
        held = list(stage.items)
        stage.items.clear()
        if self.done:
            return
        if stage.finished:
            for item in held:
                self.dropped(item)
        elif TOXIC_TYPES[toxic.type].close_on_remove:
            for item in held:
                self.dropped(item)
            stage.finished = True
            self._put_at(index, EOF)
        else:
            stage.finished = True
            for item in held:
                if self.done:
                    break
                self._put_at(index, item)
        if index > 0 and not self.done:
            self.stages[index - 1].restart()
