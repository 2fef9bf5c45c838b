"""FMEA 4: with its port taken, the broker fails clearly and fast instead of hanging half-started.

Fed from the launcher's events (docs/checkers.md): each ``launch`` invoked while
a ``port-squat`` fault window holds the same port must end in ``fail launch``
with reason ``exited``, a non-zero exit code, within *deadline* seconds (5 s in
PROTOCOL.md), a stderr line containing ``address already in use`` and the port,
and no process of its group left behind. A broker that reports listening, hangs
until the lab kills it, or exits 0 fails. Unknown when no squat window landed or
no start was attempted on the squatted port.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from chaos.checkers.facts import Facts
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import Event, FaultWindow, History

NAME = "start-up-port-taken"
NEEDLE = "address already in use"


def _outcome(history: History, invoke: Event) -> Event | None:
    for ev in history.by_process(invoke.process):
        if ev.index > invoke.index and ev.f == "launch" and ev.type in ("ok", "fail"):
            return ev
    return None


def _judge(history: History, invoke: Event, out: Event | None, port: Any, deadline: float) -> tuple[str, str]:
    """(status, reason) for one start attempt on a taken port."""
    if out is None:
        return "unknown", "the launch has no outcome in the history (run ended while starting)"
    if out.type == "ok":
        return "fail", (
            f"the broker reported listening (pid {out.get('pid')}, port {out.get('port')}) "
            f"although port {port} was taken: it started instead of failing"
        )
    reason, code, elapsed = out.get("reason"), out.get("exit_code"), out.get("elapsed")
    if reason == "hang":
        return "fail", (
            f"the broker neither listened nor exited within {elapsed}s and had to be killed by the "
            f"lab (half-started, hanging)"
        )
    if reason != "exited" or not isinstance(code, int):
        return "fail", f"the launch failed without the broker exiting by itself (reason {reason!r})"
    if code == 0:
        return "fail", "the broker exited 0 although it could not listen; it must exit non-zero"
    if code < 0:
        return "fail", f"the broker died from signal {-code} instead of exiting with an error code"
    if not isinstance(elapsed, (int, float)) or elapsed > deadline:
        return "fail", f"the broker took {elapsed}s to exit, over the {deadline}s limit"
    lines = out.get("stderr") or []
    if isinstance(lines, str):
        lines = lines.splitlines()
    if not any(NEEDLE in str(line).lower() and str(port) in str(line) for line in lines):
        return "fail", (
            f"no stderr line contains both {NEEDLE!r} and the port {port}; a user could not tell "
            f"why it exited (last stderr: {lines[-3:]!r})"
        )
    if out.get("leftover_processes"):
        return "fail", "processes of the broker's group were still running after it exited (half-started)"
    return "pass", f"exited {code} after {elapsed}s with a clear stderr line"


def check_startup(
    history: History | Facts, *, deadline: float = 5.0, faults: Collection[str] = ("port-squat",)
) -> Verdict:
    history = history.history if isinstance(history, Facts) else history
    if not isinstance(history, History):
        raise TypeError(f"checkers take a chaos.history.History, got {type(history).__name__}")
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0:
        raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
    windows: list[FaultWindow] = [w for w in history.fault_windows() if w.name in faults]
    ev: dict[str, Any] = {"deadline_s": deadline, "attempts": []}
    if not windows:
        return unknown(
            NAME,
            f"no port-squat fault window (named one of {sorted(faults)}) in the history, so "
            "start-up on a taken port was not exercised.",
            **ev,
        )
    landed = [w for w in windows if w.effective is True]
    if not landed:
        return unknown(
            NAME,
            "the port-squat fault was not confirmed to hold the port (its evidence lacks "
            "'effective': true), so a failing start proves nothing.",
            **ev,
        )
    end = history.end
    results = []
    for inv in history.by_f("launch", type="invoke"):
        w = next((w for w in landed if w.contains(inv.time, end)), None)
        if w is None:
            continue
        port = w.evidence.get("port", inv.get("port"))
        if inv.get("port") != port:
            continue
        out = _outcome(history, inv)
        status, reason = _judge(history, inv, out, port, deadline)
        att = {
            "process": inv.process,
            "port": port,
            "started_s": history.rel(inv.time),
            "status": status,
            "reason": reason,
        }
        if out is not None:
            att.update({k: out.get(k) for k in ("exit_code", "elapsed", "reason") if out.get(k) is not None})
            att["reason"] = reason
            att["stderr_tail"] = list((out.get("stderr") or [])[-5:])
        ev["attempts"].append(att)
        results.append(att)
    if not results:
        return unknown(NAME, "no broker start was attempted on the squatted port while it was taken.", **ev)
    bad = [a for a in results if a["status"] == "fail"]
    if bad:
        a = bad[0]
        return failed(
            NAME,
            f"start-up with port {a['port']} taken (attempt at t={a['started_s']}s) misbehaved: "
            f"{a['reason']}.",
            **ev,
        )
    if any(a["status"] == "unknown" for a in results):
        return unknown(NAME, "a start on the squatted port has no outcome in the history.", **ev)
    a = results[0]
    return passed(
        NAME, f"with port {a['port']} taken the broker failed fast and clearly: {a['reason']}.", **ev
    )
