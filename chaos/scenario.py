"""Run a chaos scenario against a broker and get its verdicts: shared by pytest, the flaw matrix and a CLI.

A scenario is ``async def scenario(lab: Lab, nemesis: Nemesis) -> list[Verdict]``:
a baseline phase, a fault phase and a recovery phase driven on the lab, then the
checkers that judge what its clients recorded. :func:`run_scenario` gives it a
fresh :class:`~chaos.environment.Lab` for the broker command in a
:class:`~chaos.environment.LabConfig`, always tears the lab down, writes the
history (JSON lines) and the verdicts into a run folder, and returns a
:class:`ScenarioResult`. The pytest tests are thin wrappers around it that call
:func:`assert_all_pass`, whose message tells a new user which invariant failed,
when, why, and where the history is.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.clients import HangError, Publisher, PublishResult, Subscriber
from chaos.environment import Lab, LabConfig, LabSession
from chaos.history import History
from chaos.nemesis import Nemesis, probe_healthz
from chaos.progress import attach as attach_progress

Scenario = Callable[[Lab, Nemesis], Awaitable[list[Verdict]]]
NOT_APPLICABLE = "not-applicable"  # evidence key: a check the scenario could not run here, and why


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

    def verdict(self, name: str) -> Verdict:
        for v in self.verdicts:
            if v.name == name:
                return v
        raise KeyError(f"no verdict {name!r} in {[v.name for v in self.verdicts]}")

    @property
    def not_applicable(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "unknown" and v.evidence.get(NOT_APPLICABLE)]

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


def write_run(result: ScenarioResult) -> None:
    result.run_dir.mkdir(parents=True, exist_ok=True)
    result.history.write(result.run_dir / "history.jsonl")
    body = {
        "scenario": result.name,
        "broker_cmd": result.config.broker_cmd,
        "store": result.config.store,
        "duration_s": round(result.duration, 3),
        "error": result.error,
        "ok": result.ok,
        "verdicts": [v.to_dict() for v in result.verdicts],
        "notes": result.notes,
    }
    (result.run_dir / "verdicts.json").write_text(json.dumps(body, indent=2, default=str) + "\n")


def run_scenario(
    scenario: Scenario,
    session: LabSession,
    config: LabConfig,
    *,
    name: str | None = None,
    timeout: float = 120.0,
) -> ScenarioResult:
    """Run *scenario* on a fresh lab in its own event loop; never raises for a misbehaving broker."""
    name = name or scenario.__name__
    run_dir = session.run_dir / f"{_slug(name)}-{time.strftime('%H%M%S')}-{id(scenario) % 10000:04d}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = run_dir.with_name(f"{run_dir.name}-{n}")
    history = History()
    progress = attach_progress(history, name)  # fastport-lab run's live display, when it asked for it
    verdicts: list[Verdict] = []
    error: str | None = None
    notes: dict[str, Any] = {}
    t0 = time.monotonic()

    lab = Lab(session, config, name=name, history=history)

    async def main() -> None:
        nonlocal verdicts
        async with asyncio.timeout(timeout), lab:
            try:
                verdicts = await scenario(lab, Nemesis(lab))
            finally:
                notes.update(lab.notes)

    try:
        asyncio.run(main())
    except HangError as exc:  # a wait of the lab's own (a TimeoutError too): say what never came
        error = f"the lab waited in vain: {exc}"
    except TimeoutError as exc:
        whole = time.monotonic() - t0 >= timeout
        error = f"hung: the scenario did not finish within {timeout}s" if whole else f"TimeoutError: {exc}"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    if error is not None:
        for b in lab.brokers[-2:]:  # what the broker said may be the answer to "why"
            if b.stderr_lines:
                notes.setdefault("broker_stderr_tail", []).extend(
                    [f"[pid {b.pid}] {line}" for line in list(b.stderr_lines)[-12:]]
                )
    result = ScenarioResult(name, config, verdicts, history, run_dir, time.monotonic() - t0, error, notes)
    if progress is not None:
        progress.finish("pass" if result.ok else "error" if error else "fail")
    write_run(result)
    write_broker_logs(lab, run_dir)
    if result.ok and not session.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)  # a pass needs no post-mortem
    return result


def write_broker_logs(lab: Lab, run_dir: Path) -> None:
    """The last stdout/stderr lines of each broker process, beside the history (for the "why")."""
    for n, b in enumerate(lab.brokers, 1):
        text = [f"# {' '.join(b.argv)}", f"# pid {b.pid} exit code {b.returncode}", "# --- stdout"]
        text += list(b.stdout_lines) + ["# --- stderr"] + list(b.stderr_lines)
        (run_dir / f"broker-{n}.log").write_text("\n".join(text) + "\n")


# --- workload helpers ----------------------------------------------------------------------------


async def publish_paced(
    pub: Publisher, topic: str, count: int, rate: float = 50.0, payload: Any = None, timeout: float = 20.0
) -> list[asyncio.Task[PublishResult]]:
    """Start *count* publishes at *rate* per second without waiting for their answers.

    Pacing at a rate is a workload shape, not synchronisation: each publish is its own
    task, so a broker that blocks on one publish does not slow the schedule of the next
    (latency is measured from each invoke). Await the returned tasks to collect answers.
    """
    tasks = []
    for i in range(count):
        body = payload if payload is not None else {"n": i}
        tasks.append(asyncio.create_task(pub.publish(topic, body, timeout=timeout)))
        await asyncio.sleep(1.0 / rate)
    return tasks


async def answers(tasks: Iterable[asyncio.Task[PublishResult]]) -> list[PublishResult]:
    return list(await asyncio.gather(*tasks))


async def settle(
    history: History, subs: Iterable[Subscriber], ids: Iterable[str], timeout: float = 8.0
) -> bool:
    """Wait until every subscriber got every id; on a hang record it (the checkers judge) and go on.

    The subscribers are awaited together, so a broker that lost messages costs one
    *timeout*, not one per subscriber. The default outlasts PROTOCOL.md's first retry (5 s).
    """
    ids = list(ids)
    subs = list(subs)
    outcomes = await asyncio.gather(
        *(s.wait_received(ids, timeout=timeout) for s in subs), return_exceptions=True
    )
    ok = True
    for s, out in zip(subs, outcomes, strict=True):
        if isinstance(out, HangError):
            ok = False
            history.append("lab", "info", "settle-timeout", value={"client": s.client_id, "reason": str(out)})
        elif isinstance(out, BaseException):
            raise out
    return ok


async def wait_outcomes(lab: Lab, pub: Publisher, ids: Iterable[str], timeout: float = 20.0) -> bool:
    """Wait for each id's ``persisted`` / ``persist_failed``; on a hang record why (with ``/healthz``)."""
    try:
        await pub.wait_persisted(ids, timeout=timeout)
        return True
    except HangError as exc:
        health = await probe_healthz(lab.port) if lab.port is not None else None
        lab.history.append("lab", "info", "persist-timeout", value={"reason": str(exc), "healthz": health})
        return False


