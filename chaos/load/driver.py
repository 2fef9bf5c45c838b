"""A load run as a lab scenario: Locust drives the broker while the lab runs the fault schedule, once.

The lab process (asyncio) owns the environment: PostgreSQL, the fault proxy and
the broker under test, as for every suite. Locust runs beside it as a
supervised child (its master, and the workers of ``--processes K`` forked from
it, in one process group the lab's reaper kills if the lab dies), with
``chaos/load/lab_locustfile.py``: its users record what they observe into one
history file per process. When Locust says the load started, the lab runs
the schedule's faults through the nemesis, each at its time, once (never once
per worker). Subscriber faults are aimed at subscribers the lab runs itself on
the load's own topics, beside the Locust users: the linked subscribers' own
fault-proxy links (blackhole, reset, cut) and readers that stop reading under
large messages. A probe publisher of the lab publishes during their windows,
so that each landing has its evidence (what the broker wrote, what arrived).

At the end the lab's history and every worker's are merged, and the suites'
checkers judge the whole of it: at-least-once over every (message, subscriber)
pair, hydration over each kill, availability in the storage windows against
the baseline, isolation of the Locust subscribers from the lab's faulty ones,
duplicates, integrity, recovery. The per-phase figures and the time series
for the report come from the merged history too (:mod:`chaos.load.phases`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.checkers import (
    Facts,
    check_at_least_once,
    check_availability,
    check_duplicates,
    check_hydration,
    check_integrity,
    check_isolation,
    check_recovery,
    check_resurrection,
)
from chaos.checkers.availability import NAME as AVAILABILITY
from chaos.checkers.hydration import HYDRATION
from chaos.checkers.isolation import NAME as ISOLATION
from chaos.checkers.resurrection import NAME as RESURRECTION
from chaos.checkers.verdict import Verdict, not_applicable
from chaos.clients import PublishAnswer, Publisher, Subscriber
from chaos.config import ROOT
from chaos.environment import Lab
from chaos.faults import REGISTRY, Fault, FaultUnsupported
from chaos.history import History, HistoryFormatError
from chaos.load import phases as phase_figures
from chaos.load.schedule import Schedule, Step
from chaos.nemesis import Nemesis
from chaos.supervisor import Child
from chaos.workload import incompressible, publish_paced, published_ids, settle

LOCUSTFILE = Path(__file__).with_name("lab_locustfile.py")
LINK_TOPIC_INDEX = 0  # the lab's linked subscribers share the first load topic with Locust's
BULK_TOPIC = "lab.load.bulk"  # large messages to the stalled readers only, to fill their buffers
PROBE_RATE = 50.0  # the lab's probe publishes a second in a subscriber fault's window
BIG_MESSAGES, BIG_BYTES = 120, 64 << 10  # towards stalled readers: more than socket buffers hold
START_TIMEOUT = 120.0  # Locust's import, fork and first spawn; only a hang takes longer
WORKER_GRACE = 30.0  # Locust's master does not wait for its forked workers; they write their histories
HISTORY_TIMEOUT = 60.0  # after Locust exited, for the workers' history files
WAIT_FOR_WORKERS = 24 * 3600.0  # a master waiting for workers of other machines (or a web UI) waits
FIGURES = "load-figures"


@dataclass(frozen=True)
class LoadPlan:
    """What to run: the users, the schedule, and where Locust's own output goes."""

    schedule: Schedule
    artifacts: Path  # Locust's CSV, HTML, summary and the workers' histories
    users: int = 50
    spawn_rate: float = 50.0
    duration: float | None = None  # seconds of load; None: the schedule's own length
    processes: int = 1  # Locust workers on this machine (1: a single local process)
    rate: float = 20.0  # publishes per second per publisher user
    payload_size: int = 256
    ack_mix: str = "always=8,late=1,never=1"  # every ack mode, as real subscribers
    subscribers_per_topic: int = 10
    web: bool = False  # Locust's web UI (the load starts at once; the UI stays for web_linger s)
    web_port: int | None = None
    web_linger: float = 60.0
    expect_workers: int = 0  # > 0: a master waiting for that many --worker processes (other machines)
    master_bind_host: str = "127.0.0.1"
    master_port: int | None = None
    drain_timeout: float = 10.0
    locust_args: tuple[str, ...] = ()

    @property
    def seconds(self) -> float:
        return max(self.schedule.length, self.duration or 0.0)

    @property
    def publishers(self) -> int:
        return max(1, self.users // 5)

    @property
    def topics(self) -> int:
        return max(1, math.ceil((self.users - self.publishers) / self.subscribers_per_topic))

    def topic(self, k: int) -> str:
        return f"load-{k}"

    def targets(self, family: str) -> int:
        """How many lab-run subscribers the schedule's subscriber faults need at most."""
        wanted = [s.targets for s in self.schedule.steps if _target_kind(s.name) == family]
        return max(wanted, default=0)


def _target_kind(name: str) -> str | None:
    if name.startswith("link-"):
        return "link"
    if name == "subscriber-slow":
        return "slow"
    if name == "subscriber-cut":
        return "link"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def locust_command(plan: LoadPlan, host: str) -> list[str]:
    """The Locust command line of *plan* against *host* (a ws:// URL)."""
    a = plan.artifacts
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host]
    cmd += ["-u", str(plan.users), "-r", f"{plan.spawn_rate:g}", "-t", f"{math.ceil(plan.seconds)}s"]
    cmd += ["--csv", str(a / "locust"), "--csv-full-history", "--html", str(a / "locust.html")]
    cmd += ["--only-summary", "--loglevel", "INFO", "--logfile", str(a / "locust.log")]
    cmd += [
        "--fp-history-dir", str(a / "histories"), "--fp-summary", str(a / "summary.json"),
        "--fp-rate", f"{plan.rate:g}", "--fp-payload-size", str(plan.payload_size),
        "--fp-ack-mix", plan.ack_mix, "--fp-publishers", str(plan.publishers),
        "--fp-topics", str(plan.topics), "--fp-topic-prefix", "load",
        "--fp-drain-timeout", f"{plan.drain_timeout:g}", "--stop-timeout", "0",  # drained before the stop
    ]  # fmt: skip
    if plan.web:
        cmd += ["--autostart", "--autoquit", f"{plan.web_linger:g}", "--web-host", "127.0.0.1"]
        cmd += ["--web-port", str(plan.web_port or free_port())]
    else:
        cmd.append("--headless")
    workers = plan.expect_workers or (plan.processes if plan.processes > 1 else 0)
    if workers:
        port = plan.master_port or free_port()
        cmd += ["--master-bind-host", plan.master_bind_host, "--master-bind-port", str(port)]
        if plan.expect_workers:
            cmd += ["--master", "--expect-workers", str(plan.expect_workers)]
        else:
            cmd += [
                "--processes",
                str(plan.processes),
                "--master-host",
                "127.0.0.1",
                "--master-port",
                str(port),
            ]
    return cmd + list(plan.locust_args)


