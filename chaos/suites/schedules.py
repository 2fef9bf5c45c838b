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
                                         subscriber-slow (aimed at subscriber s1; it
                                         sends n x 5 incompressible 64 KiB messages),
                                         broker-pause, broker-kill (durable store only)

Older schedules (``storage``/``fault``, ``cut``, ``slow``, ``pause``, ``kill``) are
read too.

The draws are derandomized (the same schedules on every run) unless
``FASTPORT_LAB_SEED`` (``fastport-lab run --seed N``) seeds them: :func:`seed_from_env`.

The strategy is weighted towards what finds bugs: every schedule starts with a
baseline burst (so latency has something to be compared with), subscriber
``s2`` never acks (so a kill always leaves deliveries owed), kills are drawn
often and land in the middle of a burst, and fault steps carry bursts large
enough to judge. Judged: at-least-once, integrity, hydration and resurrection
when a kill ran, availability during storage faults and isolation during
subscriber faults when there were enough samples (duplicates are allowed by
PROTOCOL.md; their ratio is judged by the FMEA suites, not here). A schedule
fails on a *fail* verdict only: a check without enough samples is unknown.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_availability,
    check_hydration,
    check_integrity,
    check_isolation,
    check_resurrection,
)
from chaos.checkers.hydration import HYDRATION
from chaos.checkers.verdict import Verdict, is_not_applicable, not_applicable
from chaos.clients import Publisher, wait_for
from chaos.environment import Lab
from chaos.faults import REGISTRY, Fault
from chaos.nemesis import Nemesis
from chaos.workload import answers, incompressible, publish_paced, published_ids, settle, wait_outcomes

TOPIC = "sched.t"
MAX_N = 40
RATE = 200.0
BASELINE = {"op": "publish", "n": 30}
SLOW_FACTOR, BIG = 5, 64 << 10  # a subscriber-slow step of n sends n x 5 messages of 64 KiB


def big(_i: int) -> str:
    return incompressible(BIG)


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
    """Registry faults a schedule can hold for a step: storage, subscriber (on s1's own connection)
    and process faults."""
    return REGISTRY.names(
        where=lambda c: c.family in ("storage", "process") or c.name in ("subscriber-cut", "subscriber-slow")
    )


class ScheduleError(ValueError):
    """A schedule given by the user is malformed; the message names the step."""


ENV_SEED = "FASTPORT_LAB_SEED"  # exported by `fastport-lab run / gate --seed N`


