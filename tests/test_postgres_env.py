"""chaos.postgres: the lab's PostgreSQL starts, stops, dies, comes back on the same port, never leaks."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest

from chaos.postgres import (
    EmbeddedPostgres,
    ExternalPostgres,
    PostgresEnvError,
    PostgresPortInUse,
    PostgresUnsupported,
    alive,
    find_binaries,
    postgres_from_env,
)
from tests.footprint import Footprint
from tests.sigint import sigint_default

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def postgres_processes_for(data_dir: Path) -> list[str]:
    """Live (non-zombie) processes whose command line names this data dir: must be none after close."""
    cmd = ["ps", "-ww", "-eo", "stat=,args="]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(data_dir) in line and not line.lstrip().startswith("Z")]


# --- lifecycle ------------------------------------------------------------------


def test_start_query_stop_start_same_port(pg_owned: EmbeddedPostgres) -> None:
    pg = pg_owned
    port = pg.port
    assert pg.is_running and port > 0
    query(pg.dsn(), "CREATE TABLE t (a int)")
    query(pg.dsn(), "INSERT INTO t VALUES (1), (2)")
    pg.stop()
    assert not pg.is_running and refused(port)
    pg.start()
    assert pg.port == port and pg.is_running
    assert [r["a"] for r in query(pg.dsn(), "SELECT a FROM t ORDER BY a")] == [1, 2]
    pg.restart()
    assert pg.port == port
    assert query(pg.dsn(), "SELECT count(*) AS n FROM t")[0]["n"] == 2


def test_kill_then_start_keeps_committed_rows(pg_owned: EmbeddedPostgres) -> None:
    pg = pg_owned
    port, pid, pids = pg.port, pg.pid, pg.processes()
    assert pid is not None and len(pids) > 3 and pids[0] == pid
    query(pg.dsn(), "CREATE TABLE t (a int)")
    for i in range(50):  # 50 separate commits: each must survive the SIGKILL
        query(pg.dsn(), "INSERT INTO t VALUES ($1)", i)
    pg.kill()
    assert not pg.is_running and refused(port)
    assert alive(pids) == []
    pg.start()
    assert pg.port == port and pg.pid != pid
    assert query(pg.dsn(), "SELECT count(*) AS n FROM t")[0]["n"] == 50


def test_kill_with_open_transaction_rolls_it_back(pg_owned: EmbeddedPostgres) -> None:
    pg = pg_owned
    query(pg.dsn(), "CREATE TABLE t (a int)")

    async def leave_open() -> asyncpg.Connection:
        conn = await asyncpg.connect(pg.dsn())
        await conn.execute("BEGIN; INSERT INTO t VALUES (1)")
        return conn

    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(leave_open())
        pg.kill()
        conn.terminate()
    finally:
        loop.close()
    pg.start()
    assert query(pg.dsn(), "SELECT count(*) AS n FROM t")[0]["n"] == 0


def test_close_leaves_no_process_and_no_temp_dir() -> None:
    pg = EmbeddedPostgres()
    with pg:
        query(pg.dsn(), "SELECT 1")
        base, data, pids = pg.base_dir, pg.data_dir, pg.processes()
        assert base is not None and data is not None and len(pids) > 3
        assert postgres_processes_for(data)
    assert not base.exists()
    assert postgres_processes_for(data) == []
    assert alive(pids) == []
    with pytest.raises(PostgresEnvError, match="closed"):
        pg.start()


def test_close_on_exception_inside_with_block() -> None:
    pg = EmbeddedPostgres()
    with pytest.raises(RuntimeError, match="boom"), pg:
        base = pg.base_dir
        raise RuntimeError("boom")
    assert base is not None and not base.exists() and not pg.is_running


def exited(pid: int, timeout: float = 30.0) -> None:
    """Wait for ``pid`` (not our child) to exit: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], timeout)[0], f"process {pid} still running after {timeout} s"
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT", "os._exit"])
def test_no_orphans_when_python_dies(tmp_path: Path, how: str) -> None:
    """Ctrl-C runs atexit; SIGKILL, default SIGTERM and os._exit do not: then the watchdog cleans up.

    Either way, once the watchdogs exited, nothing of the server is left: no process, no SysV
    segment, no shared memory file, no temp dir, no initdb template.
    """
    script = textwrap.dedent(
        """
        import json, os, sys
        from chaos.postgres import EmbeddedPostgres, _TEMPLATES
        from tests.footprint import Footprint
        pg = EmbeddedPostgres().start()
        (template, template_dog), = _TEMPLATES._dirs.values()
        fp = Footprint(pg.base_dir, pg.data_dir)
        fp.observe(pg.processes())
        dogs = [pg._watchdog.pid, template_dog.pid]
        print(json.dumps({"fp": fp.as_json(), "template": str(template), "dogs": dogs}), flush=True)
        if sys.argv[1] == "os._exit":
            os._exit(3)
        sys.stdin.read()  # wait to be killed
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, how],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,  # Ctrl-C as in a terminal, also if this run started with SIGINT ignored
    )
    fp = None
    try:
        assert proc.stdout is not None
        seen = json.loads(proc.stdout.readline())
        fp = Footprint.from_json(seen["fp"])
        if how != "os._exit":
            proc.send_signal(getattr(signal, how))
        proc.wait(20)
        for dog in seen["dogs"]:
            exited(dog)
        assert len(fp.pids) > 3  # postmaster and its children, each in its own session
        assert fp.segments and fp.shared_files  # there was something to leave behind
        assert fp.everything_left() == []
        assert not Path(seen["template"]).exists()
        assert postgres_processes_for(fp.data_dir) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if fp is not None:
            fp.clean_up()


def test_start_and_create_database_from_inside_an_event_loop(pg_owned: EmbeddedPostgres) -> None:
    async def main() -> str:
        pg_owned.stop()
        pg_owned.start()  # blocking, but must work with a loop running in this thread
        return pg_owned.create_database("from_loop")

    dsn = asyncio.run(main())
    assert query(dsn, "SELECT current_database() AS d")[0]["d"] == "from_loop"
    pg_owned.drop_database("from_loop")


def test_fsync_is_on_by_default_and_off_only_when_asked(pg: object) -> None:
    with EmbeddedPostgres(fsync=False) as fast:
        assert query(fast.dsn(), "SHOW fsync")[0]["fsync"] == "off"
        assert query(fast.dsn(), "SHOW synchronous_commit")[0]["synchronous_commit"] == "on"
    if isinstance(pg, EmbeddedPostgres) and pg.fsync:
        assert query(pg.dsn(), "SHOW fsync")[0]["fsync"] == "on"


# --- databases and DSN mode -------------------------------------------------------


def test_create_and_drop_database(pg_owned: EmbeddedPostgres) -> None:
    dsn = pg_owned.create_database("lab_db_1")
    assert dsn.endswith(f":{pg_owned.port}/lab_db_1")
    assert query(dsn, "SELECT current_database() AS d")[0]["d"] == "lab_db_1"
    with pytest.raises(PostgresEnvError, match="already exists"):
        pg_owned.create_database("lab_db_1")
    pg_owned.drop_database("lab_db_1")
    pg_owned.drop_database("lab_db_1")  # idempotent
    with pytest.raises(ValueError, match="bad database name"):
        pg_owned.create_database('x"; DROP DATABASE postgres; --')


def test_dsn_mode_against_the_embedded_server(pg_owned: EmbeddedPostgres) -> None:
    ext = postgres_from_env({"FASTPORT_LAB_PG_DSN": pg_owned.dsn()})
    assert isinstance(ext, ExternalPostgres) and not ext.can_restart
    admin = pg_owned.dsn()
    with ext:
        assert (ext.host, ext.port) == ("127.0.0.1", pg_owned.port)
        own = ext.database
        assert own.startswith("fastport_lab_")
        assert query(ext.dsn(), "SELECT current_database() AS d")[0]["d"] == own
        other = ext.create_database("lab_side_db")
        assert query(other, "SELECT 1 AS x")[0]["x"] == 1
        ext.drop_database("lab_side_db")
        for op in (ext.stop, ext.kill, ext.restart):
            with pytest.raises(PostgresUnsupported, match="external server"):
                op()
        assert ext.is_running
    names = {r["datname"] for r in query(admin, "SELECT datname FROM pg_database")}
    assert own not in names and "lab_side_db" not in names


def test_dsn_mode_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        ext = ExternalPostgres(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=5)
        started = time.monotonic()
        expected = f"cannot connect to FASTPORT_LAB_PG_DSN server 127.0.0.1:{port}"
        with pytest.raises(PostgresEnvError, match=expected):
            ext.start()
        assert time.monotonic() - started < 5


# --- binaries and configuration -----------------------------------------------------


def test_path_binaries_when_available() -> None:
    try:
        binaries = find_binaries("path")
    except PostgresEnvError:
        pytest.skip("no PostgreSQL server binaries on PATH")
    assert binaries.source == "PATH"
    with postgres_from_env({"FASTPORT_LAB_PG_BIN": "path"}) as pg:
        version = query(pg.dsn(), "SHOW server_version")[0]["server_version"]
        out = subprocess.run([binaries.postgres, "--version"], capture_output=True, text=True).stdout
        assert version.split()[0] in out


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (
            {"FASTPORT_LAB_PG_BIN": "/nonexistent/bin"},
            "neither 'pgserver', 'auto', 'path' nor an existing dir",
        ),
        ({"FASTPORT_LAB_PG_PORT": "http"}, "not a port number"),
        ({"FASTPORT_LAB_PG_PORT": "70000"}, "not a port number"),
        ({"FASTPORT_LAB_PG_FSYNC": "maybe"}, "use on or off"),
        ({"FASTPORT_LAB_PG_DSN": "host=localhost dbname=x"}, "must be a URI"),
        ({"FASTPORT_LAB_PG_DSN": "postgresql://u@h:99999/x"}, "bad port"),
        (
            {"FASTPORT_LAB_PG_DSN": "postgresql://u@h/x", "FASTPORT_LAB_PG_BIN": "auto"},
            "unset FASTPORT_LAB_PG_BIN",
        ),
    ],
)
def test_bad_configuration_is_a_clear_error(env: dict[str, str], match: str) -> None:
    with pytest.raises(PostgresEnvError, match=match):
        postgres_from_env(env)


def test_bin_dir_without_binaries(tmp_path: Path) -> None:
    with pytest.raises(PostgresEnvError, match="initdb and postgres not found or not executable"):
        postgres_from_env({"FASTPORT_LAB_PG_BIN": str(tmp_path)})


def test_postgres_refusing_to_start_reports_its_log() -> None:
    pg = EmbeddedPostgres(settings={"shared_buffers": "lots"})
    with pytest.raises(PostgresEnvError, match=r"(?s)exited with code \d+ during start-up.*shared_buffers"):
        pg.start()
    pg.close()
    assert pg.base_dir is not None and not pg.base_dir.exists()


def test_taken_port_is_a_clear_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        pg = EmbeddedPostgres(port=port)
        started = time.monotonic()
        with pytest.raises(PostgresPortInUse, match=f"127.0.0.1:{port} address already in use"):
            pg.start()
        assert time.monotonic() - started < 5
        pg.close()


def test_restart_when_port_was_taken_meanwhile(pg_owned: EmbeddedPostgres) -> None:
    port = pg_owned.port
    pg_owned.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the server's TIME_WAITs linger
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(PostgresPortInUse, match=str(port)):
            pg_owned.start()
    pg_owned.start()
    assert pg_owned.port == port and pg_owned.is_running


def test_environment_default_is_embedded_pgserver() -> None:
    pg = postgres_from_env({})
    assert isinstance(pg, EmbeddedPostgres) and pg.binaries.source == "pgserver" and pg.fsync
    pg.close()
    assert os.access(pg.binaries.postgres, os.X_OK)


def test_failing_initdb_is_reported_with_its_output() -> None:
    bindir = Path(tempfile.mkdtemp(prefix="fastport-fakebin-"))
    try:
        bindir.chmod(0o755)  # when root, the unprivileged server user must be able to run these
        for name, body in (("initdb", "echo 'initdb: disk on fire' >&2; exit 1"), ("postgres", "echo 16")):
            (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
            (bindir / name).chmod(0o755)
        pg = postgres_from_env({"FASTPORT_LAB_PG_BIN": str(bindir)})
        with pytest.raises(PostgresEnvError, match=r"(?s)initdb failed \(exit 1\).*disk on fire"):
            pg.start()
        pg.close()
        assert pg.base_dir is not None and not pg.base_dir.exists()
    finally:
        shutil.rmtree(bindir)
