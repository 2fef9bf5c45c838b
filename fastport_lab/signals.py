"""SIGINT and SIGTERM stop a lab command the way Ctrl-C does: teardown runs, the summary is printed.

Python raises ``KeyboardInterrupt`` on SIGINT only when SIGINT was not ignored
at start-up, and a shell starts background jobs of a script with SIGINT
ignored: ``fastport-lab run &`` then ``kill -INT`` did nothing. SIGTERM (CI
cancelling a job, ``timeout``) would end Python without running ``finally``
blocks at all. Both are therefore routed to ``KeyboardInterrupt`` while a
command runs, and the previous handlers are put back after it.

Children inherit the result: a handler becomes SIG_DFL at ``exec``, whereas an
ignored SIGINT would have stayed ignored in the pytest child too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled in the main thread; leave them alone
        return
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
