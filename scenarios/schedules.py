"""Generated fault schedules: a list of workload and fault steps, drawn by Hypothesis and replayable as JSON.

Hypothesis has no async stateful machine, so the adapter is small: a strategy
draws a whole schedule (a JSON-able list of steps), and each example runs it on a
fresh lab in its own event loop (:func:`chaos.scenario.run_scenario`). On a
failure Hypothesis shrinks the list and the step sizes to the smallest schedule
that still fails; the failure message prints it as a command that replays it.

Steps (``n`` is how many messages are published during the step):

``{"op": "publish", "n": N}``                      plain workload
``{"op": "storage", "fault": F, "n": N}``           F in latency, down, hang, reset
``{"op": "cut", "n": N}``                           subscriber ``s1`` cut while N are published
``{"op": "slow", "n": N}``                          ``s1`` stops reading while N are published
``{"op": "pause", "n": N}``                         broker SIGSTOPped while N are published
``{"op": "kill"}``                                  SIGKILL + restart (durable store only)

Judged: at-least-once, integrity, and hydration when a kill ran (duplicates are
allowed by PROTOCOL.md; their ratio is judged by the FMEA suites, not here). A
kill is preceded by waiting for the persistence outcome of everything published,
so the lab only holds the broker to what it said it had persisted.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from hypothesis import strategies as st

from chaos.checkers import Facts, check_at_least_once, check_hydration, check_integrity
from chaos.checkers.hydration import HYDRATION
from chaos.checkers.verdict import Verdict
from chaos.environment import Lab
from chaos.nemesis import Nemesis
from chaos.scenario import answers, not_applicable, publish_paced, published_ids, settle, wait_outcomes

TOPIC = "sched.t"
STORAGE_FAULTS = ("latency", "down", "hang", "reset")
OPS = ("publish", "storage", "cut", "slow", "pause", "kill")
MAX_N = 8


class ScheduleError(ValueError):
    """A schedule given by the user is malformed; the message names the step."""


def steps_strategy(durable: bool, max_steps: int = 4) -> st.SearchStrategy[list[dict[str, Any]]]:
    n = st.integers(1, MAX_N)
    step = st.one_of(
        st.builds(lambda k: {"op": "publish", "n": k}, n),
        st.builds(lambda f, k: {"op": "storage", "fault": f, "n": k}, st.sampled_from(STORAGE_FAULTS), n),
        st.builds(lambda k: {"op": "cut", "n": k}, n),
        st.builds(lambda k: {"op": "slow", "n": k}, n),
        st.builds(lambda k: {"op": "pause", "n": k}, st.integers(1, 4)),
        *([st.just({"op": "kill"})] if durable else []),
    )
    return st.lists(step, min_size=1, max_size=max_steps)


def parse_schedule(text: str, durable: bool = True) -> list[dict[str, Any]]:
    """Validate a JSON schedule (from ``--schedule`` or ``FASTPORT_LAB_SCHEDULE``)."""
    try:
        steps = json.loads(text)
    except ValueError as exc:
        raise ScheduleError(f"--schedule is not JSON: {exc}") from None
    if not isinstance(steps, list) or not steps:
        raise ScheduleError("--schedule must be a non-empty JSON list of steps")
    for i, s in enumerate(steps):
        if not isinstance(s, dict) or s.get("op") not in OPS:
            raise ScheduleError(f"step {i}: expected an object with op in {OPS}, got {s!r}")
        if s["op"] != "kill":
            k = s.get("n")
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
                raise ScheduleError(f"step {i}: 'n' must be an integer 1..1000, got {k!r}")
        if s["op"] == "storage" and s.get("fault") not in STORAGE_FAULTS:
            raise ScheduleError(f"step {i}: storage 'fault' must be one of {STORAGE_FAULTS}")
        if s["op"] == "kill" and not durable:
            raise ScheduleError(f"step {i}: 'kill' needs --store postgres (a memory store loses everything)")
    return steps


def label(steps: list[dict[str, Any]]) -> str:
    """A short scenario name that tells schedules apart in a report, e.g. ``schedule pause3 kill``."""
    parts = [f"{s['op']}{'-' + s['fault'] if 'fault' in s else ''}{s.get('n', '')}" for s in steps]
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

        async def publish(n: int) -> list:
            return await publish_paced(pub, TOPIC, n, 40.0)

        for step in steps:
            op = step["op"]
            tasks: list = []
            if op == "publish":
                tasks = await publish(step["n"])
            elif op == "storage":
                fault = {
                    "latency": lambda: nemesis.storage_latency(200),
                    "down": nemesis.storage_down,
                    "hang": nemesis.storage_hang,
                    "reset": nemesis.storage_reset,
                }[step["fault"]]()
                async with fault:
                    tasks = await publish(step["n"])
            elif op == "cut":
                async with nemesis.subscriber_cut(s1):
                    tasks = await publish(step["n"])
            elif op == "slow":
                async with nemesis.slow_consumer(s1):
                    tasks = await publish(step["n"])
            elif op == "pause":
                async with nemesis.broker_paused():
                    tasks = await publish(step["n"])
            elif op == "kill":
                await wait_outcomes(lab, pub, ids, timeout=20)
                async with nemesis.broker_killed():
                    pass
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
