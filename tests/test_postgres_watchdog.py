"""chaos.postgres.watchdog on its own: a fake server (a process tree holding a SysV segment, with a
postmaster.pid naming it) stands in for PostgreSQL, so each rule is checked without a database."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.postgres import watchdog
from tests.footprint import running, shm_remove, shm_segments

pytestmark = pytest.mark.integration

IPC_CREAT, IPC_EXCL = 0o1000, 0o2000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.shmdt.argtypes = (ctypes.c_void_p,)


def new_segment() -> tuple[int, int]:
    """A 56-byte SysV segment of our own, under a fresh random key (as PostgreSQL's interlock is)."""
    while True:
        key = random.randrange(1 << 24, 1 << 30)
        flags = ctypes.c_int(IPC_CREAT | IPC_EXCL | 0o600)
        shmid = _libc.shmget(ctypes.c_int(key), ctypes.c_size_t(56), flags)
        if shmid >= 0:
            return key, shmid


def write_pidfile(data_dir: Path, pid: int, key: int, shmid: int) -> None:
    """postmaster.pid as PostgreSQL writes it: pid, dir, start, port, socket dir, host, shm, status."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [str(pid), str(data_dir), "0", "5432", "", "127.0.0.1", f"{key:9d} {shmid:9d}", "ready   "]
    (data_dir / "postmaster.pid").write_text("\n".join(lines) + "\n")


FAKE_SERVER = textwrap.dedent(
    """
    import ctypes, os, random, signal, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
    while True:
        key = random.randrange(1 << 24, 1 << 30)
        shmid = libc.shmget(ctypes.c_int(key), ctypes.c_size_t(56), ctypes.c_int(0o3600))
        if shmid >= 0:
            break
    assert libc.shmat(shmid, None, 0) not in (None, ctypes.c_void_p(-1).value)
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # like PostgreSQL's children: attached (inherited), in a session of their own
            os.setsid()
            while True:
                signal.pause()
        children.append(pid)
    print(os.getpid(), key, shmid, *children, flush=True)
    while True:
        signal.pause()
    """
)


@dataclass
class FakeServer:
    proc: subprocess.Popen[str]
    children: list[int]
    key: int
    shmid: int
    base: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def segment_alive(self) -> bool:
        row = shm_segments().get(self.shmid)
        return row is not None and row["cpid"] == self.pid


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeServer]:
    proc = subprocess.Popen([sys.executable, "-c", FAKE_SERVER], stdout=subprocess.PIPE, text=True)
    server = None
    try:
        assert proc.stdout is not None
        pid, key, shmid, *children = map(int, proc.stdout.readline().split())
        assert pid == proc.pid
        server = FakeServer(proc, children, key, shmid, tmp_path / "server")
        write_pidfile(server.data_dir, pid, key, shmid)
        assert shm_segments()[shmid]["nattch"] == 3 and server.segment_alive()
        yield server
    finally:
        for child in server.children if server else []:
            if running(child) and b"signal.pause" in Path(f"/proc/{child}/cmdline").read_bytes():
                os.kill(child, signal.SIGKILL)
        proc.kill()
        proc.wait()
        if server is not None and server.segment_alive():
            shm_remove(server.shmid)


def start_watchdog(directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(watchdog.command(directory), stdin=subprocess.PIPE)


def finish(dog: subprocess.Popen[bytes], lines: list[str]) -> None:
    """Write ``lines``, close the pipe as a dying owner would, and wait for the watchdog to exit."""
    assert dog.stdin is not None
    dog.stdin.write("".join(line + "\n" for line in lines).encode())
    dog.stdin.close()
    assert dog.wait(30) == 0


def test_pipe_closed_reclaims_the_named_server(fake: FakeServer) -> None:
    dog = start_watchdog(fake.base)
    finish(dog, [f"{fake.pid} {fake.data_dir}"])
    # the watchdog waited for every process before it exited: nothing is left to wait for
    assert fake.proc.poll() == -signal.SIGKILL
    assert not any(running(child) for child in fake.children)
    assert not fake.segment_alive()
    assert not fake.base.exists()


def test_zero_means_nothing_runs_only_the_dir_goes(fake: FakeServer) -> None:
    dog = start_watchdog(fake.base)
    finish(dog, [f"{fake.pid} {fake.data_dir}", "0"])
    assert fake.proc.poll() is None and all(running(child) for child in fake.children)
    assert fake.segment_alive()
    assert not fake.base.exists()


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


def test_the_last_line_counts(fake: FakeServer, tmp_path: Path) -> None:
    bystander = sleeper()  # named first, then replaced: must survive
    try:
        dog = start_watchdog(fake.base)
        finish(dog, [f"{bystander.pid} {tmp_path / 'other'}", "0", f"{fake.pid} {fake.data_dir}"])
        assert fake.proc.poll() == -signal.SIGKILL and not fake.segment_alive()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_server_that_already_died_still_has_its_segment_released(fake: FakeServer) -> None:
    """The owner died between its own kill() and telling the watchdog: the pid is gone (maybe reused
    later, so it is not signalled), the segment and the dir are still there."""
    for pid in fake.children:
        os.kill(pid, signal.SIGKILL)
    fake.proc.kill()
    fake.proc.wait()  # reaped: the pid is free
    assert fake.segment_alive()
    dog = start_watchdog(fake.base)
    finish(dog, [f"{fake.pid} {fake.data_dir}"])
    assert not fake.segment_alive() and not fake.base.exists()


def test_command_line(tmp_path: Path) -> None:
    """What Watchdog runs, as a script of its own: usage errors, and a plain exit when told nothing runs."""
    usage = subprocess.run(watchdog.command(tmp_path)[:-1], capture_output=True, timeout=30)
    assert usage.returncode == 2 and b"usage" in usage.stderr
    directory = tmp_path / "d"
    directory.mkdir()
    run = subprocess.run(watchdog.command(directory), input=b"0\n", capture_output=True, timeout=30)
    assert (run.returncode, run.stderr) == (0, b"") and not directory.exists()


# --- release_shared_memory: only the dead server's own segment ------------------------


@pytest.fixture
def own_segment() -> Iterator[tuple[int, int]]:
    key, shmid = new_segment()
    try:
        yield key, shmid
    finally:
        if shmid in shm_segments():
            shm_remove(shmid)


def test_release_removes_the_segment_named_and_created_by_the_postmaster(
    tmp_path: Path, own_segment: tuple[int, int]
) -> None:
    key, shmid = own_segment  # created by this process: we play the dead postmaster
    write_pidfile(tmp_path, os.getpid(), key, shmid)
    assert watchdog.release_shared_memory(tmp_path, os.getpid()) == [shmid]
    assert shmid not in shm_segments()
    assert watchdog.release_shared_memory(tmp_path, os.getpid()) == []  # gone: nothing to do


@pytest.mark.parametrize("mismatch", ["pidfile of another postmaster", "segment of another creator", "key"])
def test_release_leaves_segments_that_are_not_the_servers(
    tmp_path: Path, own_segment: tuple[int, int], mismatch: str
) -> None:
    key, shmid = own_segment
    me, other = os.getpid(), os.getppid()
    if mismatch == "pidfile of another postmaster":
        write_pidfile(tmp_path, other, key, shmid)
        asked = me
    elif mismatch == "segment of another creator":
        write_pidfile(tmp_path, other, key, shmid)
        asked = other
    else:
        write_pidfile(tmp_path, me, key + 1, shmid)
        asked = me
    assert watchdog.release_shared_memory(tmp_path, asked, force=True) == []
    assert shm_segments()[shmid]["cpid"] == me


def test_release_keeps_an_attached_segment_unless_forced(
    tmp_path: Path, own_segment: tuple[int, int]
) -> None:
    """Attached means processes of that server still run: the segment is PostgreSQL's interlock then."""
    key, shmid = own_segment
    write_pidfile(tmp_path, os.getpid(), key, shmid)
    address = _libc.shmat(shmid, None, 0)
    assert address not in (None, ctypes.c_void_p(-1).value)
    try:
        assert watchdog.release_shared_memory(tmp_path, os.getpid()) == []
        assert shm_segments()[shmid]["nattch"] == 1
        assert watchdog.release_shared_memory(tmp_path, os.getpid(), force=True) == [shmid]
    finally:
        _libc.shmdt(ctypes.c_void_p(address))
    assert shmid not in shm_segments()  # freed at the last detach


def test_wait_gone_returns_when_the_processes_exit() -> None:
    procs = [sleeper(), sleeper()]
    try:
        pids = [p.pid for p in procs]
        assert watchdog.wait_gone(pids, 0.0) == pids  # both still run
        for p in procs:
            p.kill()
        assert watchdog.wait_gone(pids, 30.0) == []  # zombies (not reaped yet) count as gone
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_kill_server_reaches_children_in_their_own_sessions(fake: FakeServer) -> None:
    pids = watchdog.kill_server(fake.pid)
    assert sorted(pids) == sorted([fake.pid, *fake.children])
    assert watchdog.wait_gone(pids, 30.0) == []
    assert fake.proc.wait(30) == -signal.SIGKILL
