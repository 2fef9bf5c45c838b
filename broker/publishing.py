"""Publish paths: how a publish becomes deliveries. The fix, and the two original failures on purpose.

The broker holds one :class:`PublishPath`, chosen from ``--flaw`` by
:func:`publish_path`, so its own code has no flaw branches. A path returns
None when it is done (the fix never waits), or an awaitable: the connection
then holds that client's later frames until it completes, as the original
broker's awaiting handler did.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection
from typing import TYPE_CHECKING, Protocol

from . import frames as F
from .connection import text_frame
from .store import SaveMessage, StoredMessage

if TYPE_CHECKING:
    from .server import Broker
    from .session import Session


class PublishPath(Protocol):
    def publish(self, b: Broker, s: Session, frame: F.Publish, size: int) -> Awaitable[None] | None:
        """Admit, record and fan out one publish of ``size`` bytes, and answer the publisher."""


class Optimistic:
    """FMEA 1 and 2 fixed: fan out from memory at once, each recipient isolated; persist in the background.

    The message frame is encoded once (JSON and WebSocket frame) and handed to
    every online recipient without awaiting; storage sees it later, through the
    spill queue and the writer.
    """

    def __init__(self, compression: bool = False) -> None:
        self.shared = not compression  # deflate is per connection: no frame to share then

    def publish(self, b: Broker, s: Session, frame: F.Publish, size: int) -> None:
        b.admit(s, frame, size)
        res = b.accept(s, frame)
        if not res.duplicate:
            b.waiters[res.id] = [s]
            data = res.frame
            assert data is not None
            if res.online:
                wire = text_frame(data) if self.shared else None
                conns = b.conns
                for cid in res.online:
                    c = conns.get(cid)
                    if c is not None:
                        c.send(data, wire)
            b.persist(size)
        s.send(F.published_frame(res.id, frame.ref, res.recipients))
        if res.duplicate:
            b.tell_outcome(s, res.id)


class StoreFirst:
    """``--flaw store-first``, FMEA 1 as built: the message is written to storage before anyone gets it."""

    def __init__(self, then: Optimistic) -> None:
        self.then = then

    def publish(self, b: Broker, s: Session, frame: F.Publish, size: int) -> Awaitable[None]:
        return self._publish(b, s, frame, size)

    async def _publish(self, b: Broker, s: Session, frame: F.Publish, size: int) -> None:
        b.admit(s, frame, size)
        mid = frame.id or b.core.new_id()
        seen = b.core.dedup.get(mid)
        if seen is None or seen[0] != frame.topic:
            subs = b.core.subscribers.get(frame.topic)
            op = SaveMessage(
                StoredMessage(mid, frame.topic, frame.payload, b.clock(), s.client_id),
                tuple(subs) if subs else (),
            )
            await b.store.apply([op])  # the original `await cacheMessage()`: no fan-out until it returns
        self.then.publish(b, s, F.Publish(frame.topic, frame.payload, mid, frame.ref), size)


class UnguardedFanout:
    """``--flaw unguarded-fanout``, FMEA 2 as built: awaited sends in a loop; the first exception ends it."""

    def publish(self, b: Broker, s: Session, frame: F.Publish, size: int) -> Awaitable[None]:
        return self._publish(b, s, frame, size)

    async def _publish(self, b: Broker, s: Session, frame: F.Publish, size: int) -> None:
        b.admit(s, frame, size)
        res = b.accept(s, frame)
        b.persist(size)
        if not res.duplicate:
            b.waiters[res.id] = [s]
            assert res.frame is not None
            for cid in res.online or ():
                c = b.conns.get(cid)
                if c is not None:
                    await c.conn.send_and_wait(res.frame)  # raises for a closing socket: nobody after it
        s.send(F.published_frame(res.id, frame.ref, res.recipients))
        if res.duplicate:
            b.tell_outcome(s, res.id)


def publish_path(flaws: Collection[str], compression: bool = False) -> PublishPath:
    """The path ``--flaw`` asks for; the fix when it names none (store-first wins over unguarded-fanout)."""
    fixed = Optimistic(compression)
    if "store-first" in flaws:
        return StoreFirst(fixed)
    if "unguarded-fanout" in flaws:
        return UnguardedFanout()
    return fixed
