"""A PostgreSQL the lab does not own, given as ``FASTPORT_LAB_PG_DSN``.

The lab only creates its own database there (random suffix, so parallel runs never share one) and
drops it when done. It cannot stop, kill or restart that server, so those calls raise
:class:`PostgresUnsupported` and scenarios check ``can_restart`` to skip.
"""

from __future__ import annotations

import atexit
import secrets
from urllib.parse import urlsplit

import asyncpg

from chaos.postgres.base import (
    PostgresEnvError,
    PostgresServer,
    PostgresUnsupported,
    check_db_name,
    probe,
    run_sync,
    with_database,
)


class ExternalPostgres(PostgresServer):
    """A server the lab does not own: it only creates and drops its own databases there."""

    can_restart = False

    def __init__(self, dsn: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(dsn.strip()) if isinstance(dsn, str) else None
        if parts is None or parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise PostgresEnvError(
                "FASTPORT_LAB_PG_DSN must be a URI like postgresql://user:password@host:5432/postgres "
                f"(got {dsn!r})"
            )
        try:
            self.port = parts.port or 5432
        except ValueError as exc:
            raise PostgresEnvError(f"FASTPORT_LAB_PG_DSN has a bad port: {exc}") from exc
        self.host = parts.hostname
        self._admin = dsn.strip()
        self._timeout = timeout
        self.database = f"fastport_lab_{secrets.token_hex(4)}"
        self._created = False
        self._closed = False

    @property
    def is_running(self) -> bool:
        return self._created and not self._closed

    def dsn(self, database: str | None = None) -> str:
        return with_database(self._admin, check_db_name(database or self.database))

    def _admin_dsn(self) -> str:
        return self._admin

    def start(self) -> ExternalPostgres:
        if self._closed:
            raise PostgresEnvError("this ExternalPostgres was closed; create a new one")
        if self._created:
            return self
        try:
            run_sync(lambda: probe(self._admin, self._timeout), self._timeout + 1)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise PostgresEnvError(
                f"cannot connect to FASTPORT_LAB_PG_DSN server {self.host}:{self.port}: {exc}"
            ) from exc
        self.create_database(self.database, timeout=self._timeout)
        self._created = True
        atexit.register(self.close)
        return self

    def _unsupported(self, what: str) -> PostgresUnsupported:
        return PostgresUnsupported(
            f"{what}() needs a PostgreSQL the lab owns; FASTPORT_LAB_PG_DSN points at an external server "
            f"({self.host}:{self.port}). Unset it to use the embedded server."
        )

    def stop(self, timeout: float = 10.0) -> None:
        raise self._unsupported("stop")

    def kill(self) -> None:
        raise self._unsupported("kill")

    def restart(self) -> None:
        raise self._unsupported("restart")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._created:
            self.drop_database(self.database, timeout=self._timeout)

    def __enter__(self) -> ExternalPostgres:
        super().__enter__()
        return self

    def __repr__(self) -> str:
        return f"<ExternalPostgres {self.host}:{self.port} database={self.database}>"
