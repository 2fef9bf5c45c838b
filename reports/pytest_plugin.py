"""A pytest plugin the gate's pytest runner loads (``-p reports.pytest_plugin``): which test ran when.

The scenario folders that ``chaos.scenario.run_scenario`` writes do not name the
pytest test that made them, yet a report should say how to rerun one scenario
and which FMEA mode it covers. This plugin appends one JSON line per test call
(node id, ``fmea`` marker, xdist worker, start and stop wall-clock times) to the
file named by ``$FASTPORT_GATE_TESTLOG``; the runner then matches each scenario
folder to the test whose call it was written during. Without the variable it
does nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

ENV = "FASTPORT_GATE_TESTLOG"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    start = time.time()
    yield
    path = os.environ.get(ENV)
    if not path:
        return
    marker = item.get_closest_marker("fmea")
    line = {
        "nodeid": item.nodeid,
        "fmea": marker.args[0] if marker is not None and marker.args else None,
        "worker": os.environ.get("PYTEST_XDIST_WORKER"),
        "start": start,
        "stop": time.time(),
    }
    with open(path, "a", encoding="utf-8") as fp:  # O_APPEND: whole short lines from several workers
        fp.write(json.dumps(line, default=str) + "\n")
