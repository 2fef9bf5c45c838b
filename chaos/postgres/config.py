"""``postgres_from_env``: the ``FASTPORT_LAB_PG_*`` variables to a server (not started yet).

Misconfiguration is an error, never a guess: a DSN together with an embedded-only variable, a bad
port, an unknown fsync value or a missing directory each fail with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from chaos.postgres.base import PostgresEnvError, PostgresServer
from chaos.postgres.discovery import find_binaries
from chaos.postgres.embedded import EmbeddedPostgres
from chaos.postgres.external import ExternalPostgres

EMBEDDED_VARS = (
    "FASTPORT_LAB_PG_BIN",
    "FASTPORT_LAB_PG_PORT",
    "FASTPORT_LAB_PG_FSYNC",
    "FASTPORT_LAB_PG_DIR",
)


def postgres_from_env(env: Mapping[str, str] | None = None) -> PostgresServer:
    """The lab's PostgreSQL as configured by the environment (not started yet; use ``with``).

    ``FASTPORT_LAB_PG_DSN``  external server (URI); excludes the other variables.
    ``FASTPORT_LAB_PG_BIN``  ``pgserver`` (default) | ``auto`` | ``path`` | a bin directory.
    ``FASTPORT_LAB_PG_PORT`` fixed port for the embedded server (default: a free one).
    ``FASTPORT_LAB_PG_FSYNC`` ``on`` (default) | ``off``.
    ``FASTPORT_LAB_PG_DIR``  parent of the temp dir (default: /dev/shm when it has 1 GiB free,
    else the system temp dir).
    """
    env = os.environ if env is None else env
    dsn = env.get("FASTPORT_LAB_PG_DSN", "").strip()
    embedded_vars = [k for k in EMBEDDED_VARS if env.get(k)]
    if dsn:
        if embedded_vars:
            raise PostgresEnvError(
                f"FASTPORT_LAB_PG_DSN selects an external server; unset {', '.join(embedded_vars)} "
                "(they only apply to the embedded server)"
            )
        return ExternalPostgres(dsn)
    port_text = env.get("FASTPORT_LAB_PG_PORT", "0").strip() or "0"
    if not port_text.isdigit() or int(port_text) > 65535:
        raise PostgresEnvError(f"FASTPORT_LAB_PG_PORT={port_text!r} is not a port number (0..65535)")
    fsync_text = env.get("FASTPORT_LAB_PG_FSYNC", "on").strip().lower() or "on"
    if fsync_text not in ("on", "off", "1", "0", "true", "false"):
        raise PostgresEnvError(f"FASTPORT_LAB_PG_FSYNC={fsync_text!r}: use on or off")
    base_dir = env.get("FASTPORT_LAB_PG_DIR", "").strip() or None
    if base_dir is not None and not os.path.isdir(base_dir):
        raise PostgresEnvError(f"FASTPORT_LAB_PG_DIR={base_dir!r} is not an existing directory")
    return EmbeddedPostgres(
        binaries=find_binaries(env.get("FASTPORT_LAB_PG_BIN")),
        port=int(port_text),
        fsync=fsync_text in ("on", "1", "true"),
        base_dir=base_dir,
    )