def published_ids(results: Iterable[PublishResult]) -> list[str]:
    return [r.id for r in results if r.ok]


def not_applicable(name: str, why: str) -> Verdict:
    """A check this scenario cannot run against this broker/store; shown, not counted as a failure."""
    return unknown(name, f"not applicable here: {why}", **{NOT_APPLICABLE: True})


# --- a pure checker for the bad-input scenario ---------------------------------------------------

BAD_INPUT = "bad-input-answered"


def check_bad_input(history: History) -> Verdict:
    """Each malformed frame got an ``error`` with an allowed code, and the sender was still served after.

    Reads ``bad-frame`` invoke/ok/fail events and the ``ping`` sent after each frame
    (recorded by :meth:`Nemesis.malformed_frames`).
    """
    cases: dict[str, dict[str, Any]] = {}
    for ev in history.by_f("bad-frame", "ping"):
        case = ev.get("case") if ev.f == "bad-frame" else ev.get("after")
        if ev.f == "ping" and ev.type == "invoke":
            continue
        if ev.type == "invoke":
            cases[case] = {"case": case, "expect": ev.get("expect"), "sent_s": history.rel(ev.time)}
        elif ev.f == "bad-frame" and case in cases:
            cases[case]["answer"] = ev.get("answer") or ev.get("reason")
            cases[case]["answered_ok"] = ev.type == "ok"
        elif ev.f == "ping" and case in cases:
            cases[case]["still_served"] = ev.type == "ok"
    rows = list(cases.values())
    ev_ = {"frames": len(rows), "cases": rows}
    if not rows:
        return unknown(BAD_INPUT, "no malformed frame was sent, so error handling was not exercised.", **ev_)
    wrong = [r for r in rows if not r.get("answered_ok")]
    dropped = [r for r in rows if r.get("still_served") is False]
    problems = []
    if wrong:
        r = wrong[0]
        problems.append(
            f"{len(wrong)} of {len(rows)} malformed frames did not get an error with an allowed code "
            f"(first: {r['case']} at t={r['sent_s']}s expected {r['expect']}, got {r.get('answer')!r})"
        )
    if dropped:
        r = dropped[0]
        problems.append(
            f"after {len(dropped)} malformed frames the broker stopped answering the sender "
            f"(first after {r['case']}): one bad frame must not end the connection"
        )
    if problems:
        return failed(BAD_INPUT, "bad input mishandled: " + "; ".join(problems) + ".", **ev_)
    return passed(
        BAD_INPUT,
        f"all {len(rows)} malformed frames were answered with the right error code and the "
        "connection kept working.",
        **ev_,
    )


