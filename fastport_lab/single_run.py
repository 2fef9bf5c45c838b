"""What the one-scenario commands (``soak``, ``load``) share: the errors that mean the lab could not
start, and the verdict lines they print after the run."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape

from chaos.checkers.verdict import Verdict, is_not_applicable
from chaos.launcher import LaunchError
from chaos.postgres import PostgresEnvError
from chaos.supervisor import ChildStartError

# PostgreSQL, the fault proxy or a container would not start: the run's environment error (exit 3)
START_ERRORS = (PostgresEnvError, LaunchError, ChildStartError, OSError)


def print_verdicts(console: Console, verdicts: Iterable[Verdict]) -> None:
    """One line per verdict, coloured by status (n/a dimmed)."""
    for v in verdicts:
        status = "n/a" if is_not_applicable(v) else v.status
        colour = {"pass": "green", "fail": "red", "n/a": "dim"}.get(status, "yellow")
        console.print(f"[{colour}]{status.upper():7}[/] {escape(v.name)}: {escape(v.summary)}")
