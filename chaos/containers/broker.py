"""The broker under test as a container, with the interface of ``chaos.launcher.BrokerUnderTest``.

The launch contract is unchanged (PROTOCOL.md section 4): the command template with
``{host} {port} {dsn} {store}`` becomes the container's command (the image's ENTRYPOINT,
if any, stays in front), and readiness is the ``{"event":"listening",...}`` line, read
from the container's stdout log. The container runs on the host's network: ``{dsn}``
points at the fault proxy on the host's loopback and clients connect to
``127.0.0.1:{port}``, exactly as for a broker process, and a restart on the same port keeps
the broker's address, so clients reconnect.

Faults map to the engine: SIGKILL is ``container.kill("SIGKILL")``, SIGSTOP is ``pause()``
(the cgroup freezer: every process frozen, sockets open), SIGCONT is ``unpause()``,
SIGTERM is ``container.stop()``. The container runs under Docker's init (tini), so a broker
that installs no SIGTERM handler still stops on SIGTERM. Exit codes are given like
``Popen.returncode``: Docker's 128+N for a death by signal N is reported as -N, so a
SIGKILLed broker returns -9 as a killed process would. Launches, signals and exits are
recorded into the history just as ``BrokerUnderTest`` records them. Once it has exited and its
logs are read, the container is removed; its last lines stay in ``stdout_lines`` /
``stderr_lines`` and :meth:`save_logs` writes them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker.errors
from docker.models.containers import Container

from chaos.containers.engine import LogFollower
from chaos.history import History
from chaos.launcher import LaunchError, LaunchResult, render_command

if TYPE_CHECKING:
    from chaos.containers.backend import DockerBackend

__all__ = ["CONTAINER_REFERENCE_BROKER_CMD", "BrokerContainer", "BrokerContainerError"]

# The reference broker's launch command inside the local broker image.
CONTAINER_REFERENCE_BROKER_CMD = "python3 -m broker --host {host} --port {port} --store {store} --dsn {dsn}"
_TAIL = 2000  # stdout/stderr lines kept per broker


class BrokerContainerError(LaunchError):
    """A broker container failed to start; a ``LaunchError`` naming the image and the container."""

    def __init__(self, result: LaunchResult, image: str, container: str | None) -> None:
        self.image = image
        self.container = container
        super().__init__(result)
        self.args = (f"[image {image}, container {container or '(none)'}] {self.args[0]}",)


class BrokerContainer:
    """One broker container; ``start()`` once, then kill/stop/cont/terminate like a ``BrokerUnderTest``."""

    def __init__(
        self,
        backend: DockerBackend,
        command: str | Sequence[str],
        *,
        image: str | None = None,
        history: History | None = None,
        name: str = "broker",
        host: str = "127.0.0.1",
        port: int = 0,
        dsn: str | None = None,
        store: str = "memory",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,  # accepted for BrokerUnderTest compatibility; the image sets its WORKDIR
        ready_timeout: float = 30.0,
        init: bool = True,
    ) -> None:
        self.argv = render_command(command, port=port, host=host, dsn=dsn, store=store)
        if not ready_timeout > 0:
            raise ValueError(f"ready_timeout must be > 0 seconds, got {ready_timeout!r}")
        self.backend = backend
        self.image_spec = image
        self.image: str | None = None
        self.history = history
        self.name = name
        self.host = host
        self.requested_port = port
        self.env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.init = init
        self.port: int | None = None
        self.listening: dict[str, Any] | None = None
        self.stdout_lines: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self.returncode: int | None = None
        self.leftover_processes = False  # a container takes all its processes with it
        self.container_name: str | None = None
        self._container: Container | None = None
        self._pid: int | None = None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._exited = threading.Event()
        self._followers: list[LogFollower] = []
        self._monitor_thread: threading.Thread | None = None
        self._started_at = 0.0
        self._signalled = False
        self._sent: set[str] = set()
        self._paused = False
        self._lock = threading.Lock()

    # --- public ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Host pid of the container's init (what the history records)."""
        return self._pid

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("broker is not listening yet")
        return f"ws://{self.host}:{self.port}/"

    @property
    def healthz_url(self) -> str:
        return self.url.replace("ws://", "http://", 1) + "healthz"

    @property
    def alive(self) -> bool:
        return self._container is not None and not self._exited.is_set()

    def start(self) -> BrokerContainer:
        """Create and start the container, wait for the listening line; raises ``BrokerContainerError``."""
        if self._container is not None or self._started_at:
            raise RuntimeError("a BrokerContainer starts once; make a new one to restart")
        self._started_at = time.monotonic()
        self._record(
            "invoke", "launch", {"command": self.argv, "port": self.requested_port, "host": self.host}
        )
        self.backend._register(self)
        try:
            self.image = self.backend.image("broker", self.image_spec)
            container = self.backend.client.containers.create(
                self.image,
                command=self.argv,
                name=self.backend.resource_name(self.name),
                labels=self.backend.labels("broker"),
                environment=self.env,
                network_mode="host",
                init=self.init,
                detach=True,
            )
        except (docker.errors.DockerException, RuntimeError) as exc:  # ImageNotFound, APIError, build errors
            self._exited.set()
            self.backend._unregister(self)
            self._fail("not-found", None, [f"{type(exc).__name__}: {exc}"])
        self._container = container
        self.container_name = container.name
        try:
            container.start()
        except docker.errors.APIError as exc:  # e.g. the command's executable is not in the image
            self._exited.set()
            self._finish_container()
            self._fail("not-found", None, [f"{type(exc).__name__}: {exc}"])
        container.reload()
        self._pid = container.attrs.get("State", {}).get("Pid") or None
        self._followers = [
            LogFollower(container, stdout=True, on_line=self._on_stdout, name=self.name),
            LogFollower(container, stdout=False, on_line=self.stderr_lines.append, name=self.name),
        ]
        self._monitor_thread = threading.Thread(
            target=self._monitor, name=f"{self.name}-monitor", daemon=True
        )
        self._monitor_thread.start()
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C or a failed start: never leave it running
            self.kill()
            raise
        return self

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (unpausing first), wait ``timeout``, then SIGKILL; returns the exit code."""
        if self.alive:
            self._record("info", "signal", {"signal": "SIGTERM", "pid": self.pid})
            self._signalled = True
            self._sent.add("SIGTERM")
            self._unpause()
            with contextlib.suppress(docker.errors.DockerException):
                self._container.stop(timeout=max(1, math.ceil(timeout)))  # type: ignore[union-attr]
        return self.wait()

    def kill(self) -> int | None:
        """``container.kill("SIGKILL")`` and wait for the exit."""
        if self.alive:
            self._kill("SIGKILL")
        return self.wait()

    def stop(self) -> None:
        """SIGSTOP: ``pause()`` freezes every process of the container, sockets stay open."""
        if not self.alive:
            return
        self._record("info", "signal", {"signal": "SIGSTOP", "pid": self.pid})
        self._signalled = True
        with self._lock:
            self._container.pause()  # type: ignore[union-attr]
            self._paused = True

    def cont(self) -> None:
        """SIGCONT: ``unpause()``."""
        if not self.alive:
            return
        self._record("info", "signal", {"signal": "SIGCONT", "pid": self.pid})
        self._unpause()

    def wait(self, timeout: float | None = 15.0) -> int | None:
        """Wait for the exit the monitor records; on a hang, SIGKILL; returns the exit code."""
        if self._container is None:
            return self.returncode
        if not self._exited.wait(timeout):
            self._kill("SIGKILL")
            self._exited.wait()
        return self.returncode

    def save_logs(self, path: str | Path) -> Path:
        """Write the command, exit code and last stdout/stderr lines to ``path``; returns it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = [
            f"# image {self.image} container {self.container_name}",
            f"# {' '.join(self.argv)}",
            f"# pid {self.pid} exit code {self.returncode}",
            "# --- stdout",
            *self.stdout_lines,
            "# --- stderr",
            *self.stderr_lines,
        ]
        path.write_text("\n".join(text) + "\n")
        return path

    def __enter__(self) -> BrokerContainer:
        if self._container is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate(timeout=5.0)

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"exited {self.returncode}"
        return f"<BrokerContainer {self.container_name} port={self.port} {state}>"

    # --- internals ---------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return time.monotonic() - self._started_at

    def _record(self, type_: str, f: str, value: dict[str, Any]) -> None:
        if self.history is not None:
            self.history.append(self.name, type_, f, value=value)

    def _fail(self, reason: str, exit_code: int | None, stderr: list[str]) -> None:
        result = LaunchResult(
            self.argv, self.requested_port, reason, exit_code, self._elapsed(), stderr,
            stdout=list(self.stdout_lines),
        )  # fmt: skip
        self._record("fail", "launch", {"pid": self.pid, **result.as_value()})
        raise BrokerContainerError(result, self.image or str(self.image_spec), self.container_name)

    def _kill(self, signal_name: str) -> None:
        self._record("info", "signal", {"signal": signal_name, "pid": self.pid})
        self._signalled = True
        self._sent.add(signal_name)
        with contextlib.suppress(docker.errors.DockerException):  # not running any more
            self._container.kill(signal_name)  # type: ignore[union-attr]  # a paused container is killed too

    def _unpause(self) -> None:
        with self._lock:
            if self._paused and self._container is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    self._container.unpause()
                self._paused = False

    def _on_stdout(self, line: str) -> None:
        self.stdout_lines.append(line)
        if self.listening is None and line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                return
            if isinstance(obj, dict) and obj.get("event") == "listening" and isinstance(obj.get("port"), int):
                self._events.put(("listening", obj))

    def _wait_ready(self) -> None:
        deadline = self._started_at + self.ready_timeout
        while True:
            try:
                kind, data = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._kill("SIGKILL")
                self._exited.wait(30)
                self._fail("hang", self.returncode, list(self.stderr_lines))
            if kind == "listening":
                self.listening = data
                self.port = int(data["port"])
                self._record(
                    "ok", "launch",
                    {"pid": self.pid, "port": self.port, "elapsed": round(self._elapsed(), 6),
                     "listening": data},
                )  # fmt: skip
                return
            if kind == "exit":
                self._fail("exited", data, list(self.stderr_lines))

    def _monitor(self) -> None:
        container = self._container
        assert container is not None
        code: int | None
        try:
            code = int(container.wait(timeout=None)["StatusCode"])
        except (docker.errors.DockerException, OSError, ValueError, KeyError):
            code = None  # the engine went away: nothing left to wait for
        for follower in self._followers:
            follower.join(timeout=5.0)  # the streams end with the container: every line is in
        self.returncode = _as_returncode(code)
        self._record(
            "info", "exit",
            {"pid": self.pid, "exit_code": self.returncode, "uptime": round(self._elapsed(), 6),
             "signalled": self._signalled},
        )  # fmt: skip
        self._finish_container()
        self._exited.set()
        self._events.put(("exit", self.returncode))

    def _finish_container(self) -> None:
        container = self._container
        if container is not None:
            for follower in self._followers:
                follower.close()
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
        self.backend._unregister(self)


def _as_returncode(code: int | None) -> int | None:
    """Docker's 128+N (a death by signal N, as the init reports it) as ``Popen``'s -N."""
    if code is not None and 128 < code <= 128 + 64:
        return -(code - 128)
    return code
