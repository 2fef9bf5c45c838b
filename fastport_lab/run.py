"""``fastport-lab run``: the chaos suites with a live display, then a summary and the report.

It is the gate's run (same suites, same run folder, same exit codes) for a
person at a terminal: while pytest runs the scenarios in a child process (its
output goes to ``pytest.log`` in the run folder), a live table shows each
scenario's phase, active fault and deliveries so far; at the end a summary
table gives each scenario's invariants and the path of the HTML report.

Exit codes as ``fastport-lab gate``: 0 pass, 1 an invariant violated, 2 a
verdict unknown, 3 environment or usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from chaos.config import BACKENDS, INTENSITIES
from chaos.progress import ENV as PROGRESS_ENV
from chaos.progress import ProgressReader
from chaos.suites import ALIASES, SUITES
from chaos.supervisor import scratch_dir
from fastport_lab.args import LabArgumentParser, parse_or_exit_code
from fastport_lab.gate import UsageError, execute, gate_config
from fastport_lab.gate import parser as gate_parser
from fastport_lab.signals import interrupt_on_signals
from fastport_lab.suite_runner import SuiteRequest, SuiteRunner, pytest_runner
from reports.build import RunReport
from reports.judge import EXIT_ENV, GateConfigError
from reports.record import DEFAULT_ROOT, RunFormatError

STATUS_STYLE = {"pass": "green", "fail": "red", "unknown": "yellow", "error": "red", "running": "cyan"}


def suite_paths(names: Sequence[str]) -> list[str]:
    """Map suite names to their modules (run with --pyargs, from any directory), or keep a pytest path.

    A suite named twice (``crash fmea3``) runs once.
    """
    paths: dict[str, None] = {}
    for name in names:
        key = ALIASES.get(name, name)
        if key in SUITES:
            paths[SUITES[key].module] = None
        elif Path(name.split("::")[0]).exists():
            paths[name] = None
        else:
            choices = ", ".join([*SUITES, *ALIASES])
            raise UsageError(f"unknown scenario {name!r}: choose from {choices}, or give a pytest path")
    return list(paths)


def build_parser(prog: str = "fastport-lab run") -> argparse.ArgumentParser:
    p = LabArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"suites to run (default all): {', '.join(SUITES)}; or pytest paths",
    )
    p.add_argument("--broker-cmd", help="launch command of the broker under test (PROTOCOL.md section 4)")
    p.add_argument("--store", choices=("memory", "postgres"), help="broker store (default postgres)")
    p.add_argument("--intensity", choices=INTENSITIES, help="workload size: smoke, default, heavy")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="embedded (default) or docker: PostgreSQL and the fault proxy as containers",
    )
    p.add_argument(
        "--broker-image",
        metavar="IMAGE",
        help="the broker as a container of IMAGE (docker backend; 'local' is the reference broker's image)",
    )
    p.add_argument("--seed", type=int, help="seed for the generated fault schedules")
    p.add_argument("--out", metavar="DIR", help=f"where run folders go (default ./{DEFAULT_ROOT})")
    p.add_argument(
        "-k", dest="select", metavar="EXPR", help="only scenarios matching this pytest -k expression"
    )
    p.add_argument("--config", metavar="TOML", help="gate thresholds (default gate.toml)")
    p.add_argument("--no-live", action="store_true", help="no live display (plain output, e.g. in CI logs)")
    p.add_argument(
        "--pytest-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for pytest (repeatable), e.g. --pytest-arg=-x",
    )
    return p


def _progress_table(reader: ProgressReader) -> Table:
    table = Table(title="fastport-lab run", expand=False)
    for col in ("scenario", "phase", "active fault", "published", "delivered", "s"):
        table.add_column(col, justify="right" if col in ("published", "delivered", "s") else "left")
    for p in reader.poll().values():
        style = STATUS_STYLE.get(p.status, "")
        phase = p.phase if p.status == "running" else p.status
        table.add_row(
            p.scenario,
            Text(phase, style=style),
            ", ".join(p.faults) or "-",
            str(p.published),
            str(p.delivered),
            f"{p.elapsed:.1f}",
        )
    if not table.rows:
        table.add_row("starting the lab...", "", "", "", "", "")
    return table


def live_runner(console: Console, inner: SuiteRunner = pytest_runner) -> SuiteRunner:
    """Wrap *inner* so that the scenarios' progress is shown live while it runs."""

    def runner(request: SuiteRequest) -> None:
        with scratch_dir("fastport-run-") as tmp:
            progress = tmp / "progress.jsonl"
            reader = ProgressReader(progress)
            previous = os.environ.get(PROGRESS_ENV)
            os.environ[PROGRESS_ENV] = str(progress)  # the pytest child inherits it
            try:
                with Live(
                    get_renderable=lambda: _progress_table(reader),
                    console=console,
                    refresh_per_second=4,
                    transient=False,
                ):
                    inner(request)
            finally:
                if previous is None:
                    os.environ.pop(PROGRESS_ENV, None)
                else:
                    os.environ[PROGRESS_ENV] = previous

    return runner


