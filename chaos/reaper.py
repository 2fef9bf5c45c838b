"""The lab's reaper: ``python -I chaos/reaper.py LAB_PID``, started by :mod:`chaos.supervisor`.

It reads ``+PGID`` (watch) and ``-PGID`` (forget) lines on stdin. When stdin
closes (the lab exited, was killed, or crashed: the kernel closes the pipe in
every case) it SIGKILLs every process group still watched, then exits. It runs
in a session of its own and ignores SIGINT, SIGTERM and SIGHUP, so whatever
stopped the lab does not stop the cleanup; only the pipe ends it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def kill_groups(groups: set[int]) -> None:
    for pgid in sorted(groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
