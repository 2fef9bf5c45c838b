"""``fastport-lab gate``: run the chaos suites (or read a finished run) and turn verdicts into an exit code.

Exit codes, for CI:

* ``0`` every applicable invariant held and no threshold of gate.toml was crossed;
* ``1`` an invariant was violated, a threshold was crossed, or a flaw went uncaught;
* ``2`` some verdict is unknown (the run could not show it either way); with
  ``--unknown warn`` (or ``[gate] unknown = "warn"``) this is reported and exits 0;
* ``3`` environment or usage error: the suites could not run, the config or the
  run folder is unreadable.

Every run writes ``reports/runs/<run-id>/`` (results.json, junit.xml, index.html,
histories) whatever its outcome. ``--from RUN_DIR`` re-judges a finished run
against the current thresholds and re-renders it, without running anything.

The suites are run by a :data:`fastport_lab.suite_runner.SuiteRunner`: pytest on
the built-in suites (``--pyargs scenarios``) by default, ``--runner module:function``
or ``main(argv, runner=...)`` for another (e.g. the lab's own ``fastport-lab run``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from chaos.config import BACKENDS, INTENSITIES, LabConfig, LabConfigError
from fastport_lab.args import LabArgumentParser, parse_or_exit_code
from fastport_lab.signals import interrupt_on_signals
from fastport_lab.suite_runner import (
    DEFAULT_SUITES,
    DEFAULT_TIMEOUT,
    EnvironmentProblem,
    SuiteRequest,
    SuiteRunner,
)
from reports.build import RunReport, finish
from reports.judge import EXIT_ENV, GateConfig, GateConfigError, load_config
from reports.record import DEFAULT_ROOT, RunFormatError, RunRecorder

CONFIG_NAME = "gate.toml"  # read from the current directory when --config is not given


class UsageError(Exception):
    """A bad option value found after parsing (a runner spec, a broker command): exit 3."""


def parser() -> argparse.ArgumentParser:
    p = LabArgumentParser(
        prog="fastport-lab gate",
        description="Run the chaos suites and gate on their verdicts "
        "(exit 0 pass, 1 violated, 2 unknown, 3 environment error).",
    )
    p.add_argument("--from", dest="from_dir", metavar="RUN_DIR", help="re-judge a finished run folder")
    p.add_argument("--config", metavar="TOML", help=f"thresholds (default: ./{CONFIG_NAME} if present)")
    p.add_argument("--unknown", choices=("fail", "warn"), help="override [gate] unknown")
    p.add_argument(
        "--runs-dir", metavar="DIR", default=None, help=f"where run folders go (default ./{DEFAULT_ROOT})"
    )
    p.add_argument("--run-id", default=None, help="name of the run folder (default: UTC time + random)")
    p.add_argument("--broker-cmd", default=None, help="launch command of the broker under test")
    p.add_argument("--store", choices=("memory", "postgres"), default=None, help="broker store")
    p.add_argument("--intensity", choices=INTENSITIES, default=None, help="workload size (default: default)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="embedded (default) or docker")
    p.add_argument("--broker-image", default=None, help="run the broker as a container of this image")
    p.add_argument(
        "--suite",
        action="append",
        metavar="PATH",
        help="pytest path(s) or module(s) to run (default: the built-in suites, --pyargs scenarios)",
    )
    p.add_argument(
        "-k", dest="select", metavar="EXPR", help="only scenarios matching this pytest -k expression"
    )
    p.add_argument("--seed", type=int, default=None, help="seed for generated schedules (FASTPORT_LAB_SEED)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="give up on the suites after S s")
    p.add_argument("--runner", metavar="MODULE:FUNC", help="suite runner to call instead of pytest")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    return p


def resolve_runner(spec: str) -> SuiteRunner:
    module, sep, func = spec.partition(":")
    if not sep or not module or not func:
        raise UsageError(f"--runner must be MODULE:FUNCTION, got {spec!r}")
    try:
        target = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--runner {spec}: cannot import: {exc}") from None
    if not callable(target):
        raise UsageError(f"--runner {spec} is not callable")
    return target


def config_at(path: str | None) -> GateConfig:
    """The thresholds of ``--config PATH``, else ``./gate.toml`` if there is one, else the defaults."""
    if path:
        return load_config(path)
    local = Path.cwd() / CONFIG_NAME
    return load_config(local) if local.is_file() else GateConfig()


def gate_config(args: argparse.Namespace) -> GateConfig:
    config = config_at(args.config)
    return replace(config, unknown=args.unknown) if args.unknown else config


def print_report(report: RunReport, out=None) -> None:
    out = out or sys.stdout
    gate = report.results.get("gate", {})
    print(f"\nfastport-lab gate: {gate.get('status', '?').upper()} (exit {report.exit_code})", file=out)
    print(f"  {gate.get('summary', '')}", file=out)
    for s in gate.get("scenarios", []):
        print(f"  [{s['status'].upper():7}] {s['name']}", file=out)
        for why in s.get("reasons", [])[:6]:
            print(f"            {why}", file=out)
    for w in gate.get("warnings", []):
        print(f"  warning: {w}", file=out)
    print(f"  report: {report.html}", file=out)
    print(f"  junit:  {report.run_dir / 'junit.xml'}", file=out)


def execute(
    args: argparse.Namespace,
    command: list[str],
    config: GateConfig,
    runner: SuiteRunner,
    *,
    log: Path | None = None,
) -> RunReport:
    """Run the suites described by *args* (the gate's options) and write the run folder.

    Raises UsageError for a bad broker command or store; every other problem
    (the suites could not run, Ctrl-C) becomes the run's environment error.
    """
    try:
        lab = LabConfig.resolve(
            args.broker_cmd,
            args.store,
            intensity=args.intensity,
            backend=getattr(args, "backend", None),
            broker_image=getattr(args, "broker_image", None),
        )
    except LabConfigError as exc:
        raise UsageError(str(exc)) from None
    recorder = RunRecorder(
        Path(args.runs_dir) if args.runs_dir else DEFAULT_ROOT,
        run_id=args.run_id,
        command=command,
        seed=args.seed,
        broker_cmd=lab.broker_cmd,
        store=lab.store,
    )
    request = SuiteRequest(
        recorder,
        broker_cmd=args.broker_cmd,
        store=args.store,
        suites=args.suite or list(DEFAULT_SUITES),
        select=args.select,
        pytest_args=args.pytest_args,
        seed=args.seed,
        timeout=args.timeout,
        log=log,
        intensity=args.intensity,
        backend=getattr(args, "backend", None),
        broker_image=getattr(args, "broker_image", None),
    )
    problem = None
    try:
        runner(request)
    except EnvironmentProblem as exc:
        problem = str(exc)
    except KeyboardInterrupt:
        problem = "interrupted (Ctrl-C) before the suites finished"
    except Exception as exc:  # a runner that crashed could not run the suites: not an invariant verdict
        problem = f"the suite runner crashed: {type(exc).__name__}: {exc}"
    report = finish(recorder, config, environment_error=problem)
    if problem:
        print(f"{command[0]} {command[1]}: environment error: {problem}", file=sys.stderr)
    return report


def main(argv: Sequence[str] | None = None, *, runner: SuiteRunner | None = None) -> int:
    with interrupt_on_signals():
        return _main(list(sys.argv[1:] if argv is None else argv), runner)


def _main(argv: list[str], runner: SuiteRunner | None) -> int:
    args = parse_or_exit_code(parser(), argv)
    if isinstance(args, int):  # --help, or a usage error (exit 3: 2 means "unknown" here)
        return args
    try:
        config = gate_config(args)
        if args.from_dir:
            from reports.build import rebuild

            report = rebuild(args.from_dir, config)
            print_report(report)
            return report.exit_code
        if args.runner:
            runner = resolve_runner(args.runner)
        if runner is None:
            from fastport_lab.suite_runner import pytest_runner as runner
        report = execute(args, ["fastport-lab", "gate", *argv], config, runner)
    except (UsageError, GateConfigError, RunFormatError, ValueError, OSError) as exc:
        print(f"fastport-lab gate: {exc}", file=sys.stderr)
        return EXIT_ENV
    print_report(report)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
