"""The supervisor's promises when the lab dies without any cleanup of its own (SIGKILL).

A lab process starts a child and takes a scratch dir and a run dir, prints what
it made, and is SIGKILLed: the child's group is gone (death signal + reaper),
the scratch dir is removed, the run dir only when it is empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chaos.config import ROOT
from chaos.supervisor import group_has_live_member

LAB = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from chaos.supervisor import Child, REAPER, scratch_dir
    root = Path(sys.argv[1])
    keep, empty = root / "run-with-a-failure", root / "run-empty"
    for d in (keep, empty):
        d.mkdir()
        REAPER.watch_dir(d, only_if_empty=True)
    (keep / "failed-scenario").mkdir()
    child = Child(["sleep", "300"], name="sleeper").start()
    with scratch_dir("lab-scratch-", dir=root) as scratch:
        (scratch / "data").write_text("x")
        print(json.dumps({"child": child.pid, "scratch": str(scratch)}), flush=True)
        time.sleep(300)
    """
)


def gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(pred, timeout: float = 15.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_lab_leaves_no_child_and_no_scratch_dir(tmp_path: Path, sig: signal.Signals) -> None:
    lab = subprocess.Popen(
        [sys.executable, "-c", LAB, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        made = json.loads(lab.stdout.readline())
        scratch = Path(made["scratch"])
        assert scratch.is_dir() and not gone(made["child"])
        lab.send_signal(sig)
        assert lab.wait(15) != 0
        assert wait_for(lambda: gone(made["child"])), "the child outlived the lab"
        assert wait_for(lambda: not scratch.exists()), "the scratch dir outlived the lab"
        assert wait_for(lambda: not (tmp_path / "run-empty").exists()), "the empty run dir was left"
        assert (tmp_path / "run-with-a-failure" / "failed-scenario").is_dir(), "a failed run's folder is kept"
    finally:
        lab.kill()
        lab.wait()


def test_a_group_of_zombies_is_not_alive() -> None:
    """Orphans nobody reaps (a subreaper's, a container pid 1's) must not hold a Child's exit for
    its whole group grace: a zombie member is a dead one."""
    live = subprocess.Popen(["sleep", "30"], start_new_session=True)
    dead = subprocess.Popen(["true"], start_new_session=True)
    try:
        assert group_has_live_member(live.pid)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{dead.pid}/stat").read_bytes().split(b") ")[1][:1] != b"Z":
            assert time.monotonic() < deadline, "`true` never exited"
            time.sleep(0.01)
        os.killpg(dead.pid, 0)  # the group still exists for the kernel...
        assert not group_has_live_member(dead.pid)  # ...but nothing in it runs
    finally:
        live.kill()
        live.wait()
        dead.wait()
