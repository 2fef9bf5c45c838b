"""Generated fault schedules: a list of workload and fault steps, drawn by Hypothesis and replayable as JSON.

Hypothesis has no async stateful machine, so the adapter is small: a strategy
draws a whole schedule (a JSON-able list of steps), and each example runs it on a
fresh lab in its own event loop (:func:`chaos.runner.run_scenario`). On a
failure Hypothesis shrinks the list and the step sizes to the smallest schedule
that still fails; the failure message prints it as a command that replays it.

Steps (``n`` is how many messages are published during the step)::

    {"op": "publish", "n": N}            plain workload
    {"op": "<fault>", "n": N}            N published while the fault holds; <fault> is any
                                         schedulable fault of the registry (chaos.faults):
                                         storage-*, postgres-stop, subscriber-cut,
                                         subscriber-slow (aimed at subscriber s1),
                                         broker-pause, broker-kill (durable store only)

Older schedules (``storage``/``fault``, ``cut``, ``slow``, ``pause``, ``kill``) are
read too. Judged: at-least-once, integrity, and hydration when a kill ran
(duplicates are allowed by PROTOCOL.md; their ratio is judged by the FMEA suites,
not here). A kill is preceded by waiting for the persistence outcome of everything
published, so the lab only holds the broker to what it said it had persisted.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from hypothesis import strategies as st

from chaos.checkers import Facts, check_at_least_once, check_hydration, check_integrity
from chaos.checkers.hydration import HYDRATION
from chaos.checkers.verdict import Verdict, not_applicable
from chaos.environment import Lab
from chaos.faults import REGISTRY, Fault
from chaos.nemesis import Nemesis
from chaos.workload import answers, publish_paced, published_ids, settle, wait_outcomes

TOPIC = "sched.t"
MAX_N = 8
LEGACY_STORAGE = {
    "latency": "storage-latency",
    "down": "storage-down",
    "hang": "storage-hang",
    "reset": "storage-reset",
}
LEGACY_OPS = {
    "cut": "subscriber-cut",
    "slow": "subscriber-slow",
    "pause": "broker-pause",
    "kill": "broker-kill",
}
SCHEDULE_PARAMS = {"storage-latency": {"latency_ms": 200}}  # a latency short enough for a short step


def schedulable() -> list[str]:
    """Registry faults a schedule can hold for a step: storage, subscriber and process faults."""
    return REGISTRY.names(where=lambda c: c.family in ("storage", "subscriber", "process"))


class ScheduleError(ValueError):
    """A schedule given by the user is malformed; the message names the step."""


def steps_strategy(durable: bool, max_steps: int = 4) -> st.SearchStrategy[list[dict[str, Any]]]:
    n = st.integers(1, MAX_N)
    storage = [f for f in schedulable() if REGISTRY.get(f).family == "storage" and f != "postgres-stop"]
    step = st.one_of(
        st.builds(lambda k: {"op": "publish", "n": k}, n),
        st.builds(lambda f, k: {"op": f, "n": k}, st.sampled_from(storage), n),
        st.builds(lambda k: {"op": "subscriber-cut", "n": k}, n),
        st.builds(lambda k: {"op": "subscriber-slow", "n": k}, n),
        st.builds(lambda k: {"op": "broker-pause", "n": k}, st.integers(1, 4)),
        *([st.just({"op": "broker-kill", "n": 0})] if durable else []),
    )
    return st.lists(step, min_size=1, max_size=max_steps)


def normalise(step: Any, i: int, durable: bool = True) -> dict[str, Any]:
    """One step in today's form (legacy ops mapped to registry names); raises ScheduleError."""
    if not isinstance(step, dict) or not isinstance(step.get("op"), str):
        raise ScheduleError(f"step {i}: expected an object with a string 'op', got {step!r}")
    op = step["op"]
    if op == "storage":
        if step.get("fault") not in LEGACY_STORAGE:
            raise ScheduleError(f"step {i}: storage 'fault' must be one of {tuple(LEGACY_STORAGE)}")
        op = LEGACY_STORAGE[step["fault"]]
    op = LEGACY_OPS.get(op, op)
    if op != "publish" and op not in schedulable():
        raise ScheduleError(f"step {i}: unknown op {step['op']!r}; use publish or one of {schedulable()}")
    k = step.get("n", 0 if op == "broker-kill" else None)
    low = 0 if op == "broker-kill" else 1
    if not isinstance(k, int) or isinstance(k, bool) or not low <= k <= 1000:
        raise ScheduleError(f"step {i}: 'n' must be an integer {low}..1000, got {k!r}")
    if op != "publish" and REGISTRY.get(op).crash and not durable:
        raise ScheduleError(f"step {i}: {op!r} needs --store postgres (a memory store loses everything)")
    return {"op": op, "n": k}


