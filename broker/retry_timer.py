"""The one timer behind every retry and TTL expiry: it fires at the delivery core's next deadline.

The core keeps the schedule (a heap of wall-clock deadlines) and this shell
only makes sure a single loop timer is set no later than the earliest one, to
10 ms: re-arming on every publish would cost a timer handle per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .delivery import DeliveryCore


class RetryTimer:
    def __init__(
        self,
        core: DeliveryCore,
        clock: Callable[[], float],
        on_due: Callable[[list[tuple[str, bytes]]], None],
    ) -> None:
        self.core = core
        self.clock = clock
        self.on_due = on_due  # gets the (client_id, frame) pairs core.tick() says to send now
        self._handle: asyncio.TimerHandle | None = None
        self._at = float("inf")

    def arm(self) -> None:
        """Make sure the timer fires by the core's next deadline (10 ms granularity)."""
        deadline = self.core.next_deadline()
        if deadline is None or deadline >= self._at - 0.01:
            return
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._at = deadline
        self._handle = loop.call_at(loop.time() + max(0.0, deadline - self.clock()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._at = float("inf")
        try:
            self.on_due(self.core.tick())
        except Exception:
            logging.getLogger("broker").exception("retry timer failed")
        finally:
            self.arm()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = float("inf")