def locust_env() -> dict[str, str]:
    """This environment, with the lab's tree first on PYTHONPATH (Locust adds only the locustfile's dir)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _started(line: str) -> float | None:
    """Locust's announcement that the load started (``lab_locustfile``), as its unix time."""
    if not line.startswith("{"):
        return None
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return float(msg["t"]) if isinstance(msg, dict) and msg.get("event") == "load_started" else None


@dataclass
class LabSide:
    """The subscribers the lab runs itself, on the load's topics, as targets of subscriber faults."""

    linked: list[Subscriber] = field(default_factory=list)
    slow: list[Subscriber] = field(default_factory=list)
    probe: Publisher | None = None
    bulk: Publisher | None = None
    probe_tasks: list[asyncio.Task[PublishAnswer]] = field(default_factory=list)
    bulk_tasks: list[asyncio.Task[PublishAnswer]] = field(default_factory=list)

    @property
    def all(self) -> list[Subscriber]:
        return [*self.linked, *self.slow]


async def _lab_side(lab: Lab, plan: LoadPlan) -> LabSide:
    side = LabSide()
    topic = plan.topic(LINK_TOPIC_INDEX)
    for i in range(plan.targets("link")):
        side.linked.append(await lab.linked_subscriber(f"lab-link-{i}", [topic]))
    for i in range(plan.targets("slow")):
        # On a load topic too: a fan-out that waits for a stalled reader holds up the Locust
        # subscribers of the same messages (and a publisher that waits on its fan-out, all of them).
        side.slow.append(lab.subscriber(f"lab-slow-{i}", [topic, BULK_TOPIC], rcvbuf=64 << 10))
    if side.linked:
        side.probe = lab.publisher("lab-probe")
    if side.slow:
        side.bulk = lab.publisher("lab-bulk")
    for c in [*side.all, side.probe, side.bulk]:
        if c is not None:
            await c.start()
    return side


def _bind(step: Step, side: LabSide) -> list[Fault]:
    """The fault(s) of *step*: a link fault once per targeted linked subscriber (each has its own
    link), a stalled-reader fault once for all its readers, any other fault as it is."""
    kind = _target_kind(step.name)
    if kind == "link":
        return [REGISTRY.create(step.name, sub, **step.params) for sub in side.linked[: step.targets]]
    if kind == "slow":
        return [REGISTRY.create(step.name, side.slow[: step.targets], **step.params)]
    return [REGISTRY.create(step.name, **step.params)]


