"""Where the embedded server's ``initdb`` and ``postgres`` come from (``FASTPORT_LAB_PG_BIN``).

The default is the binaries the ``pgserver`` wheel ships, so the lab needs no system install;
``auto`` and ``path`` prefer a PostgreSQL on PATH (or ``pg_config --bindir``), and a directory
names the binaries outright.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from chaos.postgres.base import PostgresEnvError


class PostgresBinaries:
    """Where ``initdb`` and ``postgres`` live, and which source they came from."""

    def __init__(self, bindir: Path, source: str) -> None:
        self.bindir = Path(bindir)
        self.source = source
        self.initdb = self.bindir / "initdb"
        self.postgres = self.bindir / "postgres"
        missing = [p.name for p in (self.initdb, self.postgres) if not os.access(p, os.X_OK)]
        if missing:
            raise PostgresEnvError(
                f"{' and '.join(missing)} not found or not executable in {self.bindir} ({source})"
            )

    def __repr__(self) -> str:
        return f"PostgresBinaries({str(self.bindir)!r}, source={self.source!r})"


def pgserver_bindir() -> Path:
    """pgserver's POSTGRES_BIN_PATH, found without importing pgserver (its import is slow and noisy)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresEnvError(
            "the pgserver package is not installed (pip install 'pgserver>=0.1.4,<0.2'), "
            "or set FASTPORT_LAB_PG_BIN=path to use PostgreSQL from PATH"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def path_bindir() -> Path | None:
    """The bin directory of the PostgreSQL on PATH: where ``initdb`` is, else ``pg_config --bindir``."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    return None


def find_binaries(spec: str | None = None) -> PostgresBinaries:
    """Resolve ``FASTPORT_LAB_PG_BIN``: ``pgserver`` (default), ``auto``, ``path`` or a directory."""
    spec = (spec or "pgserver").strip()
    if spec == "pgserver":
        return PostgresBinaries(pgserver_bindir(), "pgserver")
    if spec in ("auto", "path"):
        bindir = path_bindir()
        if bindir is not None:
            return PostgresBinaries(bindir, "PATH")
        if spec == "path":
            raise PostgresEnvError(
                "FASTPORT_LAB_PG_BIN=path: no initdb on PATH and no usable `pg_config --bindir`; "
                "install PostgreSQL server binaries or use FASTPORT_LAB_PG_BIN=pgserver"
            )
        return PostgresBinaries(pgserver_bindir(), "pgserver")
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise PostgresEnvError(
            f"FASTPORT_LAB_PG_BIN={spec!r} is neither 'pgserver', 'auto', 'path' nor an existing directory"
        )
    return PostgresBinaries(path, str(path))
