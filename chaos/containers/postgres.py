"""PostgreSQL as a container, with the interface of the lab's embedded server (``PostgresServer``).

The lab's fault proxy points at PostgreSQL's host port, so a restart must come
back on the *same* port. Docker re-draws an ephemeral published port whenever a
container starts again, so a stopped or killed server is not restarted in place:
its container is removed (its logs kept) and a new one is created on the same named
volume, with the host port the first container got pinned. The volume keeps the data
dir, so after ``kill()`` the next ``start()`` replays the WAL like a crashed server.

Published on 127.0.0.1 only, port chosen by Docker on first start (or the one given).
Readiness: ``pg_isready`` inside the container, then a real connection from the host
through the published port (the port accepts TCP before PostgreSQL does). Works with the
official ``postgres`` image and with the local build (same entrypoint contract).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import asyncpg
import docker.errors
from docker.models.containers import Container

from chaos.containers.engine import ContainerError, ContainerStartError, log_lines, run_sync
from chaos.postgres import PostgresEnvError, PostgresPortInUse, PostgresServer

if TYPE_CHECKING:
    from chaos.containers.backend import DockerBackend

__all__ = ["ContainerPostgres", "ContainerPostgresError", "ContainerPostgresPortInUse"]

HOST = "127.0.0.1"
SUPERUSER = "postgres"
DATA = "/var/lib/postgresql/data"
_MAX_LOG_LINES = 5000


class ContainerPostgresError(ContainerStartError, PostgresEnvError):
    """PostgreSQL's container did not start or not become ready (its log lines are in the message)."""


class ContainerPostgresPortInUse(ContainerPostgresError, PostgresPortInUse):
    """The host port PostgreSQL must come back on is taken by another process."""


