"""FastPort Lab: fault injection, recording clients, checkers and chaos suites for FastPort brokers.

The public API, as a user's own chaos tests use it (docs/plugin.md):

* the pytest plugin (:mod:`chaos.plugin`): fixtures ``lab``, ``nemesis``, ``judge``,
  ``history``, ``facts``, ``run_lab``, ``lab_session``, ``lab_config``;
* :class:`Lab` (``chaos.environment``): ``lab.subscriber(...)``, ``lab.publisher(...)``,
  ``lab.start_broker()``, ``lab.facts()``, ``lab.history``, ``lab.config``, ``lab.notes``;
* :class:`Nemesis` (``chaos.nemesis``): ``async with nemesis.inject(fault, **params)``;
* the faults (:mod:`chaos.faults`, :data:`chaos.faults.REGISTRY`);
* the checkers (:mod:`chaos.checkers`): ``check_*`` returning verdicts with evidence;
* workload helpers (:mod:`chaos.workload`): ``publish_paced``, ``settle``, ``wait_outcomes``...;
* the built-in suites (:mod:`chaos.suites`) and the scenario runner (:mod:`chaos.runner`).

Names are imported lazily, so ``import chaos.history`` (or the fault proxy's CLI)
does not pay for the database driver and the WebSocket client.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Lab": "chaos.environment",
    "LabSession": "chaos.environment",
    "LabConfig": "chaos.config",
    "Nemesis": "chaos.nemesis",
    "History": "chaos.history",
    "Verdict": "chaos.checkers.verdict",
    "REGISTRY": "chaos.faults",
    "run_scenario": "chaos.runner",
    "assert_all_pass": "chaos.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chaos' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
