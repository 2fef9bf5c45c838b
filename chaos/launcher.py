"""The broker under test: started from its launch command (PROTOCOL.md section 4), always reaped.

The lab knows nothing about the broker but its command line: placeholders
``{port} {host} {dsn} {store}`` are filled per token after ``shlex`` splitting
(so a DSN with spaces stays one argument), readiness is the
``{"event":"listening",...}`` line on stdout, never a sleep, and the only
timeout fires on a hang. The process itself is a :class:`chaos.supervisor.Child`:
its own process group (signals reach its children too), killed with the lab
however the lab ends. Launches, signals and exits are recorded into the run's
history (process ``name``, default ``"broker"``) for the start-up checker.

This shell is synchronous; from asyncio call ``await asyncio.to_thread(launch, ...)``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.history import History
from chaos.supervisor import Child, ChildStartError

PLACEHOLDERS = ("port", "host", "dsn", "store")
STORES = ("memory", "postgres")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


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


def listening_line(line: str) -> dict[str, Any] | None:
    """The launch contract's readiness line, ``{"event": "listening", "port": P, ...}``, or None."""
    if not line.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("event") == "listening" and isinstance(obj.get("port"), int):
        return obj
    return None


class BrokerUnderTest:
    """One broker process; use :func:`launch` or ``with BrokerUnderTest(...).start() as b:``."""

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
        self.port: int | None = None
        self.listening: dict[str, Any] | None = None
        self.child = Child(
            self.argv,
            name=name,
            env=env,
            cwd=cwd,
            ready=listening_line,
            ready_timeout=ready_timeout,
            listener=self._on_child,
        )

    # --- public ----------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.child.pid

    @property
    def alive(self) -> bool:
        return self.child.alive

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    @property
    def leftover_processes(self) -> bool:
        return self.child.leftover_processes

    @property
    def stdout_lines(self) -> Any:
        return self.child.stdout_lines

    @property
    def stderr_lines(self) -> Any:
        return self.child.stderr_lines

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("broker is not listening yet")
        return f"ws://{self.host}:{self.port}/"

    @property
    def healthz_url(self) -> str:
        return self.url.replace("ws://", "http://", 1) + "healthz"

    def start(self) -> BrokerUnderTest:
        """Start and wait for the listening line; raises :class:`LaunchError` (also recorded) if it fails."""
        self._record(
            "invoke", "launch", {"command": self.argv, "port": self.requested_port, "host": self.host}
        )
        try:
            self.child.start()
        except ChildStartError as exc:
            f = exc.failure
            result = LaunchResult(
                self.argv,
                self.requested_port,
                f.reason,
                f.exit_code,
                f.elapsed,
                f.stderr,
                f.leftover_processes,
                f.stdout,
            )
            self._record("fail", "launch", {"pid": self.pid, **result.as_value()})
            raise LaunchError(result) from None
        self.listening = self.child.ready
        self.port = int(self.listening["port"])
        self._record(
            "ok",
            "launch",
            {
                "pid": self.pid,
                "port": self.port,
                "elapsed": round(self.child.elapsed(), 6),
                "listening": self.listening,
            },
        )
        return self

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (+ SIGCONT if stopped), wait *timeout*, then SIGKILL; returns the exit code."""
        return self.child.terminate(timeout)

    def kill(self) -> int | None:
        """SIGKILL the whole group and reap it."""
        return self.child.kill()

    def stop(self) -> None:
        """SIGSTOP: the broker freezes with its sockets open (a hung broker)."""
        self.child.stop()

    def cont(self) -> None:
        self.child.cont()

    def wait(self, timeout: float | None = 15.0) -> int | None:
        return self.child.wait(timeout)

    def __enter__(self) -> BrokerUnderTest:
        if self.pid is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate(timeout=5.0)

    # --- history ---------------------------------------------------------

    def _record(self, type_: str, f: str, value: dict[str, Any]) -> None:
        if self.history is not None:
            self.history.append(self.name, type_, f, value=value)

    def _on_child(self, event: str, details: dict[str, Any]) -> None:
        if event == "signal":
            self._record("info", "signal", details)
        elif event == "exit":
            self._record("info", "exit", details)


def launch(command: str | Sequence[str], **kwargs: Any) -> BrokerUnderTest:
    """Start a broker and wait until it listens; see :class:`BrokerUnderTest` for the options."""
    return BrokerUnderTest(command, **kwargs).start()
