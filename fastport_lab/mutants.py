"""``fastport-lab mutants``: the lab's own mutation matrix, all of it, with the live display and the report.

The foreign broker (``tests/foreign``: an independent implementation of
PROTOCOL.md) must pass every chaos suite, and each of its seeded bugs must be
caught by the checker named for it (``tests/foreign/mutants.py``). The summary
and the HTML report give the kill rate beside the reference broker's flaws.
It needs a checkout of fastport-lab: the foreign broker is test code, not
installed. Options as ``fastport-lab run`` (``--intensity``, ``--out``,
``--no-live``...); exit codes as the gate's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from chaos.config import ROOT
from fastport_lab import run

MATRIX = ROOT / "tests" / "foreign" / "test_matrix.py"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    if not MATRIX.is_file():
        print(
            f"fastport-lab mutants: {MATRIX} not found: the mutation matrix needs a checkout of "
            "fastport-lab (the foreign broker under tests/ is not installed)",
            file=sys.stderr,
        )
        return 3
    os.chdir(ROOT)  # `python -m tests.foreign` and its conftest live in the checkout
    return run.main([str(MATRIX.relative_to(ROOT)), "--pytest-arg=--mutants", *argv])


if __name__ == "__main__":
    sys.exit(main())
