"""The two stores: in memory (not durable) and PostgreSQL (asyncpg), behind one three-call interface.

A write is a :class:`Plan` applied as one transaction of idempotent statements
(insert-or-ignore, delete, monotonic update), so a batch retried after an
ambiguous failure, or cut by SIGKILL, leaves the tables consistent. The schema is
this broker's own: ``foreign_message`` (one row per message still owed to
someone or dead-lettered), ``foreign_owed`` (one row per outstanding or dead
(message, client) pair) and ``foreign_subscription``. First sends are not
written; attempts are, from the first retry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.foreign.mutants import Bugs

log = logging.getLogger("foreign.store")

Pair = tuple[str, str]  # (client_id, message_id) or (client_id, topic)


@dataclass
class Plan:
    messages: list[tuple[str, str, str, float]] = field(default_factory=list)  # id, topic, body, time
    owed: list[tuple[str, str, int, bool]] = field(default_factory=list)  # client, message, attempts, dead
    attempts: list[tuple[str, str, int]] = field(default_factory=list)
    dead: list[Pair] = field(default_factory=list)
    acked: list[Pair] = field(default_factory=list)
    subscribe: list[Pair] = field(default_factory=list)
    unsubscribe: list[Pair] = field(default_factory=list)  # applied last: it also drops owed rows

    def __bool__(self) -> bool:
        return any(vars(self).values())


@dataclass
class Snapshot:
    subscriptions: list[Pair]
    rows: list[tuple[str, str, str, float, str, int]]  # id, topic, body, published_at, client, attempts
    dead: int


class Store(Protocol):
    name: str
    durable: bool

    async def open(self) -> None: ...
    async def load(self) -> Snapshot: ...
    async def apply(self, plan: Plan, timeout: float) -> None: ...
    async def ping(self, timeout: float) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    """Tables as dicts; lives and dies with the process (PROTOCOL.md's ``memory`` store)."""

    name, durable = "memory", False

    def __init__(self) -> None:
        self.messages: dict[str, tuple[str, str, float]] = {}
        self.owed: dict[Pair, list[Any]] = {}
        self.subscriptions: set[Pair] = set()

    async def open(self) -> None:
        return None

    async def load(self) -> Snapshot:
        return Snapshot([], [], 0)

    async def apply(self, plan: Plan, timeout: float) -> None:
        for mid, topic, body, at in plan.messages:
            self.messages.setdefault(mid, (topic, body, at))
        for cid, mid, n, dead in plan.owed:
            self.owed.setdefault((cid, mid), [n, dead])
        for cid, mid, n in plan.attempts:
            if (row := self.owed.get((cid, mid))) is not None:
                row[0] = max(row[0], n)
        for pair in plan.dead:
            if (row := self.owed.get(pair)) is not None:
                row[1] = True
        for pair in plan.acked:
            self.owed.pop(pair, None)
        self.subscriptions.update(plan.subscribe)
        for cid, topic in plan.unsubscribe:
            self.subscriptions.discard((cid, topic))
            for key in [k for k, v in self.owed.items() if k[0] == cid and not v[1]]:
                if self.messages.get(key[1], ("",))[0] == topic:
                    del self.owed[key]
        if plan.acked or plan.unsubscribe:
            kept = {mid for _, mid in self.owed}
            for mid in [m for m in self.messages if m not in kept]:
                del self.messages[mid]

    async def ping(self, timeout: float) -> None:
        return None

    async def close(self) -> None:
        return None


SCHEMA = """
CREATE TABLE IF NOT EXISTS foreign_message (
    id text PRIMARY KEY,
    topic text NOT NULL,
    body text NOT NULL,
    published_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS foreign_owed (
    client_id text NOT NULL,
    message_id text NOT NULL REFERENCES foreign_message (id) ON DELETE CASCADE,
    attempts integer NOT NULL DEFAULT 0,
    dead boolean NOT NULL DEFAULT false,
    PRIMARY KEY (client_id, message_id)
);
CREATE INDEX IF NOT EXISTS foreign_owed_message ON foreign_owed (message_id);
CREATE TABLE IF NOT EXISTS foreign_subscription (
    client_id text NOT NULL,
    topic text NOT NULL,
    PRIMARY KEY (client_id, topic)
);
"""

_SQL = {
    "messages": "INSERT INTO foreign_message SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
    "$4::float8[]) ON CONFLICT (id) DO NOTHING",
    "owed": "INSERT INTO foreign_owed SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bool[]) "
    "ON CONFLICT (client_id, message_id) DO NOTHING",
    "attempts": "UPDATE foreign_owed o SET attempts = GREATEST(o.attempts, u.n) FROM unnest($1::text[], "
    "$2::text[], $3::int[]) AS u(c, m, n) WHERE o.client_id = u.c AND o.message_id = u.m",
    "dead": "UPDATE foreign_owed o SET dead = true FROM unnest($1::text[], $2::text[]) AS u(c, m) "
    "WHERE o.client_id = u.c AND o.message_id = u.m",
    "acked": "DELETE FROM foreign_owed o USING unnest($1::text[], $2::text[]) AS u(c, m) "
    "WHERE o.client_id = u.c AND o.message_id = u.m",
    "subscribe": "INSERT INTO foreign_subscription SELECT * FROM unnest($1::text[], $2::text[]) "
    "ON CONFLICT DO NOTHING",
    "unsubscribe": "DELETE FROM foreign_subscription s USING unnest($1::text[], $2::text[]) AS u(c, t) "
    "WHERE s.client_id = u.c AND s.topic = u.t",
    "unsubscribe_owed": "DELETE FROM foreign_owed o USING foreign_message m, unnest($1::text[], "
    "$2::text[]) AS u(c, t) WHERE o.message_id = m.id AND o.client_id = u.c AND m.topic = u.t AND NOT o.dead",
}
_ORPHANS = (
    "DELETE FROM foreign_message m WHERE m.id = ANY($1::text[]) "
    "AND NOT EXISTS (SELECT 1 FROM foreign_owed o WHERE o.message_id = m.id)"
)


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)]


