"""What every PostgreSQL source shares: the errors, the :class:`PostgresServer` interface, admin SQL.

The lab talks to an embedded server and to an external one (a DSN) through the same interface, so
suites and fixtures never branch on where the database came from, only on ``can_restart``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

HOST = "127.0.0.1"
SUPERUSER = "postgres"
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_T = TypeVar("_T")


class PostgresEnvError(RuntimeError):
    """The lab could not provide PostgreSQL; the message says why and what to change."""


class PostgresPortInUse(PostgresEnvError):
    """The TCP port PostgreSQL must listen on is taken by another process."""


class PostgresUnsupported(PostgresEnvError):
    """The operation needs a server the lab owns (stop/kill/restart on an external DSN)."""


def run_sync(make: Callable[[], Awaitable[_T]], timeout: float) -> _T:
    """Run a coroutine to completion from sync code, also when called inside an event loop.

    The server API is blocking (tests and the nemesis call it from threads and plain functions);
    asyncpg is async-only, so a running loop in this thread gets the work done on a helper thread.
    """

    async def bounded() -> _T:
        return await asyncio.wait_for(make(), timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(bounded())
        except BaseException as exc:  # handed to the calling thread
            box["error"] = exc

    thread = threading.Thread(target=runner, name="fastport-pg-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_db_name(name: str) -> str:
    """Names are interpolated into SQL (CREATE DATABASE takes no parameters): allow only safe ones."""
    if not isinstance(name, str) or not _DB_NAME.fullmatch(name):
        raise ValueError(f"bad database name {name!r}: use 1..63 of [A-Za-z0-9_], not starting with a digit")
    return name


def with_database(dsn: str, database: str) -> str:
    """``dsn`` with its path (the database) replaced."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def admin(dsn: str, statement: str, timeout: float) -> None:
    """Run one statement on a connection of its own (CREATE/DROP DATABASE cannot run in a transaction)."""
    conn = await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout)
    try:
        await conn.execute(statement)
    finally:
        conn.terminate()


async def probe(dsn: str, timeout: float) -> None:
    """A real round trip: a port that accepts TCP is not yet a server that answers queries."""
    conn = await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()


_ADMIN_ERRORS = (TimeoutError, asyncpg.PostgresError, OSError, asyncpg.InterfaceError)


class PostgresServer:
    """What the lab needs from a PostgreSQL, wherever it comes from."""

    host: str
    port: int
    can_restart: bool = False  # stop/kill/restart supported (embedded only)

    def start(self) -> PostgresServer:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        raise NotImplementedError

    @property
    def is_running(self) -> bool:
        raise NotImplementedError

    def dsn(self, database: str | None = None) -> str:
        raise NotImplementedError

    def _admin_dsn(self) -> str:
        raise NotImplementedError

    def create_database(self, name: str, *, timeout: float = 30.0) -> str:
        """Create database ``name`` (fails if it exists) and return its DSN."""
        check_db_name(name)
        try:
            run_sync(lambda: admin(self._admin_dsn(), f'CREATE DATABASE "{name}"', timeout), timeout + 1)
        except _ADMIN_ERRORS as exc:
            raise PostgresEnvError(
                f"cannot create database {name!r} on {self.host}:{self.port}: {exc}"
            ) from exc
        return self.dsn(name)

    def drop_database(self, name: str, *, timeout: float = 30.0) -> None:
        """Drop database ``name`` if it exists, disconnecting its clients first (WITH (FORCE))."""
        check_db_name(name)
        try:
            run_sync(
                lambda: admin(self._admin_dsn(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout),
                timeout + 1,
            )
        except _ADMIN_ERRORS as exc:
            raise PostgresEnvError(
                f"cannot drop database {name!r} on {self.host}:{self.port}: {exc}"
            ) from exc

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
