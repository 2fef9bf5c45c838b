"""What the one-scenario commands (``soak``, ``load``) share: one scenario in a lab session of its
own, the errors that mean the lab could not start, and the verdict lines they print after the run."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape

from chaos.checkers.verdict import Verdict, is_not_applicable
from chaos.config import LabConfig
from chaos.environment import LabSession
from chaos.history import History
from chaos.launcher import LaunchError
from chaos.postgres import PostgresEnvError
from chaos.runner import Scenario, ScenarioResult, run_scenario
from chaos.supervisor import ChildStartError, scratch_dir
from reports.record import RunRecorder

# PostgreSQL, the fault proxy or a container would not start: the run's environment error (exit 3)
START_ERRORS = (PostgresEnvError, LaunchError, ChildStartError, OSError)


def print_verdicts(console: Console, verdicts: Iterable[Verdict]) -> None:
    """One line per verdict, coloured by status (n/a dimmed)."""
    for v in verdicts:
        status = "n/a" if is_not_applicable(v) else v.status
        colour = {"pass": "green", "fail": "red", "n/a": "dim"}.get(status, "yellow")
        console.print(f"[{colour}]{status.upper():7}[/] {escape(v.name)}: {escape(v.summary)}")


def run_alone(
    scenario: Scenario,
    lab_config: LabConfig,
    recorder: RunRecorder,
    *,
    kind: str,
    name: str,
    timeout: float,
    history: History | None = None,
) -> tuple[ScenarioResult | None, str | None]:
    """Run *scenario* in a lab session of its own and record it as *kind*: (result, environment error).

    The session's scratch dir and servers go when it ends, however it ends; the run folder keeps the
    history. A lab that could not start, or a Ctrl-C/SIGTERM, is the run's environment error (exit 3).
    """
    try:
        with (
            scratch_dir(f"fastport-{kind}-") as scratch,
            LabSession.open(
                scratch, keep_runs=False, backend=lab_config.backend, broker_image=lab_config.broker_image
            ) as session,
        ):
            result = run_scenario(
                scenario, session, lab_config, name=name, timeout=timeout, meta={"fmea": kind},
                history=history,
            )  # fmt: skip
        recorder.add_result(result, fmea=kind)
    except START_ERRORS as exc:
        return None, f"the lab could not start: {exc}"
    except KeyboardInterrupt:
        return None, f"interrupted (Ctrl-C, SIGTERM) before the {kind} finished"
    return result, None