def seed_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The Hypothesis seed the schedules are drawn with (``FASTPORT_LAB_SEED``), or None: derandomized,
    the same schedules on every run, which CI wants; a seed draws other ones, reproducibly."""
    text = (os.environ if environ is None else environ).get(ENV_SEED, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ScheduleError(f"{ENV_SEED} must be an integer (the --seed of run/gate), got {text!r}") from None


def steps_strategy(durable: bool, max_steps: int = 4) -> st.SearchStrategy[list[dict[str, Any]]]:
    """A baseline burst, then 1..*max_steps* steps; kills (durable stores) drawn as often as all else."""
    n = st.integers(1, MAX_N)
    storage = [f for f in schedulable() if REGISTRY.get(f).family == "storage" and f != "postgres-stop"]
    other = st.one_of(
        st.builds(lambda k: {"op": "publish", "n": k}, n),
        st.builds(lambda f, k: {"op": f, "n": k}, st.sampled_from(storage), st.integers(10, MAX_N)),
        st.builds(lambda k: {"op": "subscriber-cut", "n": k}, n),
        st.builds(lambda k: {"op": "subscriber-slow", "n": k}, n),
        st.builds(lambda k: {"op": "broker-pause", "n": k}, st.integers(1, 8)),
    )
    # A kill lands in the middle of a burst of n publishes (n=0: between bursts).
    kill = st.builds(lambda k: {"op": "broker-kill", "n": k}, st.integers(0, MAX_N))
    step = st.one_of(kill, other) if durable else other
    return st.lists(step, min_size=1, max_size=max_steps).map(lambda steps: [dict(BASELINE), *steps])


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


async def _kill_mid_burst(lab: Lab, nemesis: Nemesis, pub: Publisher, fault: Fault, n: int) -> list:
    first = pub.seq
    burst = asyncio.create_task(publish_paced(pub, TOPIC, n, RATE))
    await wait_for(lab.history, lambda: pub.seq - first >= n // 2 or burst.done(), timeout=20)
    async with nemesis.inject(fault):
        pass
    return await burst


def _exercised(v: Verdict) -> Verdict:
    """A generated schedule is short: a check it gave too few samples (a step of 3 publishes, acks
    too recent before a kill) is not applicable to it, not unknown, so the gate can pass a run of
    schedules; a fault that did not land (or was not confirmed to) keeps its verdict unknown."""
    if v.status != "unknown" or is_not_applicable(v):
        return v
    if any(w.get("effective") is not True for w in v.evidence.get("windows") or []):
        return v
    return not_applicable(v.name, f"the schedule was too short to exercise it: {v.summary}")


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
        # ids whose outcome can still come: a crash loses the outcomes of what it interrupted
        # (PROTOCOL.md sends them on the publishing connection), so waiting for those would only time out
        unsettled: list[str] = []
        settled = True  # every step's messages reached both subscribers in time
        killed = False
        hydration_exercised = False  # a kill came after something was published (so persisted)

        def bind(op: str) -> Fault:
            cls = REGISTRY.get(op)
            params = dict(SCHEDULE_PARAMS.get(op, {}))
            if cls.family == "subscriber":
                params["subs" if op == "subscriber-slow" else "sub"] = s1
            return REGISTRY.create(op, **params)

        for step in steps:
            op, n = step["op"], step["n"]
            tasks: list = []
            crashed = False
            if op == "publish":
                tasks = await publish_paced(pub, TOPIC, n, RATE)
            else:
                fault = bind(op)
                why = fault.unsupported(lab)
                if why is not None:
                    lab.notes.setdefault("skipped_steps", []).append(f"{op}: {why}")
                    continue
                if fault.crash:
                    await wait_outcomes(lab, pub, unsettled, timeout=20)
                    if n:  # the kill lands in the middle of a burst
                        tasks = await _kill_mid_burst(lab, nemesis, pub, fault, n)
                    else:
                        async with nemesis.inject(fault):
                            pass
                elif op == "subscriber-slow":  # enough incompressible bytes to fill the socket buffers
                    async with nemesis.inject(fault):
                        tasks = await publish_paced(pub, TOPIC, n * SLOW_FACTOR, RATE, big, timeout=60)
                        await settle(lab.history, [s2], [f"{pub.client_id}-{pub.seq - 1}"], timeout=5)
                else:
                    async with nemesis.inject(fault):
                        if n:
                            tasks = await publish_paced(pub, TOPIC, n, RATE)
                if fault.crash:
                    killed = crashed = True
                    hydration_exercised = hydration_exercised or bool(ids)
                    for s in (s1, s2):
                        await s.wait_subscribed([TOPIC], timeout=30)
                    await pub.wait_connected(timeout=30)
            got = published_ids(await answers(tasks))
            ids += got
            unsettled = [] if crashed else unsettled + got
            # once something is overdue the run fails unless the final settle sees it come: later
            # steps wait less, so a failing schedule (and each of its shrinks) runs in seconds
            settled = await settle(lab.history, [s1, s2], got, timeout=8.0 if settled else 2.0) and settled
        marker = published_ids([await pub.publish(TOPIC, "end")])  # after any replay on resubscribe
        await settle(lab.history, [s1, s2], ids + marker)
        await s2.ack_all()
        facts = Facts(lab.history)
        # Not judged here: the duplicate ratio. s2 never acks, so every kill replays all it holds and
        # repeated kills legitimately push duplicates past any fixed ratio (the FMEA suites judge it).
        verdicts = [check_at_least_once(facts), check_integrity(facts)]
        ops = {s["op"] for s in steps}
        if any(REGISTRY.get(o).family == "storage" for o in ops if o != "publish"):
            verdicts.append(_exercised(check_availability(facts, factor=3.0, slack=0.2)))
        if ops & {"subscriber-cut", "subscriber-slow"}:
            verdicts.append(_exercised(check_isolation(facts, factor=3.0, slack=0.5)))
        if hydration_exercised:
            verdicts += [check_hydration(facts), _exercised(check_resurrection(facts))]
        elif killed:
            verdicts.append(not_applicable(HYDRATION, "the schedule killed the broker before publishing"))
        return verdicts

    return run_schedule
