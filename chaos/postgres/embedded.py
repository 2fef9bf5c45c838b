"""The embedded server: a throwaway PostgreSQL this process owns, on a free port of 127.0.0.1.

The lab needs a PostgreSQL it can stop, SIGKILL and restart *on the same port* (its fault proxy
points at that port), that starts in well under a second, and that never outlives the Python
process that started it. So it runs ``initdb`` (once per process, into a template every server
copies) and ``postgres`` itself, in a temp dir, from the binaries :mod:`chaos.postgres.discovery`
finds.

Durability: fsync stays on and ``synchronous_commit`` stays on by default, so a SIGKILL of
PostgreSQL itself (a lab fault) never loses a committed row; the checkers would otherwise blame
the broker for the database's loss window. ``fsync=False`` (``FASTPORT_LAB_PG_FSYNC=off``) is an
explicit opt-in: it is safe against process kills (the OS page cache survives) but not against an
OS crash.

No orphans: ``close()`` and an ``atexit`` hook stop the server and remove its temp dir; a
:mod:`watchdog <chaos.postgres.watchdog>` process does the same when this process dies without
running them (SIGKILL, default SIGTERM, ``os._exit``). After a ``kill()`` the SysV segment
PostgreSQL cannot remove itself is released here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import asyncpg

from chaos.postgres.base import (
    HOST,
    SUPERUSER,
    PostgresEnvError,
    PostgresPortInUse,
    PostgresServer,
    check_db_name,
    probe,
    run_sync,
)
from chaos.postgres.discovery import PostgresBinaries, find_binaries
from chaos.postgres.watchdog import Watchdog, kill_server, release_shared_memory, wait_gone

DSM_TYPE = "mmap"


def default_base_dir() -> str | None:
    """Where embedded servers put their temp dir: RAM (/dev/shm) when it has room, else the system temp.

    A throwaway server gains nothing from a disk: its data dies with the run anyway, and a
    SIGKILL of PostgreSQL loses nothing committed either way (the kernel keeps the pages). On
    tmpfs initdb and start are ~3x faster on a busy machine. Docker's default /dev/shm (64 MB)
    is too small, hence the free-space check.
    """
    shm = "/dev/shm"
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and stat.f_bavail * stat.f_frsize >= 1 << 30:
        return shm
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def server_processes(pid: int) -> list[int]:
    """The postmaster ``pid`` and all its descendants (backends, checkpointer, walwriter, ...).

    PostgreSQL puts every child in its own session (setsid), so a process group
    kill reaches only the postmaster: children are found by parentage instead.
    """
    import psutil  # pgserver's dependency; imported late to keep `import chaos.postgres` light

    try:
        return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies excluded: they hold no port, file or memory)."""
    import psutil

    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.Error:
            continue
    return running


