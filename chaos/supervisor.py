"""The one process supervisor: every child the lab starts is started, watched and reaped here.

A child (a broker under test, the fault proxy in its own process, a Locust
worker) is started

* in its own process group (``start_new_session``), so a signal reaches its
  children too and the lab can SIGSTOP/SIGKILL the whole of it;
* with ``PR_SET_PDEATHSIG`` = SIGKILL, so the kernel kills it when the lab dies,
  however the lab dies (SIGKILL included). The signal is tied to the *thread*
  that forked the child, so every child is forked by one long-lived spawner
  thread, never by a worker thread that may exit;
* registered with the lab's reaper (:mod:`chaos.reaper`), a tiny process of its
  own that SIGKILLs every registered process group when the lab's end of a pipe
  closes: the group members the death signal does not reach are killed too.

Readiness is a line on stdout that a parser accepts (a broker's
``{"event":"listening",...}``), never a sleep; the only timeout fires on a hang.
Threads drain stdout and stderr (the last lines are kept for the "why"), and a
monitor thread reaps the child the moment it exits, kills whatever its group
left behind, and reports the exit. At interpreter exit every live child is
killed. The shell is synchronous; from asyncio use ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import ctypes
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TAIL = 200  # stdout/stderr lines kept per child
REAPER_SCRIPT = Path(__file__).with_name("reaper.py")
PR_SET_PDEATHSIG = 1

Ready = Callable[[str], Any]  # a stdout line -> what it announces (truthy) or None
Listener = Callable[[str, dict[str, Any]], None]  # (event, details): started, ready, signal, exit


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once in the parent (nothing is loaded in the forked child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    return fn


_PRCTL = _prctl()


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec hook: SIGKILL when the parent dies; exit at once if it already died before the hook ran."""
    prctl = _PRCTL
    if prctl is None:
        return None

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(137)

    return hook


