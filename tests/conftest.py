"""Fixtures for the whole test suite: a real PostgreSQL, fast.

``pg`` (session)
    A running :class:`chaos.postgres.PostgresServer` from ``postgres_from_env()``:
    an embedded throwaway server by default (about 0.5 s to start), one per test
    session and per xdist worker. Shared: do not stop, kill or restart it (use
    ``pg_owned`` for that). ``FASTPORT_LAB_PG_DSN`` / ``FASTPORT_LAB_PG_BIN`` pick
    another source (docs/postgres.md).

``pg_dsn`` (function)
    DSN of a fresh, empty database on ``pg``, dropped after the test (``WITH (FORCE)``,
    so connections a test leaked do not block the drop). About 40 ms per test.

``pg_owned`` (function)
    An embedded server of the test's own, started, that the test may stop, kill and
    restart (always embedded, also when ``FASTPORT_LAB_PG_DSN`` is set); closed after
    the test. About 0.5 s per test: use it only where the test needs the lifecycle.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from chaos.postgres import EmbeddedPostgres, PostgresServer, find_binaries, postgres_from_env


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mutants",
        action="store_true",
        help="the whole mutation matrix (tests/foreign) and the load runs against each mutant (tests/load)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mutants: the slow part of the mutation matrix (run with --mutants)")


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    with postgres_from_env() as server:
        yield server


@pytest.fixture
def pg_dsn(pg: PostgresServer) -> Iterator[str]:
    if pg.can_restart and not pg.is_running:
        pg.start()  # a test stopped the shared server after all: do not fail every later test
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"t_{worker}_{secrets.token_hex(4)}"
    dsn = pg.create_database(name)
    try:
        yield dsn
    finally:
        if pg.is_running:
            pg.drop_database(name)


@pytest.fixture
def pg_owned() -> Iterator[EmbeddedPostgres]:
    binaries = find_binaries(os.environ.get("FASTPORT_LAB_PG_BIN"))
    base_dir = os.environ.get("FASTPORT_LAB_PG_DIR") or None
    with EmbeddedPostgres(binaries=binaries, base_dir=base_dir) as server:
        yield server
