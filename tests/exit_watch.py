"""Start a lab command, end it one way, and report every process of it that survived.

``python tests/exit_watch.py SPEC.json`` prints one JSON line. The watcher makes
itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so everything the lab
started is re-parented to the watcher when the lab dies, however detached it
was (PostgreSQL daemonises, brokers run in sessions of their own): a survivor
cannot hide by being orphaned. Stdlib only; it never imports the lab.

SPEC keys:

* ``cmd``, ``env``, ``cwd``: the lab command;
* ``ready``: what must be running before the blow: ``processes`` (substrings of
  command lines that must each be among the lab's descendants; one listed n
  times must match n processes) and ``files``
  (glob patterns, relative to ``ready_root``, that must exist);
* ``how``: ``SIGKILL``, ``SIGTERM``, ``SIGINT``, ``SIGABRT`` (to the pid),
  ``SIGINT-group`` (to its process group) or ``ctrl-c`` (the ^C byte typed into
  the terminal the command runs in: the kernel signals the foreground group);
* ``sigint_ignored``: start the command with SIGINT ignored, as a shell starts
  a background job;
* ``timeout``: for each wait; it only fires on a hang.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
POLL = 0.05


def children_of(pid: int) -> dict[int, str]:
    """{pid: command line} of every descendant of *pid* (from /proc), zombies left out."""
    parent: dict[int, int] = {}
    cmdline: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        parent[int(name)] = int(fields[1])
        cmdline[int(name)] = cmd
    out: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        for child, pp in parent.items():
            if pp == p and child not in out:
                out[child] = cmdline[child]
                frontier.append(child)
    return out


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_until(pred, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(POLL)


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(json.dumps({"error": "prctl(PR_SET_CHILD_SUBREAPER) failed"}))
        return 2
    me = os.getpid()
    timeout = float(spec.get("timeout", 120))
    how = spec["how"]
    env = {**os.environ, **spec.get("env", {})}
    out_path = spec["output"]
    report: dict = {"how": how}

    def preexec() -> None:
        # As asked, whatever this watcher inherited: a test run started as a script's background job
        # has SIGINT ignored, and Python then never installs its KeyboardInterrupt handler.
        signal.signal(signal.SIGINT, signal.SIG_IGN if spec.get("sigint_ignored") else signal.SIG_DFL)

    master = None
    with open(out_path, "wb") as out:
        if how == "ctrl-c":
            pid, master = pty.fork()
            if pid == 0:  # the child: its own session, the pty its controlling terminal
                try:
                    os.chdir(spec.get("cwd") or ".")
                    preexec()
                    os.execvpe(spec["cmd"][0], spec["cmd"], env)
                finally:
                    os._exit(127)
        else:
            proc = subprocess.Popen(
                spec["cmd"], env=env, cwd=spec.get("cwd"), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec,
            )  # fmt: skip
            pid = proc.pid

        def pump() -> None:  # the terminal's output, so the command never blocks writing to it
            while master is not None and select.select([master], [], [], 0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                out.write(data)
                out.flush()

        status: list[int] = []  # the exit code, once reaped

        def exited() -> int | None:
            pump()
            if not status:
                got, raw = os.waitpid(pid, os.WNOHANG)
                if got == pid:
                    status.append(os.waitstatus_to_exitcode(raw))
            return status[0] if status else None

        ready = spec.get("ready", {})
        root = spec.get("ready_root", ".")

        def is_ready() -> bool:
            if exited() is not None:
                raise RuntimeError("the lab command exited before it was ready")
            running = list(children_of(pid).values())
            wanted = ready.get("processes", [])  # a substring listed n times: n processes must match
            procs = all(sum(p in c for c in running) >= wanted.count(p) for p in wanted)
            files = all(glob.glob(os.path.join(root, f), recursive=True) for f in ready.get("files", []))
            return procs and files

        try:
            wait_until(is_ready, timeout, "the lab never got ready")
        except (TimeoutError, RuntimeError) as exc:
            report["error"] = str(exc)
        report["before"] = sorted(children_of(pid).values())
        if "error" not in report:
            if how == "ctrl-c":
                os.write(master, b"\x03")
            elif how == "SIGINT-group":
                os.killpg(pid, signal.SIGINT)
            else:
                os.kill(pid, getattr(signal, how))
        try:
            wait_until(lambda: exited() is not None, timeout, "the lab did not exit")
            report["exit"] = status[0]
        except TimeoutError as exc:
            report["error"] = str(exc)
            os.killpg(pid, signal.SIGKILL)
        # Everything the lab started is the watcher's descendant now: wait for them to go.
        try:
            wait_until(lambda: reap() or not children_of(me), float(spec.get("survivor_timeout", 30)), "")
            report["survivors"] = []
        except TimeoutError:
            survivors = children_of(me)
            report["survivors"] = sorted(survivors.values())
            for p in survivors:  # leave nothing behind for the next test
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        pump()
    reap()
    with open(out_path, "rb") as f:
        report["output"] = f.read()[-20000:].decode(errors="replace")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
