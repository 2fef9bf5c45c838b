"""``python -m tests.foreign --host H --port P --store memory|postgres --dsn DSN [--mutant NAME]``."""

from tests.foreign.cli import main

raise SystemExit(main())
