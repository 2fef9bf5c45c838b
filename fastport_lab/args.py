"""Command-line parsing for the lab's commands: a usage error exits 3, never argparse's 2.

``run``, ``gate``, ``soak``, ``load`` and ``mutants`` give CI an exit code whose
2 means "a verdict is unknown"; argparse exits 2 on a bad option, which a CI job
would read as that. :class:`LabArgumentParser` prints the usage and the message
to stderr, as argparse does, and exits 3 (:data:`reports.judge.EXIT_ENV`, the
gate's "environment or usage error"). ``--help`` still exits 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from reports.judge import EXIT_ENV


class LabArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors exit with :data:`EXIT_ENV` (3) instead of 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ENV, f"{self.prog}: error: {message}\n")


def parse_or_exit_code(
    parser: argparse.ArgumentParser, argv: Sequence[str], *, intermixed: bool = False
) -> argparse.Namespace | int:
    """The parsed options, or the exit code parsing ended with (0 after ``--help``, 3 on a usage error).

    The commands' ``main(argv)`` return their exit code rather than raise SystemExit, so that a caller
    (a test, ``fastport-lab mutants`` calling ``run``) gets the code back.
    """
    try:
        if intermixed:  # positionals after options too: `run --intensity smoke crash port`
            return parser.parse_intermixed_args(argv)
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ENV
