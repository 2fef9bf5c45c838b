"""Hydration strategies: what start-up takes from a durable store (FMEA 3), and the flaw that takes nothing.

The broker holds one :class:`Hydration`, chosen from ``--flaw`` by
:func:`hydration`, so start-up has no flaw branch: ``load`` runs while the
store is being opened (and is retried with it), ``apply`` rebuilds the
delivery core from what was loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Protocol

from .delivery import DeliveryCore
from .logs import event
from .store import Snapshot, Store


class Hydration(Protocol):
    async def load(self, store: Store) -> Snapshot | None:
        """What to rebuild from, read from the freshly opened store."""

    def apply(self, core: DeliveryCore, snapshot: Snapshot | None) -> None:
        """Rebuild subscriptions and outstanding deliveries in ``core``."""


class Hydrate:
    """The fix: load every subscription and outstanding delivery; their retries resume on reconnect."""

    async def load(self, store: Store) -> Snapshot | None:
        return await store.load() if store.durable else None

    def apply(self, core: DeliveryCore, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            return
        core.hydrate(snapshot)
        event(
            "hydrated",
            subscriptions=len(snapshot.subscriptions),
            messages=len(core.messages),
            deliveries=core.stats.hydrated_deliveries,
            dead=core.stats.dead_loaded,
        )


class NoHydrate:
    """``--flaw no-hydrate``, FMEA 3 as built: nothing is loaded, persisted deliveries become zombies."""

    async def load(self, store: Store) -> Snapshot | None:
        return None

    def apply(self, core: DeliveryCore, snapshot: Snapshot | None) -> None:
        event("hydration_skipped", logging.WARNING, flaw="no-hydrate")


def hydration(flaws: Collection[str]) -> Hydration:
    return NoHydrate() if "no-hydrate" in flaws else Hydrate()
