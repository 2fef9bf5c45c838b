"""Run one chaos scenario on a fresh lab and keep what it found: the runner behind every suite.

A scenario is ``async def scenario(lab: Lab, nemesis: Nemesis) -> list[Verdict]``:
a baseline phase, a fault phase and a recovery phase driven on the lab, then the
checkers that judge what its clients recorded. :func:`run_scenario` gives it a
fresh :class:`~chaos.environment.Lab` for the broker command in a
:class:`~chaos.environment.LabConfig`, always tears the lab down, writes the
history (JSON lines, compact when big) and the verdicts into a run folder, and returns a
:class:`ScenarioResult`. The pytest tests are thin wrappers around it that call
:func:`assert_all_pass`, whose message tells a new user which invariant failed,
when, why, and where the history is.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.checkers.verdict import Verdict, is_not_applicable
from chaos.clients import HangError
from chaos.environment import Lab, LabConfig, LabSession
from chaos.history import History
from chaos.nemesis import Nemesis

Scenario = Callable[[Lab, Nemesis], Awaitable[list[Verdict]]]

# A load run's history holds millions of events: as JSON lines that is a gigabyte and a minute to write
# and to read again, so a history file over this many events is compact (History.write, .npz: about
# a sixth of the JSON lines). A suite at default intensity records 20k-60k events (3-10 MB as JSON
# lines): compact too, so a full `run` folder stays well under 20 MB; small scenarios stay readable.
COMPACT_OVER = 10_000
HISTORY_FILES = ("history.jsonl", "history.npz")  # JSON lines (small: for people to read), compact


def history_file_name(history: History) -> str:
    """``history.npz`` for a history of over :data:`COMPACT_OVER` events, else ``history.jsonl``."""
    return HISTORY_FILES[1] if len(history) > COMPACT_OVER else HISTORY_FILES[0]


def find_history_file(folder: Path) -> Path:
    """The history file of a scenario folder, in either format; FileNotFoundError names the folder."""
    for name in HISTORY_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no history file ({' or '.join(HISTORY_FILES)})")


@dataclass
class ScenarioResult:
    name: str
    config: LabConfig
    verdicts: list[Verdict]
    history: History
    run_dir: Path
    duration: float
    error: str | None = None  # the scenario itself broke (hang, launch failure): verdicts may be partial
    notes: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # fmea, flaw + expect (the flaw matrix), nodeid

    def verdict(self, name: str) -> Verdict:
        for v in self.verdicts:
            if v.name == name:
                return v
        raise KeyError(f"no verdict {name!r} in {[v.name for v in self.verdicts]}")

    @property
    def not_applicable(self) -> list[Verdict]:
        return [v for v in self.verdicts if is_not_applicable(v)]

    @property
    def problems(self) -> list[Verdict]:
        """Verdicts that are not a pass (a check that cannot apply to this broker is not a problem)."""
        na = {id(v) for v in self.not_applicable}
        return [v for v in self.verdicts if v.status != "pass" and id(v) not in na]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems

    def report(self, evidence: bool = True) -> str:
        """A plain-text account for a new user: what ran, each verdict, the evidence of the bad ones."""
        head = (
            f"scenario {self.name} against `{self.config.broker_cmd}` (store {self.config.store}) "
            f"took {self.duration:.1f}s; history and verdicts: {self.run_dir}"
        )
        lines = [head]
        if self.error:
            lines.append(f"  the scenario itself did not complete: {self.error}")
            tail = self.notes.get("broker_stderr_tail")
            if tail:
                lines.append("  last broker stderr lines:\n" + _indent("\n".join(tail), 4))
        for v in self.verdicts:
            tag = "N/A " if v in self.not_applicable else v.status.upper()
            lines.append(f"  [{tag}] {v.name}: {v.summary}")
        if evidence:
            for v in self.problems:
                ev = json.dumps(v.evidence, indent=2, default=str)
                if len(ev) > 4000:
                    ev = ev[:4000] + "\n  ... (cut; full evidence in verdicts.json)"
                lines.append(f"  evidence for {v.name}:\n" + _indent(ev, 4))
        faults = [
            f"{w.name} t={self.history.rel(w.start)}..{self.history.rel(w.end)}s effective={w.effective}"
            for w in self.history.fault_windows()
        ]
        if faults:
            lines.append("  fault windows (seconds since run start): " + "; ".join(faults))
        return "\n".join(lines)


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line for line in text.splitlines())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80] or "scenario"


def assert_all_pass(result: ScenarioResult) -> None:
    """Raise AssertionError with the full report unless every applicable verdict passed."""
    if not result.ok:
        bad = ", ".join(f"{v.name}={v.status}" for v in result.problems) or "scenario error"
        raise AssertionError(f"invariant(s) not shown to hold: {bad}\n{result.report()}")


def write_scenario_folder(result: ScenarioResult) -> None:
    """The history (``history.jsonl``, or ``history.npz`` when big: :func:`history_file_name`) and
    ``verdicts.json`` (verdicts, meta, notes, the history's file name) in the scenario's folder."""
    result.run_dir.mkdir(parents=True, exist_ok=True)
    name = history_file_name(result.history)
    for other in HISTORY_FILES:  # a folder written again must not keep a stale history of the other format
        if other != name:
            (result.run_dir / other).unlink(missing_ok=True)
    result.history.write(result.run_dir / name)
    body = {
        "scenario": result.name,
        "broker_cmd": result.config.broker_cmd,
        "store": result.config.store,
        "duration_s": round(result.duration, 3),
        "error": result.error,
        "ok": result.ok,
        "history": name,
        **result.meta,
        "verdicts": [v.to_dict() for v in result.verdicts],
        "notes": result.notes,
    }
    (result.run_dir / "verdicts.json").write_text(json.dumps(body, indent=2, default=str) + "\n")


def scenario_folder(session: LabSession, name: str) -> Path:
    """A fresh folder name for one scenario in the session's run dir (not created yet)."""
    run_dir = session.run_dir / f"{_slug(name)}-{time.strftime('%H%M%S')}-{secrets.token_hex(2)}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = run_dir.with_name(f"{run_dir.name}-{n}")
    return run_dir


def finish_scenario(
    lab: Lab,
    verdicts: list[Verdict],
    *,
    run_dir: Path,
    duration: float,
    error: str | None = None,
    meta: dict[str, Any] | None = None,
) -> ScenarioResult:
    """Keep what a scenario found: its folder (removed again on a pass unless runs are kept)."""
    notes = dict(lab.notes)
    if error is not None:
        for b in lab.brokers[-2:]:  # what the broker said may be the answer to "why"
            if b.stderr_lines:
                notes.setdefault("broker_stderr_tail", []).extend(
                    [f"[pid {b.pid}] {line}" for line in list(b.stderr_lines)[-12:]]
                )
    result = ScenarioResult(
        lab.name, lab.config, verdicts, lab.history, run_dir, duration, error, notes, dict(meta or {})
    )
    if lab.progress is not None:
        lab.progress.finish("pass" if result.ok else "error" if error else "fail")
    write_scenario_folder(result)
    write_broker_logs(lab, run_dir)
    if result.ok and not lab.session.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)  # a pass needs no post-mortem
    return result


