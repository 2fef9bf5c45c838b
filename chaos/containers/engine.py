"""The Docker engine as the lab uses it: one client, labels, errors that quote logs, and the reaper.

Every container and volume the lab creates carries the labels of its *session*
(one :class:`~chaos.containers.backend.DockerBackend`): the session id, the lab's
pid and that pid's start time, and the host name. That is what makes cleanup
possible without ever touching anything else on a shared engine:

* normal end: ``close()`` of each part, then of the backend (also from ``atexit``
  and a ``weakref`` finalizer);
* the lab killed (SIGKILL, ``os._exit``, a cancelled CI job): a :class:`Reaper`
  watchdog, started per session in its own process group and ignoring SIGINT and
  SIGTERM, waits on a pidfd of the lab and on a pipe from it; when either says the lab
  is gone it removes every container and volume with the session's label;
* the watchdog itself killed too: :func:`reap_stale` (run when a backend opens)
  removes containers of sessions whose lab pid on this host is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import docker
import docker.errors
from docker.models.containers import Container

LABEL_SESSION = "fastport-lab.session"
LABEL_ROLE = "fastport-lab.role"
LABEL_PID = "fastport-lab.pid"
LABEL_PID_START = "fastport-lab.pid-start"  # /proc/<pid>/stat start time: pid reuse is not "alive"
LABEL_HOST = "fastport-lab.host"
LABEL_IMAGE = "fastport-lab.image"  # on images the lab built: base, postgres, toxiproxy, broker
LABEL_INPUTS = "fastport-lab.inputs"  # hash of an image's build inputs (also its tag)
LABEL_LISTENING_LINE = "fastport-lab.listening-line"  # "json": prints {"event":"listening",...}

_T = TypeVar("_T")


class ContainerError(RuntimeError):
    """The container backend could not do what was asked; the message says why."""


class EngineUnavailable(ContainerError):
    """No Docker engine answers (or the docker package is missing)."""


class ContainerStartError(ContainerError):
    """A container did not start or did not become ready; the message quotes its last log lines."""

    def __init__(self, message: str, *, logs: Iterable[str] = (), container: str | None = None) -> None:
        self.logs = list(logs)
        self.container = container
        tail = "\n".join(f"    {line}" for line in self.logs[-20:]) or "    (no output)"
        super().__init__(f"{message}\n  last log lines{f' of {container}' if container else ''}:\n{tail}")


def connect(timeout: float = 120.0) -> docker.DockerClient:
    """A client for the engine of ``DOCKER_HOST`` (default: the local socket), checked with a ping.

    ``timeout`` bounds each API call (a hang); a pool of 32 connections, since every
    broker container holds two log streams and a wait while it runs.
    """
    try:
        client = docker.from_env(timeout=int(timeout), max_pool_size=32)
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise EngineUnavailable(
            f"no Docker engine answers at {where}: {exc}. Start one (here: .ci/docker-engine), "
            "or use the embedded backend"
        ) from exc
    return client


def engine_status() -> tuple[bool, str]:
    """(an engine answers, why not): for skips and diagnostics; never raises."""
    try:
        client = connect(timeout=10)
    except EngineUnavailable as exc:
        return False, str(exc)
    try:
        version = client.version()
        return True, f"Docker Engine {version.get('Version')} (API {version.get('ApiVersion')})"
    finally:
        client.close()


def run_sync(make: Callable[[], Awaitable[_T]], timeout: float) -> _T:
    """Run a coroutine from sync code, also when the caller is inside an event loop (own thread then)."""

    async def bounded() -> _T:
        return await asyncio.wait_for(make(), timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(bounded())
        except BaseException as exc:  # handed to the calling thread
            box["error"] = exc

    thread = threading.Thread(target=runner, name="fastport-containers-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def log_lines(container: Container, tail: int | str = 50) -> list[str]:
    """The container's last ``tail`` log lines (stdout and stderr interleaved); [] if it is gone."""
    try:
        raw = container.logs(stdout=True, stderr=True, tail=tail)
    except docker.errors.DockerException:
        return []
    return raw.decode("utf-8", "replace").splitlines()


