"""Reclaim an embedded PostgreSQL: its processes, its SysV segment, its temp dir; also once its owner died.

``close()`` and ``atexit`` cover a normal exit and Ctrl-C, but never run on SIGKILL, default
SIGTERM, ``os._exit`` or pytest-timeout's thread method. So every server directory has a watchdog:
a child process in its own process group (a Ctrl-C or ``killpg`` of the lab's group misses it)
that holds the read end of a pipe from its owner. The owner writes what is running; when the pipe
closes, the watchdog reclaims the server last named, removes the directory and exits::

    python -I -S .../chaos/postgres/watchdog.py DIR     # command(DIR): stdlib only, starts in ~20 ms

    (``python -m chaos.postgres.watchdog DIR`` runs the same main(), but imports the whole
    package first: slower, and runpy warns that the module was already imported.)

    stdin, one line each, the last one counts:
      PID DATA_DIR   the running postmaster and its data directory
      0              nothing running (stopped, killed and already reclaimed, or not started)
    EOF: if a server was named, SIGSTOP its postmaster (no new children), SIGKILL it and every
         descendant, wait until they are gone, release its SysV segment; then remove DIR; exit 0

What a SIGKILLed PostgreSQL leaves behind, and who removes it:

* its processes: :func:`kill_server` (PostgreSQL puts each child in its own session, so a process
  group kill would reach only the postmaster: children are found by parentage);
* the small SysV segment that interlocks the data directory (``shared_memory_type=mmap`` still
  creates one; the main area is anonymous memory the kernel frees): :func:`release_shared_memory`,
  which removes only the segment the data dir's ``postmaster.pid`` names *and* whose creator is
  that postmaster, never another server's;
* dynamic shared memory: nothing here, the embedded server keeps it in the data directory
  (``dynamic_shared_memory_type=mmap``) instead of ``/dev/shm``, so it goes with the directory;
* ``postmaster.pid`` and the data: the directory.

The owner calls the same functions after its own ``kill()``. Only the standard library is used
here, so the watchdog starts fast and never imports the lab (asyncpg, psutil).
"""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import sys
import time

# Imported lazily or not at all (dataclasses, pathlib, contextlib, ctypes, shutil): each watchdog
# is a fresh interpreter on every server start, on machines with two shared cores.
SYSV_SHM = "/proc/sysvipc/shm"
IPC_RMID = 0  # <sys/ipc.h>, the same on Linux and the BSDs


# --- processes -------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, parents before children (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def _state(pid: int) -> bytes | None:
    """The state letter of ``pid`` from /proc (R, S, T, Z, ...); None: no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_gone(pid: int) -> bool:
    """``pid`` has exited: no such process, or a zombie (it holds no port, memory or file any more)."""
    state = _state(pid)
    if state is not None:
        return state in (b"Z", b"X")
    try:  # no /proc entry to read: ask the kernel whether the pid exists at all
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _signal(pid: int, sig: int, pidfd: int | None = None) -> bool:
    """Send ``sig``; False if the process is gone. A pidfd pins the process, so a reused pid is never hit."""
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_server(pid: int, pidfd: int | None = None) -> list[int]:
    """Freeze the postmaster (it forks no more), SIGKILL its descendants, then it; return all their pids.

    A stopped postmaster cannot reap its children, so their pids stay theirs until they are killed.
    """
    if not _signal(pid, signal.SIGSTOP, pidfd):
        return []
    # kill() returns once the signal is queued; a fork() under way still completes. Listing the
    # children only once the postmaster is stopped means none is missed (and left attached).
    deadline = time.monotonic() + 1.0
    while _state(pid) not in (b"T", b"t", b"Z", b"X", None) and time.monotonic() < deadline:
        time.sleep(0.0005)  # polling: a non-child's stop has no event to wait on
    family = descendants(pid)
    for child in reversed(family):
        _signal(child, signal.SIGKILL)
    _signal(pid, signal.SIGKILL, pidfd)
    return [pid, *family]


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every one of ``pids`` has exited (zombies count as exited); return those that did not.

    Waits on pidfds (readable when the process exits) where the kernel has them, so no polling.
    """
    deadline = time.monotonic() + timeout
    fds: dict[int, int] = {}
    rest: list[int] = []
    try:
        for pid in pids:
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                continue
            except (AttributeError, OSError):  # no pidfds (old kernel, not Linux): poll that one
                rest.append(pid)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        waiting = set(fds)
        while waiting and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                waiting.discard(fd)
        while rest and time.monotonic() < deadline:
            rest = [pid for pid in rest if not is_gone(pid)]
            if rest:
                time.sleep(0.005)  # no pidfd: polling for the kernel to finish the kill
        return [pid for pid in pids if not is_gone(pid)]
    finally:
        for fd in fds:
            os.close(fd)


