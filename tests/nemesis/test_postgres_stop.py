"""``postgres-stop`` lands only when PostgreSQL stopped *and* accepts connections again after the restart."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from chaos.faults import PostgresStop
from chaos.postgres import EmbeddedPostgres

pytestmark = pytest.mark.integration


class NoRestart:
    """A real PostgreSQL whose ``start()`` comes back without starting it: a restart that failed quietly."""

    def __init__(self, pg: EmbeddedPostgres) -> None:
        self.pg = pg
        self.port = pg.port

    def stop(self) -> None:
        self.pg.stop()

    def start(self) -> None:
        pass

    def dsn(self) -> str:
        return self.pg.dsn()

    @property
    def is_running(self) -> bool:
        return self.pg.is_running


def _stop_and_heal(pg) -> tuple[bool | None, dict]:
    lab = SimpleNamespace(session=SimpleNamespace(pg=pg), dsn_direct=pg.dsn())  # what PostgresStop uses

    async def go():
        fault = PostgresStop()
        began = await fault.start(lab)
        landing = await fault.stop(lab)
        return landing.effective, {**began, **landing.evidence}

    return asyncio.run(asyncio.wait_for(go(), 60))


def test_postgres_stop_lands_when_postgres_is_back(pg_owned: EmbeddedPostgres) -> None:
    effective, ev = _stop_and_heal(pg_owned)
    assert effective is True, ev
    assert ev["stopped"] and not ev["probe"]["ok"] and ev["restarted"] and ev["probe_after"]["ok"]
    assert "why" not in ev


def test_postgres_stop_has_not_landed_when_postgres_does_not_come_back(pg_owned: EmbeddedPostgres) -> None:
    effective, ev = _stop_and_heal(NoRestart(pg_owned))
    assert effective is False, ev
    assert ev["stopped"] and ev["restarted"] is False and ev["probe_after"]["ok"] is False
    assert "did not accept connections again after the restart" in ev["why"]
    assert ev["probe_after"]["error"] in ev["why"]