class _Spawner:
    """One daemon thread that forks every child, so their death signal follows the process, not a thread."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="lab-spawner", daemon=True)
                self._thread.start()
        if threading.current_thread() is self._thread:
            return fn()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fn, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)


_SPAWNER = _Spawner()


class Reaper:
    """The lab's reaper process: SIGKILLs registered process groups when this process dies.

    It runs in a session of its own (so Ctrl-C to the lab's group does not reach
    it) and waits on a pipe from the lab; the pipe closes when the lab exits in
    any way, and then it kills every group still registered.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._owner = 0

    def _ensure(self) -> subprocess.Popen[bytes] | None:
        if self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None:
            return self._proc
        try:
            self._proc = subprocess.Popen(
                # By path and isolated (-I): stdlib only, whatever the cwd or PYTHONPATH.
                [sys.executable, "-I", str(REAPER_SCRIPT), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError:
            self._proc = None
            return None
        self._owner = os.getpid()
        return self._proc

    def _send(self, line: str) -> None:
        with self._lock:
            proc = self._ensure()
            if proc is None or proc.stdin is None:
                return
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write(line.encode() + b"\n")
                proc.stdin.flush()

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def watch_dir(self, path: Path, *, only_if_empty: bool = False) -> None:
        """Remove *path* (a scratch directory) if this process dies before it does; with
        *only_if_empty*, only if nothing was left in it (a run dir holding failed runs is kept)."""
        if "\n" not in str(path):
            self._send(f"{'?' if only_if_empty else '>'}{Path(path).resolve()}")

    def forget_dir(self, path: Path) -> None:
        if "\n" not in str(path):
            self._send(f"<{Path(path).resolve()}")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def close(self) -> None:
        """End the reaper cleanly (after the lab reaped its children itself)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


REAPER = Reaper()


@contextlib.contextmanager
def scratch_dir(prefix: str, dir: str | Path | None = None) -> Iterator[Path]:
    """A temporary directory that goes away however the lab ends: on exit here, or by the reaper
    when the lab is SIGKILLed (a ``TemporaryDirectory`` alone is left behind then)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    REAPER.watch_dir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        REAPER.forget_dir(path)


@dataclass
class StartFailure:
    """What a failed start looked like, for the start-up checker and for the user."""

    command: list[str]
    reason: str  # "exited" (by itself), "hang" (killed after the timeout), "not-found"
    exit_code: int | None
    elapsed: float
    stderr: list[str] = field(default_factory=list)
    leftover_processes: bool = False
    stdout: list[str] = field(default_factory=list)


class ChildStartError(RuntimeError):
    """A child did not become ready; ``.failure`` says how."""

    def __init__(self, name: str, failure: StartFailure) -> None:
        self.failure = failure
        tail = "\n".join(failure.stderr[-15:]) or "(no stderr)"
        what = {
            "exited": f"exited with code {failure.exit_code}",
            "hang": "neither became ready nor exited (killed by the lab)",
            "not-found": "could not be executed",
        }.get(failure.reason, failure.reason)
        super().__init__(
            f"{name} {shlex.join(failure.command)} {what} after {failure.elapsed:.2f}s; stderr:\n{tail}"
        )


def group_has_live_member(pgid: int) -> bool:
    """Whether a process of group *pgid* still runs. Zombies do not count: they hold nothing, and
    they stay until their parent reaps them, which a subreaper or a container's pid 1 may never do
    (Locust's forked workers become such orphans when their master is killed)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return True  # no /proc: the group exists (killpg said so), assume it runs
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


_LIVE: set[Child] = set()


@atexit.register
def _reap_all() -> None:
    for c in list(_LIVE):
        c.kill()
    REAPER.close()


class Child:
    """One supervised child process; ``Child(argv, ready=...).start()``."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "child",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        ready: Ready | None = None,
        ready_timeout: float = 30.0,
        listener: Listener | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        inherit_env: bool = True,
        group_grace: float = 0.0,
    ) -> None:
        """*env* adds to the lab's environment (``inherit_env=False``: it is the whole environment);
        *stdout*/*stderr*: ``PIPE`` (drained, last lines kept), a file, or None (inherited);
        *group_grace*: seconds the rest of its process group may take to exit after it did (a Locust
        master leaves its forked workers writing their files) before it is killed."""
        if not argv:
            raise ValueError("a child needs a command")
        if not ready_timeout > 0:
            raise ValueError(f"ready_timeout must be > 0 seconds, got {ready_timeout!r}")
        self.argv = [str(a) for a in argv]
        self.name = name
        if inherit_env:
            self.env = None if env is None else {**os.environ, **env}
        else:
            self.env = dict(env or {})
        self.cwd = cwd
        self.ready_parser = ready
        self.ready_timeout = ready_timeout
        self.listener = listener
        self.stdin_mode = stdin
        self.stdout_mode = stdout
        self.stderr_mode = stderr
        if ready is not None and stdout is not subprocess.PIPE:
            raise ValueError("a ready line is read from stdout: stdout must be PIPE")
        self.ready: Any = None  # what the ready line announced
        self.stdout_lines: collections.deque[str] = collections.deque(maxlen=TAIL)
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=TAIL)
        self.returncode: int | None = None
        self.group_grace = group_grace
        self.leftover_processes = False  # group members still running when the child itself exited
        self.signalled = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._exited = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0

    # --- state -----------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._exited.is_set()

    @property
    def stdin(self) -> Any:
        return None if self._proc is None else self._proc.stdin

    def elapsed(self) -> float:
        return time.monotonic() - self._started_at

    # --- lifecycle -------------------------------------------------------

    def start(self) -> Child:
        """Start it and wait until ready (when a ready parser was given); raises ChildStartError."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name}: a Child starts once; make a new one to restart")
        self._started_at = time.monotonic()
        try:
            self._proc = _SPAWNER.run(self._popen)
        except OSError as exc:
            self._exited.set()
            raise ChildStartError(
                self.name,
                StartFailure(self.argv, "not-found", None, self.elapsed(), [f"{type(exc).__name__}: {exc}"]),
            ) from None
        _LIVE.add(self)
        REAPER.watch(self._proc.pid)
        self._emit("started", {"pid": self._proc.pid})
        targets = [self._monitor]
        if self.stdout_mode is subprocess.PIPE:
            targets.append(self._read_stdout)
        if self.stderr_mode is subprocess.PIPE:
            targets.append(self._read_stderr)
        for target in targets:
            t = threading.Thread(target=target, name=f"{self.name}-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.ready_parser is None:
            return self
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C or a failed start: never leave it running
            self.kill()
            raise
        return self

    def _popen(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            stdin=self.stdin_mode,
            stdout=self.stdout_mode,
            stderr=self.stderr_mode,
            start_new_session=True,
            env=self.env,
            cwd=self.cwd,
            preexec_fn=_die_with_parent(os.getpid()),  # only a pre-resolved prctl call: fork-safe
        )

    def _wait_ready(self) -> None:
        deadline = self._started_at + self.ready_timeout
        while True:
            try:
                kind, data = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.signal(signal.SIGKILL)
                self._exited.wait(10)
                self._join_pipes()
                raise ChildStartError(
                    self.name,
                    StartFailure(
                        self.argv,
                        "hang",
                        self.returncode,
                        self.elapsed(),
                        list(self.stderr_lines),
                        stdout=list(self.stdout_lines),
                    ),
                ) from None
            if kind == "ready":
                self.ready = data
                self._emit("ready", {"pid": self.pid, "elapsed": round(self.elapsed(), 6)})
                return
            if kind == "exit":
                self._join_pipes()
                raise ChildStartError(
                    self.name,
                    StartFailure(
                        self.argv,
                        "exited",
                        data,
                        self.elapsed(),
                        list(self.stderr_lines),
                        self.leftover_processes,
                        list(self.stdout_lines),
                    ),
                )

    def signal(self, sig: signal.Signals, *, record: bool = True) -> None:
        """Signal the child's whole process group (never after its reap: the pid may be reused)."""
        if self._proc is None or self._exited.is_set():
            return
        if record:
            self.signalled = True
            self._emit("signal", {"signal": sig.name, "pid": self._proc.pid})
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (+ SIGCONT if it is stopped), wait *timeout*, then SIGKILL; returns the exit code."""
        if self.alive:
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT, record=False)
            if not self._exited.wait(timeout):
                self.signal(signal.SIGKILL)
        return self.wait()

    def kill(self) -> int | None:
        """SIGKILL the whole group and reap it."""
        if self.alive:
            self.signal(signal.SIGKILL)
        return self.wait()

    def stop(self) -> None:
        """SIGSTOP: frozen with its sockets open (a hung process)."""
        self.signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.signal(signal.SIGCONT)

    def exited(self, timeout: float | None = None) -> bool:
        """Wait up to *timeout* for the exit (no signal sent); True once it has exited, with all of
        its output read."""
        if self._proc is None:
            return True
        done = self._exited.wait(timeout)
        if done:
            _LIVE.discard(self)
            self._join_pipes()
        return done

    def wait(self, timeout: float | None = 15.0) -> int | None:
        """Wait for the exit the monitor saw; on a hang SIGKILL; returns the exit code."""
        if self._proc is None:
            return None
        if not self._exited.wait(timeout):
            self.signal(signal.SIGKILL)
            self._exited.wait()
        _LIVE.discard(self)
        return self.returncode

    def __enter__(self) -> Child:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate(timeout=5.0)

    # --- threads ---------------------------------------------------------

    def _emit(self, event: str, details: dict[str, Any]) -> None:
        if self.listener is not None:
            self.listener(event, details)

    def _join_pipes(self) -> None:
        for t in self._threads[1:]:
            t.join(timeout=2.0)

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.stdout_lines.append(line)
            if self.ready is None and self.ready_parser is not None:
                try:
                    got = self.ready_parser(line)
                except Exception:
                    got = None
                if got:
                    self._events.put(("ready", got))

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            self.stderr_lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def _group_alive(self) -> bool:
        try:
            os.killpg(self._proc.pid, 0)  # type: ignore[union-attr]
        except (ProcessLookupError, PermissionError):
            return False
        return group_has_live_member(self._proc.pid)  # type: ignore[union-attr]

    def _monitor(self) -> None:
        assert self._proc is not None
        code = self._proc.wait()
        # While any member lives the group id cannot be reused: wait out the grace, kill what is left.
        deadline = time.monotonic() + self.group_grace
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # the members are not our children: no exit to wait on, so look again
        self.leftover_processes = self._group_alive()
        if self.leftover_processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        REAPER.forget(self._proc.pid)
        self.returncode = code
        self._emit(
            "exit",
            {
                "pid": self._proc.pid,
                "exit_code": code,
                "uptime": round(self.elapsed(), 6),
                "signalled": self.signalled,
            },
        )
        self._exited.set()
        self._events.put(("exit", code))