# --- the SysV segment -------------------------------------------------------------


class Pidfile:
    """What ``postmaster.pid`` says: which postmaster wrote it and the SysV segment it created."""

    __slots__ = ("pid", "shm_key", "shm_id")

    def __init__(self, pid: int, shm_key: int | None, shm_id: int | None) -> None:
        self.pid, self.shm_key, self.shm_id = pid, shm_key, shm_id

    def __repr__(self) -> str:
        return f"Pidfile(pid={self.pid}, shm_key={self.shm_key}, shm_id={self.shm_id})"


class Segment:
    """One row of /proc/sysvipc/shm: key, id, creator pid, number of processes attached."""

    __slots__ = ("key", "shmid", "cpid", "nattch")

    def __init__(self, key: int, shmid: int, cpid: int, nattch: int) -> None:
        self.key, self.shmid, self.cpid, self.nattch = key, shmid, cpid, nattch

    def __repr__(self) -> str:
        return f"Segment(key={self.key}, shmid={self.shmid}, cpid={self.cpid}, nattch={self.nattch})"


def read_pidfile(data_dir: str | os.PathLike[str]) -> Pidfile | None:
    """``postmaster.pid`` of ``data_dir``: line 1 the postmaster pid, line 7 ``KEY SHMID`` (None: no file)."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            lines = f.read().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    key = shmid = None
    if len(lines) >= 7:
        parts = lines[6].split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            key, shmid = int(parts[0]), int(parts[1])
    return Pidfile(pid, key, shmid)


def sysv_segments() -> dict[int, Segment]:
    """The SysV shared memory segments the kernel holds, by shmid (empty where /proc has no sysvipc)."""
    try:
        with open(SYSV_SHM) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    header = lines[0].split() if lines else []
    segments = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(), strict=False))
        try:
            seg = Segment(int(row["key"]), int(row["shmid"]), int(row["cpid"]), int(row["nattch"]))
        except (KeyError, ValueError):
            continue
        segments[seg.shmid] = seg
    return segments


def remove_segment(shmid: int) -> bool:
    """``shmctl(IPC_RMID)``: the kernel frees the segment once the last process detached."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.shmctl(ctypes.c_int(shmid), ctypes.c_int(IPC_RMID), None) == 0


def attached_pids(shm_key: int) -> list[int]:
    """Processes that map the SysV segment of ``shm_key`` (``/SYSV%08x`` in /proc/PID/maps)."""
    name = f"/SYSV{shm_key % (1 << 32):08x}"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                if name in f.read():
                    pids.append(int(entry))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return pids


