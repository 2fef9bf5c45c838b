"""``fastport-lab soak``: a hundred fault cycles under steady traffic, judged, with a report.

Steady publishing to durable subscribers of every ack mode, and a long run of
fault cycles drawn with ``--seed`` from the fault registry (SIGKILL and restart,
SIGSTOP/SIGCONT, storage down, hung and slow, PostgreSQL stopped and started, a
subscriber's link reset, a reader stalled under large messages). After every
kill and at the end: everything reported ``persisted`` reached every recipient,
nothing acked came back, the reference broker's store holds no zombie, the
broker's memory (RSS) stayed within its bound, and delivery recovered after each
fault (the time it took is in the report, per cycle). The run folder and the
exit codes are the gate's: 0 pass, 1 violated, 2 unknown, 3 the lab could not run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chaos.config import BACKENDS, LabConfig, LabConfigError
from chaos.suites.soak import SoakPlan, soak_scenario
from fastport_lab.args import LabArgumentParser, parse_or_exit_code
from fastport_lab.gate import CONFIG_NAME, config_at
from fastport_lab.signals import interrupt_on_signals
from fastport_lab.single_run import print_verdicts, run_alone
from reports.build import finish
from reports.judge import EXIT_ENV, GateConfigError
from reports.record import DEFAULT_ROOT, RunRecorder

CYCLE_BUDGET_S = 30.0  # the scenario's hang timeout grows with the cycles asked for


def build_parser() -> argparse.ArgumentParser:
    p = LabArgumentParser(
        prog="fastport-lab soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cycles", type=int, default=100, help="fault cycles (default 100)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault draw (default 1)")
    p.add_argument("--per-cycle", type=int, default=60, help="messages published while each fault holds")
    p.add_argument("--duration", type=float, help="seconds: start no new cycle after this")
    p.add_argument("--broker-cmd", help="launch command of the broker under test (PROTOCOL.md section 4)")
    p.add_argument("--store", choices=("memory", "postgres"), help="broker store (default postgres)")
    p.add_argument("--backend", choices=BACKENDS, help="embedded (default) or docker")
    p.add_argument("--broker-image", metavar="IMAGE", help="the broker as a container (docker backend)")
    p.add_argument("--out", metavar="DIR", help=f"where run folders go (default ./{DEFAULT_ROOT})")
    p.add_argument("--config", metavar="TOML", help=f"gate thresholds (default ./{CONFIG_NAME} if present)")
    p.add_argument("--no-live", action="store_true", help="no line per cycle while it runs")
    return p


def _table(cycles: list[dict[str, Any]]) -> Table:
    t = Table(title="Soak cycles")
    for col in ("cycle", "fault", "landed", "recovered", "recovery s", "broker RSS MiB"):
        t.add_column(col, justify="right" if col in ("cycle", "recovery s", "broker RSS MiB") else "left")
    for r in cycles:
        t.add_row(
            str(r["cycle"]),
            r["fault"],
            str(r.get("effective", r.get("skipped", "-"))),
            str(r.get("recovered", "-")),
            str(r.get("recovery_s", "-")),
            str(r.get("rss_mb", "-")),
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
    if args.cycles < 1 or args.per_cycle < 1:
        console.print("[red]fastport-lab soak:[/] --cycles and --per-cycle must be at least 1")
        return EXIT_ENV
    try:
        lab_config = LabConfig.resolve(
            args.broker_cmd, args.store, backend=args.backend, broker_image=args.broker_image
        )
        gate_config = config_at(args.config)
    except (LabConfigError, GateConfigError) as exc:
        console.print(f"[red]fastport-lab soak:[/] {escape(str(exc))}")
        return EXIT_ENV
    plan = SoakPlan(cycles=args.cycles, seed=args.seed, per_cycle=args.per_cycle, duration=args.duration)
    recorder = RunRecorder(
        Path(args.out) if args.out else DEFAULT_ROOT,
        command=["fastport-lab", "soak", *argv],
        seed=args.seed,
        broker_cmd=lab_config.broker_cmd,
        store=lab_config.store,
    )

    def on_cycle(row: dict[str, Any]) -> None:
        if not args.no_live:
            console.print(
                f"cycle {row['cycle']:>3}/{plan.cycles} {row['fault']:<16} landed={row.get('effective')} "
                f"recovered={row.get('recovered')} in {row.get('recovery_s')}s rss={row.get('rss_mb')} MiB"
            )

    result, problem = run_alone(
        soak_scenario(plan, on_cycle), lab_config, recorder, kind="soak",
        name=f"soak {plan.cycles} cycles seed {plan.seed}", timeout=60 + CYCLE_BUDGET_S * plan.cycles,
    )  # fmt: skip
    report = finish(recorder, gate_config, environment_error=problem)
    if result is not None:
        console.print(_table(result.notes.get("cycles", [])))
        print_verdicts(console, result.verdicts)
        console.print(f"took {result.duration:.0f}s")
    gate = report.results.get("gate", {})
    console.print(f"{gate.get('status', '?').upper()}: {gate.get('summary', '')}")
    console.print(f"report: {report.html}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