class ContainerPostgres(PostgresServer):
    """A throwaway PostgreSQL in a container of the lab's session; the same calls as ``EmbeddedPostgres``.

    ``stop()`` is a fast shutdown (the image's STOPSIGNAL SIGINT; SIGKILL after the timeout),
    ``kill()`` is ``container.kill("SIGKILL")`` (postmaster and backends at once);
    ``start()`` after either comes back on the same host port. ``close()`` removes the
    container and the volume. Thread-safe, blocking (``asyncio.to_thread`` from async code).
    """

    can_restart = True

    def __init__(
        self,
        backend: DockerBackend,
        *,
        image: str | None = None,
        port: int = 0,
        fsync: bool = True,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        name: str = "postgres",
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise PostgresEnvError(f"bad port {port!r}: use 0 (Docker chooses) or 1..65535")
        self.backend = backend
        self.image_spec = image
        self.image: str | None = None
        self.host = HOST
        self.port = port
        self.fsync = fsync
        self.startup_timeout = startup_timeout
        self.name = name
        self._settings = dict(settings or {})
        self._lock = threading.RLock()
        self._container: Container | None = None
        self._volume: str | None = None
        self._generation = 0
        self._old_logs: list[str] = []  # of the containers removed on restarts, oldest first
        self._closed = False
        backend._register(self)

    # -- PostgresServer ----------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        container = self._container
        if container is None:
            return False
        try:
            container.reload()
        except docker.errors.NotFound:
            return False
        return container.status == "running"

    def dsn(self, database: str | None = None) -> str:
        if not self.port:
            raise PostgresEnvError("ContainerPostgres has no port yet: call start() first")
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database or 'postgres'}"

    def _admin_dsn(self) -> str:
        return self.dsn("postgres")

    def start(self) -> ContainerPostgres:
        with self._lock:
            if self._closed:
                raise PostgresEnvError("this ContainerPostgres was closed; create a new one")
            if self.is_running:
                return self
            if self.image is None:
                try:
                    self.image = self.backend.image("postgres", self.image_spec)
                except ContainerError as exc:  # not found, not pullable, build failed
                    raise ContainerPostgresError(f"no PostgreSQL image: {exc}") from exc
            if self._volume is None:
                volume = self.backend.client.volumes.create(
                    name=self.backend.resource_name(f"{self.name}-data"),
                    labels=self.backend.labels("postgres"),
                )
                self._volume = volume.name
            self._discard_container()
            self._generation += 1
            container = self._create()
            self._container = container
            try:
                container.start()
            except docker.errors.APIError as exc:
                logs = log_lines(container)
                self._discard_container()
                text = str(exc)
                if "already in use" in text or "already allocated" in text:
                    raise ContainerPostgresPortInUse(
                        f"cannot start PostgreSQL: {self.host}:{self.port} address already in use "
                        f"(Docker: {exc.explanation or text})",
                        logs=logs, container=container.name,
                    ) from exc  # fmt: skip
                raise ContainerPostgresError(
                    f"cannot start PostgreSQL container {container.name} ({self.image}): {exc}",
                    logs=logs, container=container.name,
                ) from exc  # fmt: skip
            try:
                if not self.port:
                    self.port = self._published_port(container)
                self._wait_ready(container)
            except BaseException:
                with contextlib.suppress(docker.errors.DockerException):
                    container.kill()
                raise
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: roll back, checkpoint, exit); Docker SIGKILLs it after ``timeout``."""
        with self._lock:
            container = self._container
            if container is None:
                return
            with contextlib.suppress(docker.errors.NotFound):
                container.stop(timeout=max(1, int(timeout)))
                container.wait(timeout=timeout + 30)

    def kill(self) -> None:
        """SIGKILL the whole server at once, like a crash; ``start()`` recovers from the WAL."""
        with self._lock:
            container = self._container
            if container is None:
                return
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.kill("SIGKILL")  # APIError: it was not running
            with contextlib.suppress(docker.errors.NotFound):
                container.wait(timeout=30)

    def restart(self) -> None:
        with self._lock:
            self.stop()
            self.start()

    def processes(self) -> list[int]:
        """Host PIDs of the server's processes (postmaster first); [] when it is not running."""
        container = self._container
        if container is None or not self.is_running:
            return []
        try:
            top = container.top()
        except docker.errors.APIError:
            return []
        column = top["Titles"].index("PID")
        return [int(row[column]) for row in top.get("Processes") or []]

    def close(self) -> None:
        """Remove the container (SIGKILL: the data is thrown away) and the volume. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._discard_container()
            finally:
                if self._volume is not None:
                    with contextlib.suppress(docker.errors.NotFound):
                        self.backend.client.volumes.get(self._volume).remove(force=True)
                    self._volume = None
                self.backend._unregister(self)

    def __enter__(self) -> ContainerPostgres:
        super().__enter__()
        return self

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<ContainerPostgres {self.host}:{self.port} {state} image={self.image or self.image_spec}>"

    # -- logs --------------------------------------------------------------------------------

    def logs(self) -> list[str]:
        """Every log line of this server: the containers removed on restarts, then the current one."""
        current = log_lines(self._container, tail="all") if self._container is not None else []
        return [*self._old_logs, *current]

    @property
    def container_name(self) -> str | None:
        return None if self._container is None else self._container.name

    # -- internals ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": "*",
            "port": "5432",
            "fsync": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "jit": "off",
            "max_wal_size": "256MB",
            "min_wal_size": "32MB",
            "log_line_prefix": "%m [%p] ",
        }
        settings.update(self._settings)
        cmd = ["postgres"]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def _create(self) -> Container:
        assert self.image is not None and self._volume is not None
        try:
            return self.backend.client.containers.create(
                self.image,
                command=self._command(),
                name=self.backend.resource_name(self.name),
                labels=self.backend.labels("postgres"),
                environment={"POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_USER": SUPERUSER},
                ports={"5432/tcp": (HOST, self.port or None)},
                volumes={self._volume: {"bind": DATA, "mode": "rw"}},
                stop_signal="SIGINT",
                shm_size="256m",  # PostgreSQL's dynamic shared memory lives in /dev/shm (64 MB by default)
                detach=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise ContainerPostgresError(f"PostgreSQL image {self.image!r} not found: {exc}") from exc
        except docker.errors.APIError as exc:
            raise ContainerPostgresError(f"cannot create PostgreSQL container ({self.image}): {exc}") from exc

    def _published_port(self, container: Container) -> int:
        container.reload()
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get("5432/tcp") or []
        for binding in bindings:
            if binding.get("HostIp") in (HOST, "") and binding.get("HostPort"):
                return int(binding["HostPort"])
        raise ContainerPostgresError(
            f"Docker published no host port for {container.name}: {bindings}",
            logs=log_lines(container), container=container.name,
        )  # fmt: skip

    def _wait_ready(self, container: Container) -> None:
        """``pg_isready`` in the container, then a real connection from the host; errors quote the log."""
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.01
        probe = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", SUPERUSER]
        while True:
            container.reload()
            if container.status not in ("created", "running"):
                code = container.attrs.get("State", {}).get("ExitCode")
                raise ContainerPostgresError(
                    f"PostgreSQL container {container.name} ({self.image}) exited with code {code} "
                    "during start-up",
                    logs=log_lines(container), container=container.name,
                )  # fmt: skip
            try:
                ready = container.exec_run(probe).exit_code == 0
            except docker.errors.APIError:
                ready = False  # it exited meanwhile: the next round says so
            if ready:
                try:
                    run_sync(lambda: _probe(self.dsn("postgres")), 3.0)
                    return
                except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    pass
            if time.monotonic() > deadline:
                raise ContainerPostgresError(
                    f"PostgreSQL in {container.name} ({self.image}) not ready after "
                    f"{self.startup_timeout:.0f} s",
                    logs=log_lines(container), container=container.name,
                )  # fmt: skip
            time.sleep(delay)  # polling for readiness (pg_isready has no event to wait on)
            delay = min(delay * 2, 0.1)

    def _discard_container(self) -> None:
        """Remove the current container, keeping its log lines for :meth:`logs`."""
        container, self._container = self._container, None
        if container is None:
            return
        lines = log_lines(container, tail="all")
        if lines:
            self._old_logs += [f"--- {container.name}", *lines]
            del self._old_logs[:-_MAX_LOG_LINES]
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


async def _probe(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=2.0, command_timeout=2.0)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()
