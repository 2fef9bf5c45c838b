"""The reference broker's PostgreSQL store (asyncpg), and a read-only view for the lab's checkers.

Two layers, as everywhere in this project:

* a pure core, :func:`plan`, that validates a batch of operations and turns it
  into a few *phases* of column arrays (one bulk statement per kind of operation
  instead of one statement per operation);
* a thin asyncpg shell, :class:`PostgresStore`, that applies each batch in one
  transaction and bounds every database call by a deadline.

Why the deadline is enforced twice: asyncpg's ``command_timeout`` covers a query,
but not pool acquire, connect-on-acquire or close, and its cancel path opens a
new connection to the (maybe black-holed) server. So every call also runs under
``asyncio.timeout``; a connection that timed out or broke is terminated (socket
closed, never reused) and the pool reconnects lazily, which is also how the store
recovers after a database restart without restarting the broker.

Ordering: ops of a batch are applied as if one by one. The planner groups them by
kind in a fixed order (subscribe, insert, attempt, dead-letter, ack, unsubscribe)
and only starts a new phase when an op would be moved before one it depends on
(for example a ``SaveMessage`` that re-uses the id of a message acked earlier in
the same batch). Every statement is idempotent, so a batch retried after a
timeout whose commit did land changes nothing.

The schema (``fastport`` schema, documented in docs/postgres.md) is versioned in
``fastport.schema_version``; ``open()`` migrates older versions and refuses newer ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from broker.store import (
    DropSubscription,
    Op,
    SaveAck,
    SaveAttempt,
    SaveDeadLetter,
    SaveMessage,
    SaveSubscription,
    Snapshot,
    StoredDelivery,
    StoredMessage,
    StoreError,
)

__all__ = [
    "SCHEMA_VERSION",
    "OutstandingDelivery",
    "Phase",
    "PostgresStore",
    "StoreRejected",
    "StoreTimeout",
    "migrate",
    "outstanding",
    "plan",
]

SCHEMA_VERSION = 2
_LOCK_KEY = 0x46505354  # 'FPST': advisory lock serialising concurrent migrations
_INT4_MAX = 2**31 - 1
_T = TypeVar("_T")


class StoreRejected(StoreError):
    """The batch itself is invalid (bad op or data the database refuses); retrying it fails again."""


class StoreTimeout(StoreError, TimeoutError):
    """A database call did not finish within the store's timeout (storage slow, hung or unreachable)."""


# --- schema -------------------------------------------------------------------

MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE fastport.subscriptions (
            client_id   text NOT NULL,
            topic       text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (client_id, topic)
        );
        CREATE TABLE fastport.messages (
            seq          bigint GENERATED ALWAYS AS IDENTITY,
            id           text PRIMARY KEY,
            topic        text NOT NULL,
            payload      json NOT NULL,
            published_at double precision NOT NULL,
            publisher    text NOT NULL,
            stored_at    timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE fastport.deliveries (
            message_id  text NOT NULL,
            client_id   text NOT NULL,
            topic       text NOT NULL,
            attempt     integer NOT NULL DEFAULT 0,
            dead        boolean NOT NULL DEFAULT false,
            dead_reason text,
            dead_at     timestamptz,
            PRIMARY KEY (message_id, client_id)
        );
        CREATE INDEX deliveries_client_topic ON fastport.deliveries (client_id, topic);
    """,
    2: """
        ALTER TABLE fastport.deliveries ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
        CREATE VIEW fastport.outstanding AS
            SELECT d.message_id, m.topic, d.client_id, d.attempt, d.dead, d.dead_reason, d.dead_at,
                   m.published_at, m.publisher, m.seq, d.updated_at
            FROM fastport.deliveries d JOIN fastport.messages m ON m.id = d.message_id;
    """,
}
assert max(MIGRATIONS) == SCHEMA_VERSION


async def migrate(conn: asyncpg.Connection, target: int = SCHEMA_VERSION) -> int:
    """Create or upgrade the schema to ``target`` in one transaction; return the version now in place."""
    if not 1 <= target <= SCHEMA_VERSION:
        raise ValueError(f"target schema version must be 1..{SCHEMA_VERSION}, got {target}")
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS fastport;"
            "CREATE TABLE IF NOT EXISTS fastport.schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM fastport.schema_version")
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {current} is newer than this broker supports "
                f"({SCHEMA_VERSION}); upgrade the broker or point it at another database"
            )
        for version in range(current + 1, target + 1):
            await conn.execute(MIGRATIONS[version])
            await conn.execute("INSERT INTO fastport.schema_version (version) VALUES ($1)", version)
        return max(current, target)


# --- pure core: validate and plan a batch ----------------------------------------


@dataclass(slots=True)
class Phase:
    """Column arrays for one round of bulk statements, applied in the field order below."""

    subscribe: dict[tuple[str, str], None] = field(default_factory=dict)  # ordered set (client, topic)
    messages: dict[str, tuple[str, str, float, str]] = field(default_factory=dict)  # id -> row, first wins
    deliveries: dict[tuple[str, str], None] = field(default_factory=dict)  # (message, client)
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)  # highest attempt wins
    dead: dict[tuple[str, str], str] = field(default_factory=dict)  # -> reason of the first dead-letter
    acks: dict[tuple[str, str], None] = field(default_factory=dict)
    unsubscribe: dict[tuple[str, str], None] = field(default_factory=dict)
    # what later buckets touch, to know when an op may not be moved before them
    _touched_messages: set[str] = field(default_factory=set)

    def conflicts(self, op: Op) -> bool:
        """Would applying ``op`` in its bucket move it before an earlier op it does not commute with?

        Attempts and acks commute with everything later in the bucket order (updating a row that
        is deleted after, or deleting it twice, ends the same). The rest is decided per key, except
        that an unsubscribe may orphan and delete any message (its topic lives in the database),
        so no insert may move before one.
        """
        if isinstance(op, SaveMessage):
            return op.message.id in self._touched_messages or bool(self.unsubscribe)
        if isinstance(op, SaveDeadLetter):  # dead letters survive an unsubscribe, pending ones do not
            return any(client == op.client_id for client, _ in self.unsubscribe)
        if isinstance(op, SaveSubscription):
            return (op.client_id, op.topic) in self.unsubscribe
        return False

    def add(self, op: Op, payload: str | None) -> None:
        if isinstance(op, SaveMessage):
            msg = op.message
            row = (msg.topic, payload or "null", float(msg.published_at), msg.publisher)
            self.messages.setdefault(msg.id, row)
            for client in op.recipients:
                self.deliveries[(msg.id, client)] = None
        elif isinstance(op, SaveAttempt):
            key = (op.message_id, op.client_id)
            self.attempts[key] = max(op.attempt, self.attempts.get(key, 0))
            self._touched_messages.add(op.message_id)
        elif isinstance(op, SaveDeadLetter):
            self.dead.setdefault((op.message_id, op.client_id), op.reason)  # the first one sticks
            self._touched_messages.add(op.message_id)
        elif isinstance(op, SaveAck):
            self.acks[(op.message_id, op.client_id)] = None
            self._touched_messages.add(op.message_id)
        elif isinstance(op, SaveSubscription):
            self.subscribe[(op.client_id, op.topic)] = None
        elif isinstance(op, DropSubscription):
            self.unsubscribe[(op.client_id, op.topic)] = None

    def cancel_acked(self) -> None:
        """Skip writing what this phase acks anyway: a delivery saved and acked in the same phase.

        The ack's DELETE still runs (the row may predate the batch), so the result equals
        applying the ops one by one, but a publish fully acked before its batch is written
        costs the database no insert at all, the common case when subscribers ack fast.
        """
        if not self.acks:
            return
        self.deliveries = {key: None for key in self.deliveries if key not in self.acks}
        needed = {message_id for message_id, _ in self.deliveries}
        self.messages = {m: row for m, row in self.messages.items() if m in needed}


def _text(value: object, what: str, index: int, op: object) -> None:
    if not isinstance(value, str):
        raise StoreRejected(f"op #{index} {type(op).__name__}: {what} must be a string, got {value!r}")
    if "\x00" in value:
        raise StoreRejected(f"op #{index} {type(op).__name__}: {what} contains a NUL character")


def _validate(op: object, index: int) -> str | None:
    """Check one op; return the JSON text of a SaveMessage payload. Raises StoreRejected."""
    name = type(op).__name__
    if isinstance(op, SaveMessage):
        msg = op.message
        if not isinstance(msg, StoredMessage):
            raise StoreRejected(f"op #{index} SaveMessage: message must be a StoredMessage, got {msg!r}")
        for what in ("id", "topic", "publisher"):
            _text(getattr(msg, what), f"message.{what}", index, op)
        if not isinstance(op.recipients, tuple | list):
            raise StoreRejected(f"op #{index} SaveMessage: recipients must be a tuple of client ids")
        for client in op.recipients:
            _text(client, "recipient", index, op)
        published = msg.published_at
        if (
            isinstance(published, bool)
            or not isinstance(published, int | float)
            or not math.isfinite(published)
        ):
            raise StoreRejected(
                f"op #{index} SaveMessage: published_at must be a finite number, got {published!r}"
            )
        try:
            return json.dumps(msg.payload, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise StoreRejected(f"op #{index} SaveMessage {msg.id!r}: payload is not JSON: {exc}") from exc
    if isinstance(op, SaveAck | SaveAttempt | SaveDeadLetter):
        _text(op.message_id, "message_id", index, op)
        _text(op.client_id, "client_id", index, op)
        if isinstance(op, SaveAttempt):
            n = op.attempt
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= _INT4_MAX:
                raise StoreRejected(
                    f"op #{index} SaveAttempt: attempt must be an int in 0..{_INT4_MAX}, got {n!r}"
                )
        if isinstance(op, SaveDeadLetter):
            _text(op.reason, "reason", index, op)
        return None
    if isinstance(op, SaveSubscription | DropSubscription):
        _text(op.client_id, "client_id", index, op)
        _text(op.topic, "topic", index, op)
        return None
    raise StoreRejected(f"op #{index}: unsupported operation {name} ({op!r})")


def plan(ops: Sequence[Op]) -> list[Phase]:
    """Validate a batch and group it into as few phases as ordering allows. Raises StoreRejected."""
    if isinstance(ops, str | bytes) or not isinstance(ops, Sequence):
        raise StoreRejected(f"apply() takes a sequence of operations, got {type(ops).__name__}")
    phases = [Phase()]
    for index, op in enumerate(ops):
        payload = _validate(op, index)
        if isinstance(op, SaveMessage) and not op.recipients:
            continue  # nobody to deliver to: storing it would leave a message no ack ever removes
        if phases[-1].conflicts(op):
            phases.append(Phase())
        phases[-1].add(op, payload)
    for phase in phases:
        phase.cancel_acked()
    return phases


# --- SQL ----------------------------------------------------------------------

_SQL_SUBSCRIBE = """
INSERT INTO fastport.subscriptions (client_id, topic)
SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"""
_SQL_MESSAGES = """
INSERT INTO fastport.messages (id, topic, payload, published_at, publisher)
SELECT i, t, p::json, a, b
FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[]) AS v(i, t, p, a, b)
ON CONFLICT (id) DO NOTHING"""
_SQL_DELIVERIES = """
INSERT INTO fastport.deliveries (message_id, client_id, topic)
SELECT v.m, v.c, msg.topic FROM unnest($1::text[], $2::text[]) AS v(m, c)
JOIN fastport.messages msg ON msg.id = v.m
ON CONFLICT DO NOTHING"""
_SQL_ATTEMPTS = """
UPDATE fastport.deliveries d SET attempt = v.a, updated_at = now()
FROM unnest($1::text[], $2::text[], $3::int4[]) AS v(m, c, a)
WHERE d.message_id = v.m AND d.client_id = v.c AND d.attempt < v.a"""
_SQL_DEAD = """
UPDATE fastport.deliveries d SET dead = true, dead_reason = v.r, dead_at = now(), updated_at = now()
FROM unnest($1::text[], $2::text[], $3::text[]) AS v(m, c, r)
WHERE d.message_id = v.m AND d.client_id = v.c AND NOT d.dead"""
_SQL_ACKS = """
DELETE FROM fastport.deliveries d USING unnest($1::text[], $2::text[]) AS v(m, c)
WHERE d.message_id = v.m AND d.client_id = v.c"""
_SQL_ORPHANS = """
DELETE FROM fastport.messages msg WHERE msg.id = ANY($1::text[])
AND NOT EXISTS (SELECT 1 FROM fastport.deliveries d WHERE d.message_id = msg.id)"""
_SQL_UNSUBSCRIBE = """
DELETE FROM fastport.subscriptions s USING unnest($1::text[], $2::text[]) AS v(c, t)
WHERE s.client_id = v.c AND s.topic = v.t"""
_SQL_DROP_DELIVERIES = """
DELETE FROM fastport.deliveries d USING unnest($1::text[], $2::text[]) AS v(c, t)
WHERE d.client_id = v.c AND d.topic = v.t AND NOT d.dead
RETURNING d.message_id"""

_SQL_LOAD_SUBSCRIPTIONS = "SELECT client_id, topic FROM fastport.subscriptions ORDER BY client_id, topic"
_SQL_LOAD_MESSAGES = """
SELECT id, topic, payload::text AS payload, published_at, publisher FROM fastport.messages msg
WHERE EXISTS (SELECT 1 FROM fastport.deliveries d WHERE d.message_id = msg.id)
ORDER BY published_at, seq"""
_SQL_LOAD_DELIVERIES = """
SELECT d.message_id, d.client_id, d.attempt, d.dead FROM fastport.deliveries d
JOIN fastport.messages msg ON msg.id = d.message_id
ORDER BY msg.published_at, msg.seq, d.client_id"""


def _columns(pairs: dict[tuple[str, str], Any]) -> tuple[list[str], list[str]]:
    return [a for a, _ in pairs], [b for _, b in pairs]


async def _apply_phase(conn: asyncpg.Connection, phase: Phase) -> None:
    if phase.subscribe:
        await conn.execute(_SQL_SUBSCRIBE, *_columns(phase.subscribe))
    if phase.messages:
        rows = phase.messages.values()
        await conn.execute(
            _SQL_MESSAGES,
            list(phase.messages), [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
            [r[3] for r in rows],
        )  # fmt: skip
    if phase.deliveries:
        await conn.execute(_SQL_DELIVERIES, *_columns(phase.deliveries))
    if phase.attempts:
        await conn.execute(_SQL_ATTEMPTS, *_columns(phase.attempts), list(phase.attempts.values()))
    if phase.dead:
        await conn.execute(_SQL_DEAD, *_columns(phase.dead), list(phase.dead.values()))
    if phase.acks:
        await conn.execute(_SQL_ACKS, *_columns(phase.acks))
        await conn.execute(_SQL_ORPHANS, list({m: None for m, _ in phase.acks}))
    if phase.unsubscribe:
        await conn.execute(_SQL_UNSUBSCRIBE, *_columns(phase.unsubscribe))
        rows = await conn.fetch(_SQL_DROP_DELIVERIES, *_columns(phase.unsubscribe))
        if rows:
            await conn.execute(_SQL_ORPHANS, list({r["message_id"]: None for r in rows}))


# --- error mapping ----------------------------------------------------------------

_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    ConnectionResetError,
    BrokenPipeError,
)


def _is_connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_LOST):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


# --- the store ----------------------------------------------------------------------


async def _no_reset(conn: asyncpg.Connection) -> None:
    """The store leaves no session state behind, so skip asyncpg's reset round trip on release."""