def run_scenario(
    scenario: Scenario,
    session: LabSession,
    config: LabConfig,
    *,
    name: str | None = None,
    timeout: float = 120.0,
    meta: dict[str, Any] | None = None,
    history: History | None = None,
) -> ScenarioResult:
    """Run *scenario* on a fresh lab in its own event loop; never raises for a misbehaving broker.

    *meta* goes into the scenario's ``verdicts.json`` (e.g. ``fmea``, or ``flaw`` and ``expect``
    for the flaw matrix), which is how the gate learns it without importing any suite.
    *history*: the lab's history (default a fresh one on the monotonic clock; a load run
    records on the wall clock, which its Locust processes share).
    """
    name = name or scenario.__name__
    run_dir = scenario_folder(session, name)
    verdicts: list[Verdict] = []
    error: str | None = None
    t0 = time.monotonic()
    lab = Lab(session, config, name=name, history=History() if history is None else history)
    lab.attach_progress()

    async def main() -> None:
        nonlocal verdicts
        async with asyncio.timeout(timeout), lab:
            verdicts = await scenario(lab, Nemesis(lab))

    try:
        asyncio.run(main())
    except HangError as exc:  # a wait of the lab's own (a TimeoutError too): say what never came
        error = f"the lab waited in vain: {exc}"
    except TimeoutError as exc:
        whole = time.monotonic() - t0 >= timeout
        error = f"hung: the scenario did not finish within {timeout}s" if whole else f"TimeoutError: {exc}"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    return finish_scenario(
        lab, verdicts, run_dir=run_dir, duration=time.monotonic() - t0, error=error, meta=meta
    )


def write_broker_logs(lab: Lab, run_dir: Path) -> None:
    """The last stdout/stderr lines of each broker process, beside the history (for the "why")."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for n, b in enumerate(lab.brokers, 1):
        text = [f"# {' '.join(b.argv)}", f"# pid {b.pid} exit code {b.returncode}", "# --- stdout"]
        text += list(b.stdout_lines) + ["# --- stderr"] + list(b.stderr_lines)
        (run_dir / f"broker-{n}.log").write_text("\n".join(text) + "\n")
