"""What one PostgreSQL server holds outside its processes, found from the server itself.

Other engineers' servers create and leak segments on the same machine all the time, so a test
that diffs /dev/shm or ``ipcs`` before and after could pass (or fail) because of them. A
:class:`Footprint` instead records what *this* server's processes hold while it runs: the SysV
segments they created (creator pid), the shared files they map (dynamic shared memory), and
then checks exactly those. Written independently of ``chaos.postgres.watchdog``, so the code
under test does not check itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

SYSV_SHM = Path("/proc/sysvipc/shm")


def shm_segments() -> dict[int, dict[str, int]]:
    """/proc/sysvipc/shm by shmid: key, cpid, nattch, ..."""
    lines = SYSV_SHM.read_text().splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[1:]:
        row = {name: int(value) for name, value in zip(header, line.split(), strict=False)}
        rows[row["shmid"]] = row
    return rows


def shm_remove(shmid: int) -> None:
    """IPC_RMID: for a test's own segments, and for those its server leaked when the test failed."""
    ctypes.CDLL(None, use_errno=True).shmctl(ctypes.c_int(shmid), ctypes.c_int(0), None)


def running(pid: int) -> bool:
    """Exists and is not a zombie (a zombie holds no memory, port or file)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")


def shared_file_mappings(pid: int) -> set[Path]:
    """Files ``pid`` maps shared and writable: PostgreSQL's dynamic shared memory segments.

    Leaves out anonymous shared memory (``/dev/zero (deleted)``), the attached SysV segments
    (``/SYSV... (deleted)``) and read-only shared mappings of system files (gconv's cache).
    """
    found = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[1].startswith("rw") and fields[1][3] == "s":
                path = fields[5].strip()
                if path.startswith("/") and not path.endswith("(deleted)"):
                    found.add(Path(path))
    return found


@dataclass
class Footprint:
    """Every process, SysV segment and shared file one server was seen with."""

    base_dir: Path
    data_dir: Path
    pids: set[int] = field(default_factory=set)
    segments: dict[int, int] = field(default_factory=dict)  # shmid -> creator pid
    shared_files: set[Path] = field(default_factory=set)

    def observe(self, pids: list[int]) -> set[Path]:
        """Record what the running server's processes hold now; return the shared files mapped now."""
        assert pids, "observe a running server"
        self.pids |= set(pids)
        now: set[Path] = set()
        for pid in pids:
            now |= shared_file_mappings(pid)
        self.shared_files |= now
        for shmid, row in shm_segments().items():
            if row["cpid"] in pids:
                self.segments[shmid] = row["cpid"]
        return now

    def _ours(self, pid: int) -> bool:
        """Still running, and still this server's: PostgreSQL processes work in the data dir (so a
        reused pid is neither reported nor killed)."""
        if not running(pid):
            return False
        try:
            return os.readlink(f"/proc/{pid}/cwd").startswith(str(self.data_dir))
        except OSError:
            return False

    def _outside(self, path: Path) -> bool:
        return not path.is_relative_to(self.base_dir)

    def live_segments(self) -> list[int]:
        rows = shm_segments()
        return [s for s, cpid in self.segments.items() if s in rows and rows[s]["cpid"] == cpid]

    def leftovers(self) -> list[str]:
        """What a dead (killed or stopped) server still holds outside its own temp dir."""
        left = [f"process {pid}" for pid in sorted(self.pids) if self._ours(pid)]
        left += [f"SysV segment {shmid} (creator {self.segments[shmid]})" for shmid in self.live_segments()]
        left += [f"shared file {p}" for p in sorted(self.shared_files) if self._outside(p) and p.exists()]
        return left

    def everything_left(self) -> list[str]:
        """What a closed server still holds anywhere, its temp dir included."""
        left = self.leftovers()
        left += [f"shared file {p}" for p in sorted(self.shared_files) if not self._outside(p) and p.exists()]
        return left + ([f"temp dir {self.base_dir}"] if self.base_dir.exists() else [])

    def as_json(self) -> dict[str, object]:
        return {
            "base_dir": str(self.base_dir),
            "data_dir": str(self.data_dir),
            "pids": sorted(self.pids),
            "segments": {str(k): v for k, v in self.segments.items()},
            "shared_files": sorted(map(str, self.shared_files)),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Footprint:
        return cls(
            Path(str(data["base_dir"])),
            Path(str(data["data_dir"])),
            set(data["pids"]),  # type: ignore[call-overload]
            {int(k): int(v) for k, v in data["segments"].items()},  # type: ignore[attr-defined]
            {Path(p) for p in data["shared_files"]},  # type: ignore[attr-defined]
        )

    def clean_up(self) -> None:
        """Remove whatever of this server is still there, so a failing test leaks nothing either."""
        for pid in self.pids:
            if self._ours(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for shmid in self.live_segments():
            shm_remove(shmid)
        for path in self.shared_files:
            if path.name.startswith("PostgreSQL.") and path.parent == Path("/dev/shm"):
                path.unlink(missing_ok=True)
        shutil.rmtree(self.base_dir, ignore_errors=True)