# --- a pure checker for the publisher's persistence outcome ---------------------------------------

PERSIST_OUTCOME = "persistence-outcome"


def check_persistence_outcomes(history: History) -> Verdict:
    """Each message answered ``published`` later got exactly one of ``persisted`` / ``persist_failed``.

    PROTOCOL.md section 2: the publisher is told the outcome once, ``persist_failed``
    only when the broker gave up. Run it after waiting for the outcomes (a hang timeout).
    """
    published: dict[str, float] = {}
    for ev in history.by_f("publish", type="ok"):
        if ev.id is not None:
            published.setdefault(ev.id, ev.time)
    outcomes: dict[str, list[str]] = {}
    for ev in history.by_f("persisted", "persist_failed"):
        if ev.id is not None:
            outcomes.setdefault(ev.id, []).append(ev.f)
    none = [i for i in published if i not in outcomes]
    many = [{"id": i, "outcomes": o} for i, o in outcomes.items() if len(o) > 1]
    gave_up = sum(1 for o in outcomes.values() if o == ["persist_failed"])
    ev_ = {
        "published": len(published),
        "persisted": sum(1 for o in outcomes.values() if o == ["persisted"]),
        "persist_failed": gave_up,
        "without_outcome": len(none),
        "without_outcome_ids": [{"id": i, "published_s": history.rel(published[i])} for i in none[:20]],
        "several_outcomes": many[:20],
    }
    if not published:
        return unknown(PERSIST_OUTCOME, "nothing was answered 'published', so no outcome was owed.", **ev_)
    problems = []
    if none:
        problems.append(
            f"{len(none)} of {len(published)} published messages never got 'persisted' or 'persist_failed' "
            f"(first: {none[0]}, published at t={history.rel(published[none[0]])}s)"
        )
    if many:
        problems.append(f"{len(many)} messages got more than one outcome (first: {many[0]})")
    if problems:
        return failed(
            PERSIST_OUTCOME,
            "publishers were not told the persistence outcome: " + "; ".join(problems) + ".",
            **ev_,
        )
    return passed(
        PERSIST_OUTCOME,
        f"each of {len(published)} published messages got one outcome: {ev_['persisted']} persisted, "
        f"{gave_up} persist_failed.",
        **ev_,
    )
