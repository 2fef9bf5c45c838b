"""PostgreSQL as a container: readiness, the embedded server's lifecycle on the same port, failures."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from chaos.containers import (
    ContainerPostgres,
    ContainerPostgresError,
    ContainerPostgresPortInUse,
    DockerBackend,
)
from chaos.containers.engine import LABEL_ROLE, LABEL_SESSION
from chaos.postgres import PostgresEnvError, PostgresPortInUse, PostgresServer

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def sql(dsn: str, statement: str) -> object:
    """The first value of a query's result; for other statements, their status."""

    async def main() -> object:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            if statement.lstrip().upper().startswith("SELECT"):
                return await conn.fetchval(statement)
            return await conn.execute(statement)
        finally:
            await conn.close()

    return asyncio.run(main())


def test_ready_with_the_lab_interface(pg: ContainerPostgres, backend: DockerBackend) -> None:
    assert isinstance(pg, PostgresServer) and pg.can_restart and pg.is_running
    assert pg.host == "127.0.0.1" and pg.port > 0
    assert sql(pg.dsn(), "SELECT 1") == 1
    dsn = pg.create_database("t_ready")
    try:
        assert dsn.endswith("/t_ready") and sql(dsn, "SELECT current_database()") == "t_ready"
    finally:
        pg.drop_database("t_ready")
    assert len(pg.processes()) >= 2  # postmaster and its helpers, as host pids
    (container,) = [c for c in backend.containers() if c.name == pg.container_name]
    assert (
        container.labels[LABEL_SESSION] == backend.session_id and container.labels[LABEL_ROLE] == "postgres"
    )
    bindings = container.attrs["NetworkSettings"]["Ports"]["5432/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(pg.port)}]  # published on loopback only


def test_stop_kill_restart_come_back_on_the_same_port_with_the_data(pg: ContainerPostgres) -> None:
    port = pg.port
    dsn = pg.create_database("t_cycle")
    try:
        sql(dsn, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        pg.stop()
        assert not pg.is_running and pg.processes() == []
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            sql(dsn, "SELECT 1")
        pg.start()
        assert pg.port == port and sql(dsn, "SELECT count(*) FROM t") == 1
        sql(dsn, "INSERT INTO t VALUES (2)")  # committed, then the server crashes
        pg.kill()
        assert not pg.is_running
        pg.start()  # WAL recovery
        assert pg.port == port and sql(dsn, "SELECT count(*) FROM t") == 2
        pg.restart()
        assert pg.port == port and pg.is_running and sql(dsn, "SELECT sum(v) FROM t") == 3
        assert "database system was interrupted" in "\n".join(pg.logs())  # the crash, kept across containers
    finally:
        if not pg.is_running:
            pg.start()
        pg.drop_database("t_cycle")


def test_a_taken_port_is_a_clear_error_and_start_works_once_it_is_free(pg: ContainerPostgres) -> None:
    pg.stop()
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", pg.port))
        squatter.listen(1)
        with pytest.raises(ContainerPostgresPortInUse) as err:
            pg.start()
        assert isinstance(err.value, PostgresPortInUse)
        assert "address already in use" in str(err.value) and str(pg.port) in str(err.value)
        assert not pg.is_running
    finally:
        squatter.close()
    pg.start()
    assert sql(pg.dsn(), "SELECT 1") == 1


def test_a_bad_image_says_which(backend: DockerBackend) -> None:
    with pytest.raises(ContainerPostgresError) as err, backend.postgres(image="fastport-lab/no-such-image:0"):
        pass
    assert isinstance(err.value, PostgresEnvError)
    assert "fastport-lab/no-such-image:0" in str(err.value) and "cannot be pulled" in str(err.value)


def test_a_crash_at_start_up_shows_the_log_lines(backend: DockerBackend, images: dict[str, str]) -> None:
    server = backend.postgres(settings={"shared_buffers": "lots"})
    with pytest.raises(ContainerPostgresError) as err:
        server.start()
    server.close()
    text = str(err.value)
    assert "exited with code" in text and "last log lines" in text
    assert 'invalid value for parameter "shared_buffers"' in text