class PostgresStore:
    """One connection of its own, used by one call at a time, terminated (never reused) after any
    error or deadline."""

    name, durable = "postgres", True

    def __init__(self, dsn: str, bugs: Bugs, connect_timeout: float = 5.0) -> None:
        self.dsn, self.bugs, self.connect_timeout = dsn, bugs, connect_timeout
        self._conn: Any = None
        self._lock: asyncio.Lock | None = None

    async def _connection(self) -> Any:
        import asyncpg  # only a postgres broker needs the driver

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # no network wait: the path may be black-holed

    async def _bounded(self, work: Any, timeout: float) -> Any:
        """Run *work* with a hard deadline; on a hang the connection is terminated, not awaited."""
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:  # asyncpg allows one operation per connection at a time
            task = asyncio.ensure_future(work)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                self._drop()
                task.cancel()
                raise TimeoutError(f"storage did not answer within {timeout:g}s")
            try:
                return task.result()
            except Exception:
                self._drop()
                raise

    async def open(self) -> None:
        async def create() -> None:
            conn = await self._connection()
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(20508)")  # two starts never race DDL
                await conn.execute(SCHEMA)

        await self._bounded(create(), self.connect_timeout + 5)

    async def load(self) -> Snapshot:
        where = "NOT o.dead AND o.attempts > 0" if self.bugs.on("hydrate-attempted-only") else "NOT o.dead"

        async def read() -> Snapshot:
            conn = await self._connection()
            subs = await conn.fetch("SELECT client_id, topic FROM foreign_subscription ORDER BY 1, 2")
            rows = await conn.fetch(
                "SELECT m.id, m.topic, m.body, m.published_at, o.client_id, o.attempts FROM foreign_owed o "
                f"JOIN foreign_message m ON m.id = o.message_id WHERE {where} "
                "ORDER BY m.published_at, m.id, o.client_id"
            )
            dead = await conn.fetchval("SELECT count(*) FROM foreign_owed WHERE dead")
            return Snapshot([tuple(r) for r in subs], [tuple(r) for r in rows], dead)

        return await self._bounded(read(), self.connect_timeout + 30)

    async def apply(self, plan: Plan, timeout: float) -> None:
        async def write() -> None:
            conn = await self._connection()
            async with conn.transaction():
                for name in ("messages", "owed", "attempts", "dead", "acked", "subscribe"):
                    rows = getattr(plan, name)
                    if rows:
                        await conn.execute(_SQL[name], *_columns(rows))
                if plan.unsubscribe:
                    cols = _columns(plan.unsubscribe)
                    await conn.execute(_SQL["unsubscribe"], *cols)
                    await conn.execute(_SQL["unsubscribe_owed"], *cols)
                    await conn.execute(
                        "DELETE FROM foreign_message m WHERE m.topic = ANY($1::text[]) AND NOT EXISTS "
                        "(SELECT 1 FROM foreign_owed o WHERE o.message_id = m.id)",
                        cols[1],
                    )
                if plan.acked:
                    await conn.execute(_ORPHANS, sorted({mid for _, mid in plan.acked}))

        await self._bounded(write(), timeout)

    async def ping(self, timeout: float) -> None:
        async def select() -> None:
            await (await self._connection()).fetchval("SELECT 1")

        await self._bounded(select(), timeout)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)
            if not conn.is_closed():
                conn.terminate()
