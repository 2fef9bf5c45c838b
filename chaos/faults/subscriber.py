"""Subscriber faults (FMEA 2): one subscriber's connection dies or stops reading; the others must not notice.

Each is aimed at one subscriber (its ``targets``), which is how the isolation
checker tells the faulty subscriber from the healthy ones.

* ``subscriber-cut``: the subscriber's TCP connection is aborted (no close
  frame) while a fan-out to it is under way; the window ends when it has
  reconnected and resubscribed. Landed when, at the cut, some but not all of the
  *burst* being fanned out had reached it.
* ``subscriber-slow``: the subscriber stops reading its socket, so the broker's
  sends to it back up; the window ends when it reads again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from chaos.faults.base import Fault, Landing, register

if TYPE_CHECKING:
    from chaos.clients import Subscriber
    from chaos.environment import Lab


@register
@dataclass
class SubscriberCut(Fault):
    name: ClassVar[str] = "subscriber-cut"
    family: ClassVar[str] = "subscriber"
    summary: ClassVar[str] = "a subscriber's TCP connection is aborted mid fan-out; it reconnects"
    sub: Subscriber
    burst: Collection[str] = ()
    resubscribe_timeout: float = 30.0
    _was_connected: bool = field(default=False, init=False, repr=False)
    _mid: bool | None = field(default=None, init=False, repr=False)

    def targets(self) -> list[str]:
        return [self.sub.client_id]

    async def start(self, lab: Lab) -> dict[str, Any]:
        got = sum(1 for i in self.burst if i in self.sub.received)
        self._mid = (0 < got < len(self.burst)) if self.burst else None
        self._was_connected = self.sub.abort()
        return {"burst": len(self.burst), "received_before_cut": got, "mid_fanout": self._mid}

    async def stop(self, lab: Lab) -> Landing:
        resubscribed = True
        try:
            await self.sub.wait_subscribed(self.sub.topics, timeout=self.resubscribe_timeout)
        except Exception:
            resubscribed = False
        return Landing(
            self._was_connected and self._mid is not False,
            {"was_connected": self._was_connected, "resubscribed": resubscribed},
        )


@register
@dataclass
class SubscriberSlow(Fault):
    name: ClassVar[str] = "subscriber-slow"
    family: ClassVar[str] = "subscriber"
    summary: ClassVar[str] = "a subscriber stops reading its socket, so the broker's sends to it back up"
    sub: Subscriber
    burst: Collection[str] = ()
    _before: set[str] = field(default_factory=set, init=False, repr=False)

    def targets(self) -> list[str]:
        return [self.sub.client_id]

    async def start(self, lab: Lab) -> dict[str, Any]:
        self._before = set(self.sub.received)
        if not self.sub.pause_reading():
            raise RuntimeError(
                f"{self.sub.client_id} is not connected (or already paused): cannot make it slow"
            )
        return {}

    async def stop(self, lab: Lab) -> Landing:
        got = sum(1 for i in self.burst if i in self.sub.received and i not in self._before)
        self.sub.resume_reading()
        backed_up = bool(self.burst) and got < len(self.burst)
        return Landing(
            backed_up if self.burst else None,
            {"burst": len(self.burst), "received_while_paused": got, "backed_up": backed_up},
        )