async def _sleep_until(t: float) -> None:
    """Wait for the schedule's next time (a timetable of the load, not a synchronisation)."""
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _during(step: Step, side: LabSide, lab: Lab, end: float) -> None:
    """Inside a window: probes towards the linked subscribers, big messages to the stalled readers."""
    kind = _target_kind(step.name)
    if kind == "link" and side.probe is not None:
        n = max(1, int((end - time.time()) * PROBE_RATE))
        side.probe_tasks += await publish_paced(side.probe, side.linked[0].topics[0], n, PROBE_RATE, None, 30)
    elif kind == "slow" and side.bulk is not None:
        side.bulk_tasks += await publish_paced(
            side.bulk, BULK_TOPIC, BIG_MESSAGES, 60.0, lambda _i: incompressible(BIG_BYTES), 60
        )


async def _inject(nemesis: Nemesis, step: Step, side: LabSide, lab: Lab, t0: float) -> dict[str, Any]:
    """One step: the fault(s) from its start to its end; returns the row of the run's fault table."""
    row: dict[str, Any] = {"fault": step.name, "start_s": step.start, "duration_s": step.duration}
    faults = _bind(step, side)
    end = t0 + step.end
    try:
        async with contextlib.AsyncExitStack() as stack:
            for f in faults:
                await stack.enter_async_context(nemesis.inject(f))
            await _during(step, side, lab, end)
            await _sleep_until(end)
    except FaultUnsupported as exc:
        row["skipped"] = str(exc)
        return row
    windows = lab.history.fault_windows()[-len(faults) :]
    row["effective"] = all(w.effective for w in windows) if windows else None
    return row


def expected_histories(plan: LoadPlan) -> int:
    """History files a complete run leaves: one per worker, and the master's (or the only process's)."""
    workers = plan.expect_workers or (plan.processes if plan.processes > 1 else 0)
    return workers + 1


async def _all_histories(plan: LoadPlan, timeout: float = HISTORY_TIMEOUT) -> None:
    """Wait until every Locust process wrote its history (workers on other machines write theirs to a
    shared folder when the master quits them: later than the master's exit); a missing one is an error,
    since a run judged without a worker's observations would judge half of it."""
    folder, want = plan.artifacts / "histories", expected_histories(plan)
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("*.npz"))) < want:
        if time.monotonic() > deadline:
            got = len(list(folder.glob("*.npz")))
            raise RuntimeError(
                f"only {got} of {want} Locust processes wrote their history to {folder} within {timeout:g}s "
                "(a worker crashed, or a remote worker's --fp-history-dir is not this folder)"
            )
        await asyncio.sleep(0.1)  # files of other processes, possibly other machines: nothing to wait on


def _read_worker_histories(folder: Path) -> tuple[list[History], list[str]]:
    histories, problems = [], []
    for path in sorted(folder.glob("*.npz")):
        try:
            histories.append(History.read(path))
        except (OSError, HistoryFormatError) as exc:
            problems.append(f"{path.name}: {exc}")
    return histories, problems