def summary(console: Console, report: RunReport) -> None:
    """The closing table: each scenario's invariants, then the verdict and where the report is."""
    table = Table(title="Summary")
    for col in ("scenario", "FMEA", "verdict", "invariants", "why"):
        table.add_column(col)
    gate = {s["name"]: s for s in report.results.get("gate", {}).get("scenarios", [])}
    for s in report.results.get("scenarios", []):
        g = gate.get(s["name"], {})
        status = g.get("status", "?")
        marks = Text(" ").join(
            Text(v["name"], style=STATUS_STYLE.get(v["status"], "")) for v in s.get("verdicts", [])
        )
        why = "; ".join(g.get("reasons", [])[:2]) or (s.get("error") or "")
        # Text, not markup: names and reasons may hold brackets ("[1, 2]", a pytest node id).
        table.add_row(
            Text(s["name"]), str(s.get("fmea") or ""), Text(status, style=STATUS_STYLE.get(status, "")),
            marks, Text(why),
        )  # fmt: skip
    gate_result = report.results.get("gate", {})
    rate = gate_result.get("kill_rate")
    if rate:
        missed = f"; missed: {', '.join(rate['missed'])}" if rate["missed"] else ""
        console.print(
            f"seeded bugs caught: {rate['caught']} of {rate['seeded']} (kill rate {rate['rate']:.0%}){missed}"
        )
    status = gate_result.get("status", "?")
    console.print(
        Group(
            table,
            Text(
                f"{status.upper()}: {gate_result.get('summary', '')}", style=STATUS_STYLE.get(status, "bold")
            ),
        )
    )
    console.print(f"report: {report.html}")
    if (report.run_dir / "pytest.log").exists():
        console.print(f"pytest output: {report.run_dir / 'pytest.log'}")


def main(
    argv: Sequence[str] | None = None, *, runner: SuiteRunner | None = None, prog: str = "fastport-lab run"
) -> int:
    """*prog* names the command in usage errors (``fastport-lab mutants`` runs through here too)."""
    with interrupt_on_signals():
        return _main(list(sys.argv[1:] if argv is None else argv), runner, prog)


def _main(argv: list[str], runner: SuiteRunner | None, prog: str = "fastport-lab run") -> int:
    args = parse_or_exit_code(build_parser(prog), argv, intermixed=True)
    if isinstance(args, int):  # --help, or a usage error (exit 3: 2 means "unknown" here)
        return args
    console = Console()
    try:
        gate_args = gate_parser().parse_args([])
        gate_args.broker_cmd, gate_args.store, gate_args.seed = args.broker_cmd, args.store, args.seed
        gate_args.intensity = args.intensity
        gate_args.backend, gate_args.broker_image = args.backend, args.broker_image
        gate_args.pytest_args = list(args.pytest_arg)
        gate_args.runs_dir, gate_args.select, gate_args.config = args.out, args.select, args.config
        gate_args.suite = suite_paths(args.scenarios) or None
        config = gate_config(gate_args)
        inner = runner or pytest_runner
        chosen = inner if args.no_live or not console.is_terminal else live_runner(console, inner)
        with scratch_dir("fastport-run-log-") as tmp:
            log = tmp / "pytest.log"
            report = execute(
                gate_args,
                ["fastport-lab", "run", *argv],
                config,
                chosen,
                log=None if chosen is inner else log,
            )
            if log.exists():
                (report.run_dir / "pytest.log").write_bytes(log.read_bytes())
    except (UsageError, GateConfigError, RunFormatError, ValueError, OSError) as exc:
        console.print(f"[red]fastport-lab run:[/] {escape(str(exc))}")
        return EXIT_ENV
    summary(console, report)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