def parse_schedule(text: str, durable: bool = True) -> list[dict[str, Any]]:
    """Validate a JSON schedule (from ``--schedule`` or ``FASTPORT_LAB_SCHEDULE``)."""
    try:
        steps = json.loads(text)
    except ValueError as exc:
        raise ScheduleError(f"--schedule is not JSON: {exc}") from None
    if not isinstance(steps, list) or not steps:
        raise ScheduleError("--schedule must be a non-empty JSON list of steps")
    return [normalise(s, i, durable) for i, s in enumerate(steps)]


def label(steps: list[dict[str, Any]]) -> str:
    """A short scenario name that tells schedules apart in a report, e.g. ``schedule broker-pause3 kill``."""
    parts = [f"{s['op']}{s['n'] or ''}" for s in steps]
    return " ".join(["schedule", *parts]) if parts else "schedule (empty)"


def replay_command(
    steps: list[dict[str, Any]], broker_cmd: str | None = None, store: str | None = None
) -> str:
    cmd = ["pytest", "scenarios/test_schedules.py", "--schedule", json.dumps(steps, separators=(",", ":"))]
    if broker_cmd:
        cmd += ["--broker-cmd", broker_cmd]
    if store:
        cmd += ["--store", store]
    return shlex.join(cmd)


def schedule_scenario(steps: list[dict[str, Any]]):
    """The scenario (``async (lab, nemesis) -> verdicts``) that runs *steps*."""

    async def run_schedule(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
        lab.notes["schedule"] = steps
        s1 = lab.subscriber("s1", [TOPIC])
        s2 = lab.subscriber("s2", [TOPIC], ack="never")  # holds deliveries outstanding across kills
        pub = lab.publisher("p")
        for c in (s1, s2, pub):
            await c.start()
        ids: list[str] = []
        killed = False
        hydration_exercised = False  # a kill came after something was published (so persisted)

        def bind(op: str) -> Fault:
            cls = REGISTRY.get(op)
            params = dict(SCHEDULE_PARAMS.get(op, {}))
            if cls.family == "subscriber":
                params["sub"] = s1
            return REGISTRY.create(op, **params)

        for step in steps:
            op, n = step["op"], step["n"]
            tasks: list = []
            if op == "publish":
                tasks = await publish_paced(pub, TOPIC, n, 40.0)
            else:
                fault = bind(op)
                why = fault.unsupported(lab)
                if why is not None:
                    lab.notes.setdefault("skipped_steps", []).append(f"{op}: {why}")
                    continue
                if fault.crash:
                    await wait_outcomes(lab, pub, ids, timeout=20)
                async with nemesis.inject(fault):
                    if n:
                        tasks = await publish_paced(pub, TOPIC, n, 40.0)
                if fault.crash:
                    killed = True
                    hydration_exercised = hydration_exercised or bool(ids)
                    for s in (s1, s2):
                        await s.wait_subscribed([TOPIC], timeout=30)
                    await pub.wait_connected(timeout=30)
            got = published_ids(await answers(tasks))
            ids += got
            await settle(lab.history, [s1, s2], got)
        marker = published_ids([await pub.publish(TOPIC, "end")])  # after any replay on resubscribe
        await settle(lab.history, [s1, s2], ids + marker)
        await s2.ack_all()
        facts = Facts(lab.history)
        # Not judged here: the duplicate ratio. s2 never acks, so every kill replays all it holds and
        # repeated kills legitimately push duplicates past any fixed ratio (the FMEA suites judge it).
        verdicts = [check_at_least_once(facts), check_integrity(facts)]
        if hydration_exercised:
            verdicts.append(check_hydration(facts))
        elif killed:
            verdicts.append(not_applicable(HYDRATION, "the schedule killed the broker before publishing"))
        return verdicts

    return run_schedule
