"""Issue 11: a PostgreSQL the lab kills, stops, restarts or closes leaves nothing behind.

No process, no SysV segment, no /dev/shm/PostgreSQL.* file, and at close no temp dir. Each
check is about the server's own resources (tests/footprint.py), observed while it ran, so
other servers on the machine can neither fail nor pass these tests; and each test first shows
the resource exists, so it cannot pass because there was nothing to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from chaos.postgres import EmbeddedPostgres, PostgresEnvError
from chaos.postgres.watchdog import wait_gone
from tests.footprint import Footprint

pytestmark = pytest.mark.integration


def query(dsn: str, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def observe(pg: EmbeddedPostgres, fp: Footprint) -> set[Path]:
    """Record the running server and check what it holds: a SysV segment of its postmaster, named in
    postmaster.pid, and dynamic shared memory mapped from its data dir, nowhere else."""
    assert pg.data_dir is not None and pg.pid is not None
    now = fp.observe(pg.processes())
    shmid = int((pg.data_dir / "postmaster.pid").read_text().splitlines()[6].split()[1])
    assert fp.segments.get(shmid) == pg.pid, "the postmaster's SysV segment was not found"
    assert now, "no dynamic shared memory mapped: nothing to check"
    assert all(p.parent == pg.data_dir / "pg_dynshmem" for p in now), now
    return now


@pytest.fixture
def owned() -> Iterator[tuple[EmbeddedPostgres, Footprint]]:
    """An embedded server and its footprint; whatever of it a failing test left is removed."""
    pg = EmbeddedPostgres().start()
    assert pg.base_dir is not None and pg.data_dir is not None
    fp = Footprint(pg.base_dir, pg.data_dir)
    try:
        yield pg, fp
    finally:
        try:
            pg.close()
        finally:
            fp.clean_up()


def test_dynamic_shared_memory_lives_in_the_data_dir(owned: tuple[EmbeddedPostgres, Footprint]) -> None:
    pg, fp = owned
    assert query(pg.dsn(), "SHOW dynamic_shared_memory_type")[0][0] == "mmap"
    observe(pg, fp)
    with pytest.raises(PostgresEnvError, match="dynamic_shared_memory_type"):
        EmbeddedPostgres(settings={"dynamic_shared_memory_type": "posix"})


def test_kill_leaves_nothing_outside_the_temp_dir(owned: tuple[EmbeddedPostgres, Footprint]) -> None:
    pg, fp = owned
    observe(pg, fp)
    pg.kill()
    assert fp.leftovers() == []


def test_kill_reclaims_a_backend_orphaned_before_the_kill(owned: tuple[EmbeddedPostgres, Footprint]) -> None:
    """A backend no longer the postmaster's child (forked as the server was killed, reparented) still
    holds the SysV segment: kill() finds it by its mapping and kills it, so nothing is left."""
    pg, fp = owned
    observe(pg, fp)
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(pg.dsn(), timeout=10))
    backend = None
    try:
        backend = loop.run_until_complete(conn.fetchval("SELECT pg_backend_pid()"))
        os.kill(backend, signal.SIGSTOP)  # stays attached, and cannot notice its postmaster died
        assert pg.pid is not None
        os.kill(pg.pid, signal.SIGKILL)  # the backend is reparented: no longer a descendant
        pg.kill()
        assert fp.leftovers() == []
        assert wait_gone([backend], 5.0) == []  # killed (a zombie until init reaps it counts as gone)
    finally:
        if backend is not None:  # a stopped orphan never exits by itself: not even when this test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(backend, signal.SIGKILL)
        conn.terminate()
        loop.close()


def test_stop_start_kill_restart_cycles_leave_nothing(owned: tuple[EmbeddedPostgres, Footprint]) -> None:
    """Each death is checked; each start after a kill also clears the dead server's segment files."""
    pg, fp = owned
    mapped = observe(pg, fp)
    for step in ("kill", "stop", "restart", "kill", "kill", "restart", "stop"):
        if step == "restart":
            pg.restart()
        else:
            getattr(pg, step)()
            assert fp.leftovers() == [], step
            pg.start()
        stale = {p for p in mapped if p.exists()}
        mapped = observe(pg, fp)
        assert stale <= mapped, f"segment files of the dead server kept after {step}: {stale - mapped}"
    assert len(fp.segments) == 8  # one per postmaster: each one was seen, and each is gone now
    pg.close()
    assert fp.everything_left() == []


def test_close_leaves_nothing(owned: tuple[EmbeddedPostgres, Footprint]) -> None:
    pg, fp = owned
    observe(pg, fp)
    pg.close()
    assert fp.everything_left() == []


def test_close_after_kill_leaves_nothing(owned: tuple[EmbeddedPostgres, Footprint]) -> None:
    pg, fp = owned
    observe(pg, fp)
    pg.kill()
    pg.close()
    assert fp.everything_left() == []


def exited(pid: int, timeout: float = 20.0) -> None:
    """Wait for ``pid`` to exit: its pidfd turns readable (an event, no polling)."""
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], timeout)[0], f"process {pid} still running after {timeout} s"
    finally:
        os.close(fd)


def test_postmaster_killed_from_outside_leaves_nothing(owned: tuple[EmbeddedPostgres, Footprint]) -> None:
    """Not through kill(): the postmaster dies alone, its children exit on their own a bit later."""
    pg, fp = owned
    for then in ("start", "close"):
        observe(pg, fp)
        pid = pg.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        exited(pid)
        getattr(pg, then)()  # start() and close() both reap it and release its segment
    assert fp.everything_left() == []
