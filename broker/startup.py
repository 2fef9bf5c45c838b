"""Opening the store at start-up: which store, and retrying it until ``--startup-timeout``.

A broker that starts while PostgreSQL is still coming up should wait for it
rather than exit at once, but not forever: past the deadline it exits 1 with
the reason, and the launcher sees a clear failure instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .config import Config
from .hydration import Hydration
from .logs import event
from .store import Snapshot, Store, StoreError


class StartupError(Exception):
    """A clear, fatal start-up problem (bad auth file, store unavailable...)."""


def make_store(cfg: Config) -> Store:
    if cfg.store == "memory":
        from .store_memory import MemoryStore

        return MemoryStore()
    try:
        from .store_postgres import PostgresStore  # lazily: memory users need no driver
    except ImportError as exc:
        raise StartupError(f"--store postgres is unavailable: {exc}") from None
    return PostgresStore(cfg.dsn, timeout=cfg.db_timeout, pool_size=cfg.db_pool)


async def open_store(store: Store, cfg: Config, hydration: Hydration) -> Snapshot | None:
    """Open ``store`` and load what ``hydration`` wants from it, retrying with backoff until the deadline."""
    deadline = time.monotonic() + cfg.startup_timeout
    delay = 0.2
    while True:
        try:
            async with asyncio.timeout(cfg.db_timeout * 2 + 1):
                await store.open()
                return await hydration.load(store)
        except (StoreError, TimeoutError, OSError) as exc:
            if time.monotonic() + delay > deadline:
                reason = str(exc) or type(exc).__name__
                raise StartupError(f"cannot open the {cfg.store} store: {reason}") from None
            event("store_unavailable_retrying", logging.WARNING, error=str(exc) or type(exc).__name__)
            with contextlib.suppress(Exception):
                await store.close()
            await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
            delay = min(delay * 2, 2.0)
