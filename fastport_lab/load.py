"""``fastport-lab load``: Locust load against the broker under test, with a fault schedule, judged.

The lab's environment as ``run`` has it (embedded PostgreSQL, the fault proxy,
the broker under test from ``--broker-cmd`` and ``--store``); Locust runs
headless (``--web``: with its web UI) with FastPort publishers and subscribers;
the lab injects the ``--faults`` schedule during the load, once; then the
suites' checkers judge the merged history of every Locust process and the lab.
The run folder holds Locust's CSV and HTML report, the history, results.json,
junit.xml and the lab's index.html (throughput and push latency over time,
fault windows shaded, the per-phase table, the verdicts). Exit codes as the
gate's: 0 pass, 1 an invariant violated or a ``[load]`` budget crossed,
2 unknown, 3 the lab could not run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chaos.config import BACKENDS, LabConfig, LabConfigError
from chaos.faults import REGISTRY
from chaos.history import History
from chaos.load.driver import LoadPlan, load_scenario
from chaos.load.schedule import NAMED, ScheduleError, resolve
from fastport_lab.args import LabArgumentParser, parse_or_exit_code
from fastport_lab.gate import CONFIG_NAME, config_at
from fastport_lab.signals import interrupt_on_signals
from fastport_lab.single_run import print_verdicts, run_alone
from reports.build import finish
from reports.judge import EXIT_ENV, GateConfigError
from reports.record import DEFAULT_ROOT, RunRecorder


def build_parser() -> argparse.ArgumentParser:
    p = LabArgumentParser(
        prog="fastport-lab load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--users", "-u", type=int, default=50, help="Locust users: 1 in 5 publishes, the rest subscribe (50)")
    add("--spawn-rate", "-r", type=float, default=50.0, help="users started per second (50)")
    add("--duration", "-t", type=float, help="seconds of load (default: the schedule's length)")
    add("--processes", type=int, default=1, help="Locust worker processes on this machine (1)")
    add("--faults", default="default", metavar="NAME|FILE",
        help=f"fault schedule: {', '.join(NAMED)}, or a TOML/JSON file (docs/load.md)")  # fmt: skip
    add("--rate", type=float, default=20.0, help="publishes per second per publisher user (20)")
    add("--payload-size", type=int, default=256, help="payload data bytes (256)")
    add("--ack-mix", default="always=8,late=1,never=1", help="subscribers' ack modes and weights")
    add("--broker-cmd", help="launch command of the broker under test (PROTOCOL.md section 4)")
    add("--store", choices=("memory", "postgres"), help="broker store (default postgres)")
    add("--backend", choices=BACKENDS, help="embedded (default) or docker")
    add("--broker-image", metavar="IMAGE", help="the broker as a container (docker backend)")
    add("--out", metavar="DIR", help=f"where run folders go (default ./{DEFAULT_ROOT})")
    add("--config", metavar="TOML", help=f"gate thresholds, [load] included (default ./{CONFIG_NAME})")
    add("--web", action="store_true", help="Locust's web UI too (it starts at once; stays --web-linger s)")
    add("--web-port", type=int, help="port of the web UI (default: a free one)")
    add("--web-linger", type=float, default=60.0, help="seconds the web UI stays up after the load (60)")
    add("--expect-workers", type=int, default=0, metavar="N",
        help="be a Locust master for N --worker processes on other machines (docs/load.md)")  # fmt: skip
    add("--master-bind-host", default="127.0.0.1", help="where the master listens for workers")
    add("--master-port", type=int, help="the master's port (default: a free one)")
    add("--locust-arg", action="append", default=[], metavar="ARG", help="one more Locust argument")
    add("--list-faults", action="store_true", help="list the faults a schedule may name, and exit")
    add("--no-live", action="store_true", help="no line per fault while it runs")
    return p


LOAD_FAMILIES = ("storage", "subscriber", "process")  # input and port faults are the suites' own


def _fault_params() -> dict[str, list[str]]:
    return {c["name"]: c["params"] for c in REGISTRY.catalogue() if c["family"] in LOAD_FAMILIES}


def _list_faults(console: Console) -> None:
    t = Table(title="Faults a load schedule may name")
    for col in ("name", "family", "parameters", "what it does"):
        t.add_column(col)
    for c in REGISTRY.catalogue():
        if c["family"] not in LOAD_FAMILIES:
            continue
        params = [p for p in c["params"] if p not in ("sub", "subs", "burst")]
        t.add_row(c["name"], c["family"], ", ".join(params) or "-", c["summary"])
    console.print(t)
    console.print(f"named schedules: {', '.join(NAMED)}")


def _check_numbers(args: argparse.Namespace) -> str | None:
    if args.users < 2:
        return "--users must be at least 2 (one publisher, one subscriber)"
    if not args.spawn_rate > 0:
        return "--spawn-rate must be > 0"
    if args.processes < 1:
        return "--processes must be at least 1"
    if args.duration is not None and not args.duration > 0:
        return "--duration must be > 0 seconds"
    if args.rate < 0 or args.payload_size < 1:
        return "--rate must be >= 0 and --payload-size >= 1"
    if args.expect_workers and args.processes > 1:
        return "--expect-workers (a master for other machines) and --processes K do not mix"
    return None


def _phase_table(phases: list[dict[str, Any]]) -> Table:
    t = Table(title="Load phases")
    cols = (
        "phase",
        "s",
        "sent",
        "delivered",
        "dup",
        "lost",
        "persist_failed",
        "overloaded",
        "push p50",
        "push p99",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "phase" else "right")
    for ph in phases:
        push = ph.get("push") or {}
        t.add_row(
            ph["name"],
            f"{ph['end_s'] - ph['start_s']:.0f}",
            str(ph.get("sent", 0)),
            str(ph.get("delivered", 0)),
            str(ph.get("duplicates", 0)),
            str(ph.get("lost", 0)),
            str(ph.get("persist_failed", 0)),
            str(ph.get("overloaded", 0)),
            "-" if push.get("p50_ms") is None else f"{push['p50_ms']:.1f} ms",
            "-" if push.get("p99_ms") is None else f"{push['p99_ms']:.1f} ms",
        )
    return t


def main(argv: Sequence[str] | None = None) -> int:
    with interrupt_on_signals():
        return _main(list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):  # --help, or a usage error (exit 3: 2 means "unknown" here)
        return args
    console = Console()
    if args.list_faults:
        _list_faults(console)
        return 0
    problem = _check_numbers(args)
    if problem:
        console.print(f"[red]fastport-lab load:[/] {problem}")
        return EXIT_ENV
    try:
        lab_config = LabConfig.resolve(
            args.broker_cmd, args.store, backend=args.backend, broker_image=args.broker_image
        )
        gate_config = config_at(args.config)
        schedule = resolve(args.faults, _fault_params()).fit(args.duration)
    except (LabConfigError, GateConfigError, ScheduleError) as exc:
        console.print(f"[red]fastport-lab load:[/] {escape(str(exc))}")
        return EXIT_ENV
    recorder = RunRecorder(
        Path(args.out) if args.out else DEFAULT_ROOT,
        command=["fastport-lab", "load", *argv],
        broker_cmd=lab_config.broker_cmd,
        store=lab_config.store,
    )
    plan = LoadPlan(
        schedule,
        recorder.run_dir / "locust",
        users=args.users,
        spawn_rate=args.spawn_rate,
        duration=args.duration,
        processes=args.processes,
        rate=args.rate,
        payload_size=args.payload_size,
        ack_mix=args.ack_mix,
        web=args.web,
        web_port=args.web_port,
        web_linger=args.web_linger,
        expect_workers=args.expect_workers,
        master_bind_host=args.master_bind_host,
        master_port=args.master_port,
        locust_args=tuple(args.locust_arg),
    )

    def on_event(what: str, details: dict[str, Any]) -> None:
        if what == "started":
            console.print(f"Locust (pid {details['pid']}) is loading the broker for {plan.seconds:g}s")
            if details.get("web"):
                console.print(f"Locust web UI: {details['web']}")
        elif what == "fault" and not args.no_live:
            landed = details.get("skipped") or f"landed={details.get('effective')}"
            console.print(
                f"  t={details['start_s']:>5g}s {details['fault']:<16} {details['duration_s']:g}s {landed}"
            )

    console.print(
        f"fastport-lab load: {plan.users} users ({plan.publishers} publishing), schedule {schedule.name!r} "
        f"({len(schedule.steps)} faults), {plan.seconds:g}s; run folder {recorder.run_dir}"
    )
    started = time.monotonic()
    result, problem = run_alone(
        load_scenario(plan, on_event), lab_config, recorder, kind="load", name=f"load {schedule.name}",
        timeout=plan.seconds + plan.drain_timeout + 240 + (plan.web_linger if plan.web else 0),
        history=History(clock=time.time),
    )  # fmt: skip
    report = finish(recorder, gate_config, environment_error=problem)
    if result is not None:
        load = result.notes.get("load") or {}
        if load.get("phases"):
            console.print(_phase_table(load["phases"]))
        print_verdicts(console, result.verdicts)
        if result.error:
            console.print(f"[red]the load run did not complete:[/] {escape(result.error)}")
    gate = report.results.get("gate", {})
    console.print(f"{gate.get('status', '?').upper()}: {escape(str(gate.get('summary', '')))}")
    console.print(f"took {time.monotonic() - started:.0f}s; report: {report.html}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
