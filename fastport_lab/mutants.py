"""``fastport-lab mutants``: the lab's seeded bugs, all of them, with the live display and the report.

Two matrices run in one pytest run, so that the kill rate of the summary and the
HTML report covers every seeded bug the lab has:

* the mutation matrix (``tests/foreign/test_matrix.py --mutants``): the foreign
  broker, an independent implementation of PROTOCOL.md, must pass every chaos
  suite, and each of its seeded bugs (``tests/foreign/mutants.py``) must be
  caught by the checker named for it;
* the flaw matrix (the ``flaws`` suite, ``scenarios/test_flaw_matrix.py``): each
  ``--flaw`` of the reference broker must be caught the same way.

It needs a checkout of fastport-lab: the foreign broker is test code, not
installed. Options as ``fastport-lab run`` (``--intensity``, ``--out``,
``--no-live``, ``--pytest-arg``...), in any order; more scenario names or pytest
paths run beside the matrices (``fastport-lab mutants --no-live crash``). Exit
codes as the gate's (a usage error is 3).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from chaos.config import ROOT
from fastport_lab import run
from fastport_lab.suite_runner import SuiteRunner

MATRIX = ROOT / "tests" / "foreign" / "test_matrix.py"
FLAWS = "flaws"  # the suite name of scenarios.test_flaw_matrix (chaos.suites.SUITES)


def main(argv: Sequence[str] | None = None, *, runner: SuiteRunner | None = None) -> int:
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
    # run parses intermixed: the user's options and scenario names may come in any order after these.
    matrices = [str(MATRIX.relative_to(ROOT)), FLAWS, "--pytest-arg=--mutants"]
    return run.main([*matrices, *argv], runner=runner, prog="fastport-lab mutants")


if __name__ == "__main__":
    sys.exit(main())