def load_scenario(plan: LoadPlan, on_event: Callable[[str, dict[str, Any]], None] | None = None):
    """The scenario (``async (lab, nemesis) -> verdicts``) of a load run with *plan*.

    *on_event* hears ``started`` (Locust's pid, the web UI's URL) and ``fault`` (each row).
    """
    say = on_event or (lambda _what, _details: None)

    async def load(lab: Lab, nemesis: Nemesis) -> list[Verdict]:
        plan.artifacts.mkdir(parents=True, exist_ok=True)
        (plan.artifacts / "histories").mkdir(exist_ok=True)
        side = await _lab_side(lab, plan)
        cmd = locust_command(plan, lab.url.rstrip("/"))
        locust = Child(
            cmd, name="locust", env=locust_env(), inherit_env=False, cwd=str(ROOT), ready=_started,
            group_grace=WORKER_GRACE,
            ready_timeout=WAIT_FOR_WORKERS if plan.web or plan.expect_workers else START_TIMEOUT,
        )  # fmt: skip
        lab.notes["load"] = {"command": cmd, "plan": _plan_note(plan)}
        await asyncio.to_thread(locust.start)
        try:
            t0 = float(locust.ready)
            lab.history.append("lab", "info", "load-start", value={"t": t0, "pid": locust.pid})
            say("started", {"pid": locust.pid, "command": cmd, "web": _web_url(cmd)})
            rows = []
            for step in plan.schedule.steps:
                await _sleep_until(t0 + step.start)
                row = await _inject(nemesis, step, side, lab, t0)
                rows.append(row)
                say("fault", row)
            lab.notes["load"]["faults"] = rows
            budget = plan.seconds + plan.drain_timeout + (plan.web_linger if plan.web else 0) + 60
            if not await asyncio.to_thread(locust.exited, max(1.0, t0 + budget - time.time())):
                locust.terminate(10)
                raise TimeoutError(f"Locust did not finish within {budget:g}s of its start")
        finally:
            if locust.alive:
                await asyncio.to_thread(locust.terminate, 15.0)
        lab.history.append("lab", "info", "load-stop", value={"exit_code": locust.returncode})
        lab.notes["load"]["locust_exit_code"] = locust.returncode
        lab.notes["load"]["locust_stderr_tail"] = list(locust.stderr_lines)[-20:]
        await _settle_lab_side(lab, side)
        await _all_histories(plan)
        workers, problems = _read_worker_histories(plan.artifacts / "histories")
        if problems or not workers:
            raise RuntimeError(
                "the load's histories are missing or unreadable: "
                + ("; ".join(problems) or "no worker wrote one")
            )
        merged = History.merge([lab.history, *workers])
        lab.history = merged  # the run folder and the report get all of it
        facts = Facts(merged)
        targets = sorted(s.client_id for s in side.all)
        figures = phase_figures.figures(merged, facts, t0=t0, end=t0 + plan.seconds, targets=targets)
        lab.notes["load"]["phases"] = figures["phases"]
        lab.notes["load"]["series"] = figures["series"]
        lab.notes["load"]["totals"] = figures["totals"]
        with contextlib.suppress(OSError, ValueError):
            lab.notes["load"]["summary"] = json.loads((plan.artifacts / "summary.json").read_text())
        return [
            check_at_least_once(facts),
            *_fault_checks(facts, plan.schedule, lab.config.durable),
            check_duplicates(facts),
            check_integrity(facts),
            check_recovery(facts),
            phase_figures.verdict(figures, targets),
        ]

    return load


def _fault_checks(facts: Facts, schedule: Schedule, durable: bool) -> list[Verdict]:
    """The checkers of the fault families the schedule holds; the others are not applicable."""
    families = {REGISTRY.get(s.name).family for s in schedule.steps}
    crash = any(REGISTRY.get(s.name).crash for s in schedule.steps)
    none = f"schedule {schedule.name!r} has no"
    out = []
    if not durable:
        out += [not_applicable(n, "--store memory") for n in (HYDRATION, RESURRECTION, AVAILABILITY)]
    else:
        out += (
            [check_hydration(facts), check_resurrection(facts)]
            if crash
            else [not_applicable(HYDRATION, f"{none} crash"), not_applicable(RESURRECTION, f"{none} crash")]
        )
        out.append(
            check_availability(facts, factor=3.0, slack=0.2)
            if "storage" in families
            else not_applicable(AVAILABILITY, f"{none} storage fault")
        )
    out.append(
        check_isolation(facts, factor=3.0, slack=0.5)
        if "subscriber" in families
        else not_applicable(ISOLATION, f"{none} subscriber fault")
    )
    return out


async def _settle_lab_side(lab: Lab, side: LabSide) -> None:
    """The lab's own subscribers get what was sent to them before they are judged."""
    if side.linked and side.probe_tasks:
        probes = published_ids(await asyncio.gather(*side.probe_tasks))
        await settle(lab.history, side.linked, probes, timeout=30)
    if side.bulk_tasks:
        big = published_ids(await asyncio.gather(*side.bulk_tasks))
        await settle(lab.history, side.slow, big, timeout=30)


def _web_url(cmd: list[str]) -> str | None:
    if "--web-port" not in cmd:
        return None
    return f"http://127.0.0.1:{cmd[cmd.index('--web-port') + 1]}/"


def _plan_note(plan: LoadPlan) -> dict[str, Any]:
    return {
        "schedule": plan.schedule.name,
        "steps": [
            {
                "fault": s.name,
                "start_s": s.start,
                "duration_s": s.duration,
                "params": s.params,
                "targets": s.targets,
            }
            for s in plan.schedule.steps
        ],
        "recovery_s": plan.schedule.recovery,
        "users": plan.users,
        "publishers": plan.publishers,
        "topics": plan.topics,
        "spawn_rate": plan.spawn_rate,
        "seconds": plan.seconds,
        "processes": plan.processes,
        "rate_per_publisher": plan.rate,
        "payload_size": plan.payload_size,
        "ack_mix": plan.ack_mix,
    }