class PostgresStore:
    """The :class:`broker.store.Store` on PostgreSQL. Every call is bounded by ``timeout`` seconds.

    ``load()`` gets its own, longer bound (``load_timeout``) because hydration reads
    every outstanding delivery and must not fail forever on a large backlog.
    """

    durable = True

    def __init__(
        self, dsn: str, *, timeout: float = 2.0, pool_size: int = 4, load_timeout: float = 30.0
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ValueError("PostgresStore needs a DSN such as postgresql://user@127.0.0.1:5432/db")
        if not (isinstance(timeout, int | float) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(load_timeout, int | float) and load_timeout > 0 and math.isfinite(load_timeout)):
            raise ValueError(f"load_timeout must be a positive number of seconds, got {load_timeout!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        self._dsn = dsn.strip()
        self._timeout = float(timeout)
        self._load_timeout = float(load_timeout)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._apply_lock: asyncio.Lock | None = None
        self.schema_version: int | None = None

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"<PostgresStore {state} timeout={self._timeout}s pool_size={self._pool_size}>"

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = asyncpg.create_pool(
            self._dsn,
            min_size=0,  # connect lazily, under the caller's deadline
            max_size=self._pool_size,
            timeout=self._timeout,  # connect timeout
            command_timeout=self._timeout,
            max_inactive_connection_lifetime=60.0,
            reset=_no_reset,
            server_settings={"application_name": "fastport-broker"},
        )
        try:
            async with asyncio.timeout(self._timeout):
                await pool  # min_size=0: no I/O, but bounded all the same
        except (Exception, asyncio.CancelledError) as exc:
            _terminate(pool)
            if isinstance(exc, TimeoutError):
                raise StoreTimeout(f"PostgreSQL open timed out after {self._timeout:g} s") from exc
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise StoreError(f"PostgreSQL open failed: {_describe(exc)}") from exc
        self._pool = pool
        self._apply_lock = asyncio.Lock()
        try:
            self.schema_version = await self._call("open", migrate)
        except BaseException:
            self._pool = None
            _terminate(pool)
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await pool.close()
        except (Exception, asyncio.CancelledError):
            _terminate(pool)  # hung or broken: drop the sockets, never wait on the server

    async def apply(self, ops: Sequence[Op]) -> None:
        phases = plan(ops)
        if not any(_nonempty(p) for p in phases):
            return
        lock = self._apply_lock
        if lock is None:
            raise StoreError("PostgresStore is not open: call open() first")

        async def run(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                for phase in phases:
                    await _apply_phase(conn, phase)

        # Batches are applied one at a time, in call order, so concurrent callers cannot interleave
        # an orphan-message cleanup with an insert of a delivery for the same message. The wait
        # for the lock counts against the same deadline.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                await lock.acquire()
        except TimeoutError as exc:
            raise StoreTimeout(f"PostgreSQL apply timed out after {self._timeout:g} s (queued)") from exc
        try:
            remaining = max(deadline - loop.time(), 0.001)
            await self._call(f"apply of {len(ops)} ops", run, timeout=remaining, label=self._timeout)
        finally:
            lock.release()

    async def load(self) -> Snapshot:
        async def run(conn: asyncpg.Connection) -> Snapshot:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                subs = await conn.fetch(_SQL_LOAD_SUBSCRIPTIONS, timeout=self._load_timeout)
                msgs = await conn.fetch(_SQL_LOAD_MESSAGES, timeout=self._load_timeout)
                dels = await conn.fetch(_SQL_LOAD_DELIVERIES, timeout=self._load_timeout)
            return Snapshot(
                subscriptions=[(r["client_id"], r["topic"]) for r in subs],
                messages=[
                    StoredMessage(
                        r["id"], r["topic"], json.loads(r["payload"]), r["published_at"], r["publisher"]
                    )
                    for r in msgs
                ],
                deliveries=[
                    StoredDelivery(r["message_id"], r["client_id"], r["attempt"], r["dead"]) for r in dels
                ],
            )

        return await self._call("load", run, timeout=self._load_timeout)

    async def ping(self) -> None:
        async def run(conn: asyncpg.Connection) -> None:
            await conn.fetchval("SELECT 1")

        await self._call("ping", run)

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self,
        what: str,
        fn: Callable[[asyncpg.Connection], Awaitable[_T]],
        *,
        timeout: float | None = None,
        label: float | None = None,
    ) -> _T:
        """Run ``fn`` on a pooled connection within ``timeout``; retry once on a connection found dead.

        A retry is safe because every statement the store sends is idempotent; it hides the one
        failure each pooled connection would otherwise cause after a database restart.
        """
        pool = self._pool
        if pool is None:
            raise StoreError("PostgresStore is not open: call open() first")
        timeout = self._timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                for attempt in (1, 2):
                    conn = await pool.acquire()
                    try:
                        result = await fn(conn)
                    except (Exception, asyncio.CancelledError) as exc:
                        lost = _is_connection_lost(exc)
                        if lost or not isinstance(exc, asyncpg.PostgresError):
                            _terminate_connection(conn)  # timed out, cancelled or broken: never reuse
                        await pool.release(conn)
                        if lost and attempt == 1:
                            continue
                        raise
                    await pool.release(conn)
                    return result
        except TimeoutError as exc:
            raise StoreTimeout(f"PostgreSQL {what} timed out after {label or timeout:g} s") from exc
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise StoreRejected(f"PostgreSQL refused {what}: {_describe(exc)}") from exc
        except StoreError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError) as exc:
            raise StoreError(f"PostgreSQL {what} failed: {_describe(exc)}") from exc
        raise AssertionError("unreachable")


def _nonempty(phase: Phase) -> bool:
    return bool(
        phase.subscribe or phase.messages or phase.attempts or phase.dead or phase.acks or phase.unsubscribe
    )


def _terminate_connection(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # asyncpg already dropped it (connection lost)
        conn.terminate()


def _terminate(pool: asyncpg.Pool) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # never initialised: nothing to drop
        pool.terminate()


# --- read-only view for the lab's checkers ------------------------------------------


@dataclass(frozen=True, slots=True)
class OutstandingDelivery:
    """A delivery still in the store: pending (retried) or dead-lettered (kept and counted)."""

    message_id: str
    topic: str
    client_id: str
    attempt: int
    dead: bool
    dead_reason: str | None
    published_at: float
    publisher: str
    updated_at: float  # unix seconds of the last change (insert, attempt, dead-letter)


async def outstanding(
    dsn: str, *, timeout: float = 5.0, dead: bool | None = None
) -> list[OutstandingDelivery]:
    """Every delivery the reference broker's store still holds, oldest message first.

    ``dead=None`` lists pending and dead ones, ``False`` only pending, ``True`` only dead.
    Read-only and bounded by ``timeout``; raises StoreError when the database is
    unreachable or holds no FastPort schema.
    """
    where = "" if dead is None else f"WHERE dead = {'true' if dead else 'false'}"
    query = f"""
        SELECT message_id, topic, client_id, attempt, dead, dead_reason, published_at, publisher,
               extract(epoch FROM updated_at)::float8 AS updated_at
        FROM fastport.outstanding {where} ORDER BY published_at, seq, client_id"""
    conn: asyncpg.Connection | None = None
    try:
        async with asyncio.timeout(timeout):
            conn = await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout)
            async with conn.transaction(readonly=True):
                version = await conn.fetchval(
                    "SELECT CASE WHEN to_regclass('fastport.schema_version') IS NULL THEN 0"
                    " ELSE (SELECT coalesce(max(version), 0) FROM fastport.schema_version) END"
                )
                if version < 2:
                    raise StoreError(
                        "no FastPort store schema (v2+) in this database: was the reference broker run "
                        f"with --store postgres against it? (found version {version})"
                    )
                rows = await conn.fetch(query)
    except TimeoutError as exc:
        raise StoreTimeout(f"reading outstanding deliveries timed out after {timeout:g} s") from exc
    except StoreError:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError) as exc:
        raise StoreError(f"reading outstanding deliveries failed: {_describe(exc)}") from exc
    finally:
        if conn is not None:
            conn.terminate()
    return [OutstandingDelivery(**dict(r)) for r in rows]
