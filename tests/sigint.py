"""Children that must see a Ctrl-C: SIGINT back to its default before they exec.

A shell starts a script's background jobs with SIGINT ignored, and an ignored signal stays
ignored across fork and exec; Python started so never installs its KeyboardInterrupt handler.
Tests that send SIGINT to a child (as a terminal's Ctrl-C would) reset it, so they test the
lab and not how the test run itself was started.
"""

from __future__ import annotations

import signal


def sigint_default() -> None:
    """A ``preexec_fn``: SIGINT as in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