class _Templates:
    """One initdb per process and (binaries, user, parent dir); each new server copies it.

    Copying a fresh 40 MB cluster takes tens of ms where initdb takes 0.3-3 s, which is most
    of a server's start-up. The templates are removed at exit, or by their watchdog.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirs: dict[tuple[str, str | None, str | None], tuple[Path, Watchdog]] = {}
        atexit.register(self.close)

    def get(self, binaries: PostgresBinaries, user: str | None, parent: str | None) -> Path:
        key = (str(binaries.bindir), user, parent)
        with self._lock:
            if key not in self._dirs:
                base = Path(tempfile.mkdtemp(prefix="fastport-pg-template-", dir=parent))
                watchdog = Watchdog(base)
                try:
                    if user is not None:
                        shutil.chown(base, user=user, group=user)
                    _initdb(binaries, base / "data", user)
                except BaseException:
                    shutil.rmtree(base, ignore_errors=True)
                    watchdog.close()
                    raise
                self._dirs[key] = (base, watchdog)
            return self._dirs[key][0] / "data"

    def close(self) -> None:
        with self._lock:
            for base, watchdog in self._dirs.values():
                shutil.rmtree(base, ignore_errors=True)
                watchdog.close()
            self._dirs.clear()


def _initdb(binaries: PostgresBinaries, data_dir: Path, user: str | None) -> None:
    cmd = [
        str(binaries.initdb), "-D", str(data_dir), "-U", SUPERUSER, "-A", "trust",
        "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
    ]  # fmt: skip
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, user=user, cwd=data_dir.parent,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise PostgresEnvError(f"initdb ({binaries.initdb}) could not run: {exc}") from exc
    if out.returncode != 0:
        tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-5:])
        raise PostgresEnvError(f"initdb failed (exit {out.returncode}) with {binaries.initdb}:\n{tail}")


def _copy_cluster(template: Path, data_dir: Path, user: str | None) -> None:
    shutil.copytree(template, data_dir, symlinks=True)  # keeps modes (PostgreSQL wants 0700)
    if user is not None:
        shutil.chown(data_dir, user=user, group=user)
        for root, dirs, files in os.walk(data_dir):
            for name in dirs + files:
                os.chown(os.path.join(root, name), *_ids(user), follow_symlinks=False)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


_TEMPLATES = _Templates()


class EmbeddedPostgres(PostgresServer):
    """A throwaway PostgreSQL this process owns: own temp dir, own port, own process group.

    ``start()`` runs initdb once, then starts the postmaster and waits until it
    accepts a connection. ``stop()`` is a fast shutdown, ``kill()`` SIGKILLs the
    whole server (postmaster and backends, as in a crash); either way the next
    ``start()`` reuses the data dir and the same port. ``close()`` stops it and
    removes the temp dir. Thread-safe; blocking (call it via ``asyncio.to_thread``
    from async code).
    """

    can_restart = True

    def __init__(
        self,
        *,
        binaries: PostgresBinaries | None = None,
        port: int = 0,
        fsync: bool = True,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise PostgresEnvError(f"bad port {port!r}: use 0 (a free port) or 1..65535")
        dsm = (settings or {}).get("dynamic_shared_memory_type", DSM_TYPE)
        if dsm != DSM_TYPE:
            raise PostgresEnvError(
                f"dynamic_shared_memory_type={dsm!r}: the embedded server needs {DSM_TYPE!r}; other types "
                "keep segments outside its temp dir, which a killed server would leave behind"
            )
        self.binaries = binaries or find_binaries()
        self.host = HOST
        self.port = port
        self.fsync = fsync
        self.startup_timeout = startup_timeout
        self._settings = dict(settings or {})
        self._base_parent = base_dir
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: Watchdog | None = None
        self._parent: str | None = None
        self._user: str | None = None
        self.base_dir: Path | None = None
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self._closed = False

    # -- public API ------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running and self._proc else None

    def dsn(self, database: str | None = None) -> str:
        if not self.port:
            raise PostgresEnvError("EmbeddedPostgres has no port yet: call start() first")
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{check_db_name(database or 'postgres')}"

    def _admin_dsn(self) -> str:
        return self.dsn("postgres")

    def start(self) -> EmbeddedPostgres:
        with self._lock:
            if self._closed:
                raise PostgresEnvError("this EmbeddedPostgres was closed; create a new one")
            if self.is_running:
                return self
            if self._proc is not None:  # died on its own (crash, a kill from outside): reap, free memory
                self._reap(self._proc, [])
            if self.data_dir is None:
                self._init_cluster()
            first = self.port == 0
            for attempt in range(5 if first else 1):
                if first:
                    self.port = _free_port()
                try:
                    self._spawn_and_wait()
                    return self
                except PostgresPortInUse:
                    if not first or attempt == 4:
                        raise
            raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit); SIGKILL on ``timeout``."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            pids = server_processes(proc.pid)
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGINT)
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pids = self._kill_server(proc)
                except ProcessLookupError:
                    pass
            self._reap(proc, pids)

    def kill(self) -> None:
        """SIGKILL postmaster and every backend at once, like a crashed server; start() recovers from WAL."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            self._reap(proc, self._kill_server(proc))

    def processes(self) -> list[int]:
        """PIDs of the running server: postmaster first, then its children."""
        proc = self._proc
        return server_processes(proc.pid) if proc is not None and proc.poll() is None else []

    def restart(self) -> None:
        with self._lock:
            self.stop()
            self.start()

    def close(self) -> None:
        """Stop the server and remove its temp dir. Idempotent; also runs at exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.stop(timeout=5.0)
            finally:
                if self.base_dir is not None:
                    shutil.rmtree(self.base_dir, ignore_errors=True)
                if self._watchdog is not None:
                    self._watchdog.close()
                atexit.unregister(self.close)

    def __enter__(self) -> EmbeddedPostgres:
        super().__enter__()
        return self

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<EmbeddedPostgres {self.host}:{self.port} {state} bin={self.binaries.source}>"

    # -- internals -------------------------------------------------------------

    def _init_cluster(self) -> None:
        if self.base_dir is None:
            self._user = self._pick_user()
            parent = self._base_parent if self._base_parent is not None else default_base_dir()
            self._parent = None if parent is None else str(parent)
            self.base_dir = Path(tempfile.mkdtemp(prefix="fastport-pg-", dir=parent))
            atexit.register(self.close)
            self._watchdog = Watchdog(self.base_dir)
            if self._user is not None:
                shutil.chown(self.base_dir, user=self._user, group=self._user)
        data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        template = _TEMPLATES.get(self.binaries, self._user, self._parent)
        try:
            _copy_cluster(template, data_dir, self._user)
        except OSError as exc:
            shutil.rmtree(data_dir, ignore_errors=True)
            raise PostgresEnvError(f"cannot copy the initdb template into {data_dir}: {exc}") from exc
        self.data_dir = data_dir

    def _pick_user(self) -> str | None:
        """PostgreSQL refuses to run as root; then run it as the unprivileged user 'pgserver'."""
        if os.name != "posix" or os.geteuid() != 0:
            return None
        try:
            with warnings.catch_warnings():  # pgserver's import warns about XDG_RUNTIME_DIR
                warnings.simplefilter("ignore")
                from pgserver.utils import ensure_user_exists

            ensure_user_exists("pgserver")
        except (ImportError, OSError, subprocess.CalledProcessError) as exc:
            raise PostgresEnvError(
                "running as root, and the unprivileged user 'pgserver' that PostgreSQL needs "
                f"cannot be created: {exc}"
            ) from exc
        check = subprocess.run(
            [str(self.binaries.postgres), "--version"], capture_output=True, text=True, user="pgserver",
            timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check.returncode != 0:
            raise PostgresEnvError(
                f"user 'pgserver' cannot run {self.binaries.postgres} (check that every parent directory "
                f"is world-executable): {check.stderr.strip()}"
            )
        return "pgserver"

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": "",
            "fsync": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "jit": "off",
            "max_wal_size": "256MB",  # bounds the WAL kept in the temp dir (RAM on tmpfs)
            # dynamic shared memory as files in data_dir/pg_dynshmem, not /dev/shm/PostgreSQL.*: a killed
            # server's segments then go with its temp dir (and its next start clears them)
            "dynamic_shared_memory_type": DSM_TYPE,
            "min_wal_size": "32MB",
            "log_min_messages": "warning",
            "log_line_prefix": "%m [%p] ",
        }
        settings.update(self._settings)
        cmd = [str(self.binaries.postgres), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def _spawn_and_wait(self) -> None:
        assert self.log_path is not None and self.data_dir is not None
        if not _port_is_free(self.port):
            raise PostgresPortInUse(
                f"cannot start PostgreSQL: {self.host}:{self.port} address already in use by another process"
            )
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            try:
                proc = subprocess.Popen(
                    self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.data_dir,
                    user=self._user, process_group=0, close_fds=True,
                )  # fmt: skip
            except OSError as exc:
                raise PostgresEnvError(f"cannot run {self.binaries.postgres}: {exc}") from exc
        self._proc = proc
        if self._watchdog is not None:
            self._watchdog.watch(proc.pid, self.data_dir)
        try:
            self._wait_ready(proc, offset)
        except BaseException:
            self._reap(proc, self._kill_server(proc))
            raise

    def _log_since(self, offset: int) -> str:
        assert self.log_path is not None
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _wait_ready(self, proc: subprocess.Popen[bytes], offset: int) -> None:
        """Wait until the postmaster says 'ready' in postmaster.pid and accepts a real connection."""
        assert self.data_dir is not None
        deadline = time.monotonic() + self.startup_timeout
        pidfile = self.data_dir / "postmaster.pid"
        delay = 0.005
        while True:
            if proc.poll() is not None:
                log = self._log_since(offset)
                if "Address already in use" in log or "could not create any TCP/IP sockets" in log:
                    raise PostgresPortInUse(
                        f"cannot start PostgreSQL: {self.host}:{self.port} address already in use"
                    )
                tail = "\n".join(log.strip().splitlines()[-8:])
                raise PostgresEnvError(
                    f"postgres exited with code {proc.returncode} during start-up:\n{tail}"
                )
            if self._pidfile_ready(pidfile, proc.pid):
                try:
                    run_sync(lambda: probe(self.dsn("postgres"), 2.0), 3.0)
                    return
                except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    pass
            if time.monotonic() > deadline:
                tail = "\n".join(self._log_since(offset).strip().splitlines()[-8:])
                raise PostgresEnvError(
                    f"PostgreSQL on {self.host}:{self.port} not ready after "
                    f"{self.startup_timeout:.0f} s:\n{tail}"
                )
            time.sleep(delay)  # polling for readiness, not synchronising on a fixed delay
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _pidfile_ready(pidfile: Path, pid: int) -> bool:
        try:
            lines = pidfile.read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    @staticmethod
    def _kill_server(proc: subprocess.Popen[bytes]) -> list[int]:
        """Freeze the postmaster (no new children), then SIGKILL it and all its children.

        The postmaster is our child, so its pid stays its own until we reap it: no pidfd needed.
        """
        return kill_server(proc.pid) or [proc.pid]

    def _reap(self, proc: subprocess.Popen[bytes], pids: list[int]) -> None:
        """Wait until the postmaster and each of ``pids`` are gone, then free the SysV segment it left.

        A restart needs port and memory free. A clean shutdown removes the segment itself; after a
        SIGKILL it would outlive the server (and the lab) unless released here.
        """
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pids = self._kill_server(proc)
            proc.wait()
        survivors = wait_gone(pids, 5.0)
        if survivors:  # e.g. a child forked between our SIGSTOP and the kernel stopping the postmaster
            for pid in survivors:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if survivors := wait_gone(survivors, 5.0):
                raise PostgresEnvError(f"PostgreSQL processes {survivors} survived SIGKILL")
        self._proc = None
        if self.data_dir is not None:
            # children of a postmaster killed by someone else die on their own, shortly: wait for them
            release_shared_memory(self.data_dir, proc.pid, wait=5.0, kill_attached=1.0)
        if self._watchdog is not None:
            self._watchdog.watch(0)
