"""The lab's reaper: ``python -I chaos/reaper.py LAB_PID``, started by :mod:`chaos.supervisor`.

It reads ``+PGID`` (watch) and ``-PGID`` (forget) lines on stdin, ``>PATH`` (a
scratch directory of the lab), ``?PATH`` (a directory to remove if it is empty:
a run dir that may hold the folders of failed runs) and ``<PATH`` (forget it).
When stdin closes (the lab exited, was killed, or crashed: the kernel closes the
pipe in every case) it SIGKILLs every process group still watched, removes the
directories still named, then exits. It runs
in a session of its own and ignores SIGINT, SIGTERM and SIGHUP, so whatever
stopped the lab does not stop the cleanup; only the pipe ends it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys


def kill_groups(groups: set[int]) -> None:
    for pgid in sorted(groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def remove_dirs(dirs: dict[bytes, bytes]) -> None:
    for path in sorted(dirs, reverse=True):  # children before parents
        if dirs[path] == b">":
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    dirs: dict[bytes, bytes] = {}
    for raw in sys.stdin.buffer:
        line = raw.rstrip(b"\n")
        if line[:1] in (b">", b"?", b"<") and os.path.isabs(line[1:]):
            if line[:1] == b"<":
                dirs.pop(line[1:], None)
            else:
                dirs[line[1:]] = line[:1]
            continue
        line = line.strip()
        if len(line) < 2 or line[:1] not in (b"+", b"-") or not line[1:].isdigit():
            continue
        pgid = int(line[1:])
        if pgid <= 1:
            continue
        if line[:1] == b"+":
            groups.add(pgid)
        else:
            groups.discard(pgid)
    kill_groups(groups)
    remove_dirs(dirs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
