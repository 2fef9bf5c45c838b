"""Start a broker under test from its launch command (PROTOCOL.md section 4) and always reap it.

The lab knows nothing about the broker but its command line: placeholders
``{port} {host} {dsn} {store}`` are filled per token after ``shlex`` splitting
(so a DSN with spaces stays one argument), readiness is the
``{"event":"listening",...}`` line on stdout, never a sleep, and the only
timeout fires on a hang. The broker runs in its own process group, so signals
reach any children too and the nemesis can SIGSTOP/SIGKILL the whole broker.
Every broker started here is killed on context exit, on Ctrl-C and at interpreter
exit. Launches, signals and exits are recorded into the run's history (process
``name``, default ``"broker"``) for the start-up checker.

This shell is synchronous (threads drain the pipes); from asyncio call
``await asyncio.to_thread(launch, ...)``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.history import History

PLACEHOLDERS = ("port", "host", "dsn", "store")
STORES = ("memory", "postgres")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TAIL = 200  # stdout/stderr lines kept per broker


def render_command(
    template: str | Sequence[str],
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    dsn: str | None = None,
    store: str = "memory",
) -> list[str]:
    """Split *template* with shlex and fill the placeholders; raises ValueError with the reason."""
    if isinstance(template, str):
        try:
            tokens = shlex.split(template)
        except ValueError as exc:
            raise ValueError(f"launch command {template!r} cannot be split: {exc}") from None
    else:
        tokens = [str(t) for t in template]
    if not tokens:
        raise ValueError("launch command is empty")
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, got {store!r}")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    values = {"port": str(port), "host": host, "dsn": dsn, "store": store}
    out = []
    for tok in tokens:
        for name in _PLACEHOLDER.findall(tok):
            if name not in PLACEHOLDERS:
                raise ValueError(
                    f"launch command has unknown placeholder {{{name}}}; "
                    f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                )
            if values[name] is None:
                raise ValueError(f"launch command uses {{{name}}} but no {name} was given")
        out.append(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), tok))
    return out


@dataclass
class LaunchResult:
    """What a failed start looked like, for the start-up checker and for the user."""

    command: list[str]
    port: int
    reason: str  # "exited" (by itself), "hang" (killed by the lab after the timeout), "not-found"
    exit_code: int | None
    elapsed: float
    stderr: list[str] = field(default_factory=list)
    leftover_processes: bool = False
    stdout: list[str] = field(default_factory=list)  # e.g. a listening line the lab could not parse

    def as_value(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "exit_code": self.exit_code,
            "elapsed": round(self.elapsed, 6),
            "stderr": self.stderr[-50:],
            "port": self.port,
            "leftover_processes": self.leftover_processes,
        }


class LaunchError(RuntimeError):
    def __init__(self, result: LaunchResult) -> None:
        self.result = result
        tail = "\n".join(result.stderr[-15:]) or "(no stderr)"
        if result.reason == "hang" and result.stdout:
            tail += "\nstdout (no valid listening line among it):\n" + "\n".join(result.stdout[-5:])
        what = {
            "exited": f"exited with code {result.exit_code}",
            "hang": "neither printed its listening line nor exited (killed by the lab)",
            "not-found": "could not be executed",
        }.get(result.reason, result.reason)
        super().__init__(
            f"broker {shlex.join(result.command)} {what} after {result.elapsed:.2f}s "
            f"(port {result.port}); stderr:\n{tail}"
        )


_LIVE: set[BrokerProcess] = set()  # started and not reaped yet: killed at interpreter exit


@atexit.register
def _reap_all() -> None:
    for b in list(_LIVE):
        b.kill()


class BrokerProcess:
    """One broker process; use :func:`launch` or ``with BrokerProcess(...).start() as b:``."""

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        history: History | None = None,
        name: str = "broker",
        host: str = "127.0.0.1",
        port: int = 0,
        dsn: str | None = None,
        store: str = "memory",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.argv = render_command(command, port=port, host=host, dsn=dsn, store=store)
        self.history = history
        self.name = name
        self.host = host
        self.requested_port = port
        self.env = None if env is None else {**os.environ, **env}
        self.cwd = cwd
        if not ready_timeout > 0:
            raise ValueError(f"ready_timeout must be > 0 seconds, got {ready_timeout!r}")
        self.ready_timeout = ready_timeout
        self.port: int | None = None
        self.listening: dict[str, Any] | None = None
        self.stdout_lines: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self._proc: subprocess.Popen[bytes] | None = None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._exited = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0
        self._signalled = False
        self.returncode: int | None = None
        self.leftover_processes = False  # group members still running when the broker itself exited

    # --- public ----------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

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
        return self._proc is not None and not self._exited.is_set()

    def start(self) -> BrokerProcess:
        """Start and wait for the listening line; raises :class:`LaunchError` (also recorded) if it fails."""
        if self._proc is not None:
            raise RuntimeError("a BrokerProcess starts once; make a new one to restart")
        self._record(
            "invoke", "launch", {"command": self.argv, "port": self.requested_port, "host": self.host}
        )
        self._started_at = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=self.env,
                cwd=self.cwd,
            )
        except OSError as exc:
            self._exited.set()
            self._fail(
                LaunchResult(
                    self.argv,
                    self.requested_port,
                    "not-found",
                    None,
                    self._elapsed(),
                    [f"{type(exc).__name__}: {exc}"],
                )
            )
        _LIVE.add(self)
        for target in (self._read_stdout, self._read_stderr, self._monitor):
            t = threading.Thread(target=target, name=f"{self.name}-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C or a failed start: never leave it running
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = self._started_at + self.ready_timeout
        while True:
            try:
                kind, data = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._signal(signal.SIGKILL)
                self._exited.wait(10)
                self._join_pipes()
                self._fail(
                    LaunchResult(
                        self.argv,
                        self.requested_port,
                        "hang",
                        self.returncode,
                        self._elapsed(),
                        list(self.stderr_lines),
                        stdout=list(self.stdout_lines),
                    )
                )
            if kind == "listening":
                self.listening = data
                self.port = int(data["port"])
                self._record(
                    "ok",
                    "launch",
                    {
                        "pid": self.pid,
                        "port": self.port,
                        "elapsed": round(self._elapsed(), 6),
                        "listening": data,
                    },
                )
                return
            if kind == "exit":
                self._join_pipes()
                self._fail(
                    LaunchResult(
                        self.argv,
                        self.requested_port,
                        "exited",
                        data,
                        self._elapsed(),
                        list(self.stderr_lines),
                        self.leftover_processes,
                        list(self.stdout_lines),
                    )
                )

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (+ SIGCONT if stopped), wait *timeout*, then SIGKILL; returns the exit code."""
        if self.alive:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT, record=False)
            if not self._exited.wait(timeout):
                self._signal(signal.SIGKILL)
        return self.wait()

    def kill(self) -> int | None:
        """SIGKILL the whole group and reap it."""
        if self.alive:
            self._signal(signal.SIGKILL)
        return self.wait()

    def stop(self) -> None:
        """SIGSTOP: the broker freezes with its sockets open (a hung broker)."""
        self._signal(signal.SIGSTOP)

    def cont(self) -> None:
        self._signal(signal.SIGCONT)

    def wait(self, timeout: float | None = 15.0) -> int | None:
        """Wait for the exit recorded by the monitor; on a hang, SIGKILL; returns the exit code."""
        if self._proc is None:
            return None
        if not self._exited.wait(timeout):
            self._signal(signal.SIGKILL)
            self._exited.wait()
        _LIVE.discard(self)
        return self.returncode

    def __enter__(self) -> BrokerProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate(timeout=5.0)

    # --- internals -------------------------------------------------------

    def _elapsed(self) -> float:
        return time.monotonic() - self._started_at

    def _record(self, type_: str, f: str, value: dict[str, Any]) -> None:
        if self.history is not None:
            self.history.append(self.name, type_, f, value=value)

    def _fail(self, result: LaunchResult) -> None:
        _LIVE.discard(self)
        self._record("fail", "launch", {"pid": self.pid, **result.as_value()})
        raise LaunchError(result)

    def _signal(self, sig: signal.Signals, record: bool = True) -> None:
        if self._proc is None or self._exited.is_set():
            return  # after the reap its pid may belong to someone else
        if record:
            self._signalled = True
            self._record("info", "signal", {"signal": sig.name, "pid": self.pid})
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self._proc.pid, 0)  # type: ignore[union-attr]
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _join_pipes(self) -> None:
        for t in self._threads[:2]:
            t.join(timeout=2.0)

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.stdout_lines.append(line)
            if self.listening is None and line.lstrip().startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if (
                    isinstance(obj, dict)
                    and obj.get("event") == "listening"
                    and isinstance(obj.get("port"), int)
                ):
                    self._events.put(("listening", obj))

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            self.stderr_lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def _monitor(self) -> None:
        assert self._proc is not None
        code = self._proc.wait()
        # Right after the reap the group id cannot have been reused yet: kill what the broker left behind.
        self.leftover_processes = self._group_alive()
        if self.leftover_processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self.returncode = code
        self._record(
            "info",
            "exit",
            {
                "pid": self._proc.pid,
                "exit_code": code,
                "uptime": round(self._elapsed(), 6),
                "signalled": self._signalled,
            },
        )
        self._exited.set()
        self._events.put(("exit", code))


def launch(command: str | Sequence[str], **kwargs: Any) -> BrokerProcess:
    """Start a broker and wait until it listens; see :class:`BrokerProcess` for the options."""
    return BrokerProcess(command, **kwargs).start()
