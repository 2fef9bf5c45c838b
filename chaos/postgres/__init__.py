"""PostgreSQL for the lab and its tests: a throwaway embedded server, PATH binaries, or a given DSN.

Three sources, chosen by :func:`postgres_from_env`:

* embedded (default): pgserver's binaries (``FASTPORT_LAB_PG_BIN=pgserver``), or
  ``auto`` (PATH / ``pg_config --bindir``, else pgserver's), ``path`` (PATH only),
  or a directory holding ``initdb`` and ``postgres``;
* external: ``FASTPORT_LAB_PG_DSN=postgresql://...``; the lab creates its own
  database there (random suffix) and drops it when done. stop/kill/restart raise
  :class:`PostgresUnsupported` because the lab does not own that server.

One module per concern:

* :mod:`~chaos.postgres.base`: errors, the :class:`PostgresServer` interface, admin SQL;
* :mod:`~chaos.postgres.discovery`: which ``initdb`` and ``postgres`` to run;
* :mod:`~chaos.postgres.embedded`: :class:`EmbeddedPostgres`, the server the lab owns;
* :mod:`~chaos.postgres.watchdog`: reclaims a killed server (processes, SysV segment, temp dir),
  also as a child process that outlives a SIGKILLed lab;
* :mod:`~chaos.postgres.external`: :class:`ExternalPostgres`, a DSN the lab only borrows;
* :mod:`~chaos.postgres.config`: :func:`postgres_from_env`.
"""

from chaos.postgres.base import (
    HOST,
    SUPERUSER,
    PostgresEnvError,
    PostgresPortInUse,
    PostgresServer,
    PostgresUnsupported,
)
from chaos.postgres.config import postgres_from_env
from chaos.postgres.discovery import PostgresBinaries, find_binaries
from chaos.postgres.embedded import _TEMPLATES as _TEMPLATES  # initdb templates; tests look inside
from chaos.postgres.embedded import (
    EmbeddedPostgres,
    alive,
    default_base_dir,
    server_processes,
)
from chaos.postgres.external import ExternalPostgres

__all__ = [
    "HOST",
    "SUPERUSER",
    "EmbeddedPostgres",
    "ExternalPostgres",
    "PostgresBinaries",
    "PostgresEnvError",
    "PostgresPortInUse",
    "PostgresServer",
    "PostgresUnsupported",
    "find_binaries",
    "alive",
    "default_base_dir",
    "postgres_from_env",
    "server_processes",
]