def release_shared_memory(
    data_dir: str | os.PathLike[str],
    pid: int,
    *,
    wait: float = 0.0,
    force: bool = False,
    kill_attached: float | None = None,
) -> list[int]:
    """Remove the SysV segment of the dead postmaster ``pid`` on ``data_dir``; return the shmids removed.

    PostgreSQL removes it itself on a clean shutdown; after a SIGKILL it stays until a postmaster
    starts on the same data dir again, and forever if none does. Only a segment that the data dir's
    ``postmaster.pid`` names and that ``pid`` created counts, so another server's never does. While
    processes are attached it is PostgreSQL's guard against two servers on one data dir: it is kept
    (after waiting up to ``wait`` seconds for them to go) unless ``force`` (the data dir is being
    removed anyway; the kernel frees it when the last one detaches). With ``kill_attached`` (seconds),
    processes still attached that long after the call are SIGKILLed: only a process forked from
    that postmaster inherits the segment, so they are the dead server's orphans (a backend forked
    as it was killed), which would otherwise keep it, and the data dir locked, until they notice.
    """
    info = read_pidfile(data_dir)
    if info is None or info.pid != pid or info.shm_id is None or info.shm_key is None:
        return []
    start = time.monotonic()
    deadline = start + wait
    next_kill = start + kill_attached if kill_attached is not None else math.inf
    while True:
        seg = sysv_segments().get(info.shm_id)
        # key_t is 32 bits: postmaster.pid prints it unsigned, /proc signed
        if seg is None or seg.cpid != pid or (seg.key - info.shm_key) % (1 << 32):
            return []
        if seg.nattch == 0 or force:
            break
        now = time.monotonic()
        if now >= next_kill:
            next_kill = now + 0.2  # a scan of every process's maps: not at the polling rate
            for orphan in attached_pids(info.shm_key):
                _signal(orphan, signal.SIGKILL)
        if now >= deadline:
            return []
        time.sleep(0.01)  # polling: the kernel has no event for "the last process detached"
    return [info.shm_id] if remove_segment(info.shm_id) else []


def reclaim(
    pid: int, data_dir: str | os.PathLike[str] | None, *, pidfd: int | None = None, timeout: float = 10.0
) -> None:
    """Kill the server whose postmaster is ``pid``, wait for it, release its SysV segment (the dir goes next).

    Without a pidfd a pid that already exited is not signalled: it may belong to someone else by now.
    """
    if pidfd is not None or not is_gone(pid):
        wait_gone(kill_server(pid, pidfd), timeout)
    if data_dir:
        release_shared_memory(data_dir, pid, force=True)


# --- the watchdog process ------------------------------------------------------------


def command(directory: str | os.PathLike[str]) -> list[str]:
    """This file as a script, isolated and without site: starts fast, imports nothing of the lab."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), os.fspath(directory)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: watchdog.py DIR  (stdin: 'PID DATA_DIR' or '0' lines)", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe closing ends it
    pid, pidfd, data_dir = 0, None, ""
    for raw in sys.stdin.buffer:
        fields = raw.strip().split(maxsplit=1)
        if not fields or not fields[0].isdigit():
            continue
        if pidfd is not None:
            os.close(pidfd)
        pid, pidfd, data_dir = int(fields[0]), None, os.fsdecode(fields[1]) if len(fields) > 1 else ""
        if pid:
            try:
                pidfd = os.pidfd_open(pid)  # pins this very process: a reused pid is never killed
            except (AttributeError, OSError):
                pidfd = None
    if pid:
        reclaim(pid, data_dir, pidfd=pidfd)
    import shutil

    shutil.rmtree(args[0], ignore_errors=True)
    return 0


class Watchdog:
    """The owner's handle on the watchdog of ``directory``: say what runs; close once cleaned up."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            command(directory), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, process_group=0, close_fds=True,
        )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def watch(self, pid: int, data_dir: str | os.PathLike[str] | None = None) -> None:
        """The postmaster ``pid`` on ``data_dir`` is running (0: nothing is)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        line = f"{pid} {os.fspath(data_dir)}\n" if pid and data_dir is not None else "0\n"
        try:
            proc.stdin.write(os.fsencode(line))
            proc.stdin.flush()
        except OSError:  # it died: nothing to tell
            pass

    def close(self) -> None:
        """We cleaned up ourselves: tell it nothing runs, let it exit (it removes the dir, if left)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.write(b"0\n")
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