class LogFollower:
    """Follows one log stream of a container (stdout or stderr) in a thread, line by line.

    ``on_line(text)`` runs in that thread for every line, ``on_end()`` once the stream ends
    (the container stopped, or :meth:`close` was called). Docker keeps the logs from the
    container's start, so a follower opened after ``start()`` misses nothing.
    """

    def __init__(
        self,
        container: Container,
        *,
        stdout: bool,
        on_line: Callable[[str], None],
        on_end: Callable[[], None] | None = None,
        name: str = "logs",
    ) -> None:
        self._stream = container.logs(stdout=stdout, stderr=not stdout, stream=True, follow=True)
        self._on_line = on_line
        self._on_end = on_end
        self.thread = threading.Thread(
            target=self._run, name=f"{name}-{'out' if stdout else 'err'}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        buffer = b""
        try:
            for chunk in self._stream:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    self._on_line(raw.decode("utf-8", "replace").rstrip("\r"))
        except Exception:  # the connection closed under us (close(), engine gone): the stream is over
            pass
        finally:
            if buffer:
                self._on_line(buffer.decode("utf-8", "replace").rstrip("\r"))
            if self._on_end is not None:
                self._on_end()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, for images that cannot report the one they chose (callers retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def pid_start_time(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot ("" if unknown), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def pid_alive(pid: int, start: str) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = pid_start_time(pid)
    return not start or not now or now == start


def session_labels(session_id: str, role: str | None = None) -> dict[str, str]:
    """The labels of every container and volume of a session (``role``: postgres, toxiproxy, broker)."""
    pid = os.getpid()
    labels = {
        LABEL_SESSION: session_id,
        LABEL_PID: str(pid),
        LABEL_PID_START: pid_start_time(pid),
        LABEL_HOST: socket.gethostname(),
    }
    if role is not None:
        labels[LABEL_ROLE] = role
    return labels


def remove_session(client: docker.DockerClient, session_id: str) -> list[str]:
    """Force-remove every container (with its anonymous volumes) and volume of a session; their names."""
    flt = {"label": f"{LABEL_SESSION}={session_id}"}
    removed: list[str] = []
    with contextlib.suppress(docker.errors.DockerException):
        for c in client.containers.list(all=True, filters=flt):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True, v=True)
                removed.append(c.name)
    with contextlib.suppress(docker.errors.DockerException):
        for v in client.volumes.list(filters=flt):
            with contextlib.suppress(docker.errors.NotFound):
                v.remove(force=True)
                removed.append(v.name)
    return removed


def reap_stale(client: docker.DockerClient) -> list[str]:
    """Remove the containers and volumes of sessions on this host whose lab process is dead.

    Covers the rare case where the lab and its watchdog were both killed. Sessions of
    other hosts (a shared remote engine) and of live labs are left alone.
    """
    host = socket.gethostname()
    dead: set[str] = set()
    try:
        items = [
            *client.containers.list(all=True, filters={"label": LABEL_SESSION}),
            *client.volumes.list(filters={"label": LABEL_SESSION}),
        ]
    except docker.errors.DockerException:
        return []
    for item in items:
        labels = item.attrs.get("Labels") or item.attrs.get("Config", {}).get("Labels") or {}
        if labels.get(LABEL_HOST) != host or not labels.get(LABEL_PID, "").isdigit():
            continue
        if not pid_alive(int(labels[LABEL_PID]), labels.get(LABEL_PID_START, "")):
            dead.add(labels[LABEL_SESSION])
    removed: list[str] = []
    for session_id in sorted(dead):
        removed += remove_session(client, session_id)
    return removed


_WATCHDOG = r"""
import os, selectors, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
session, lab_pid = sys.argv[1], int(sys.argv[2])
import docker  # imported before the wait, so that the sweep cannot fail on it later
sel = selectors.DefaultSelector()
sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
try:
    sel.register(os.pidfd_open(lab_pid), selectors.EVENT_READ)  # readable when the lab exits
except (AttributeError, OSError):
    pass
while True:
    ready = sel.select()
    if any(key.fd != sys.stdin.fileno() for key, _ in ready):
        break
    if not os.read(sys.stdin.fileno(), 4096):
        break  # EOF: the lab closed the pipe (close()) or died
client = docker.from_env(timeout=60)
flt = {"label": "fastport-lab.session=" + session}
for c in client.containers.list(all=True, filters=flt):
    try:
        c.remove(force=True, v=True)
    except docker.errors.DockerException:
        pass
for v in client.volumes.list(filters=flt):
    try:
        v.remove(force=True)
    except docker.errors.DockerException:
        pass
"""


class Reaper:
    """The watchdog process of one session: removes its containers and volumes when the lab dies.

    It inherits ``DOCKER_HOST`` and friends, so it talks to the same engine. ``close()``
    (after the lab removed everything itself) lets it make a last, normally empty, sweep.
    """

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, session_id, str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            process_group=0, close_fds=True, cwd="/",
        )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def close(self, timeout: float = 30.0) -> None:
        """Close the pipe and wait for the watchdog's sweep (bounded: a hung engine must not hang exit)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
