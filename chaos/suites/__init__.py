"""The built-in chaos suites, as library code: each a scenario ``async (lab, nemesis) -> verdicts``.

They are run by thin pytest modules (``scenarios/test_*.py``, also from another
repository with ``pytest --pyargs scenarios``), by ``fastport-lab run`` and by the
gate. :data:`SUITES` names them, with the FMEA mode each covers and the pytest
module that runs it; the flaw matrix (which checker must catch which
``--flaw`` of the reference broker) is :data:`chaos.suites.flaws.FLAW_MATRIX`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Suite:
    name: str
    fmea: int | str
    module: str  # the pytest module that runs it (importable: run it with --pyargs)
    summary: str


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("storage", 1, "scenarios.test_fmea1_storage", "storage slow or down must not stop delivery"),
        Suite(
            "subscribers",
            2,
            "scenarios.test_fmea2_subscribers",
            "a failing subscriber must not affect others",
        ),
        Suite(
            "crash", 3, "scenarios.test_fmea3_crash", "SIGKILL and restart: hydration; SIGSTOP loses nothing"
        ),
        Suite("port", 4, "scenarios.test_fmea4_port", "a taken port fails fast and clearly"),
        Suite(
            "bad-input",
            "bad-input",
            "scenarios.test_bad_input",
            "malformed frames get errors, others unaffected",
        ),
        Suite(
            "flaws", "flaws", "scenarios.test_flaw_matrix", "each reference-broker flaw caught by its checker"
        ),
        Suite("schedules", "schedules", "scenarios.test_schedules", "Hypothesis-generated fault schedules"),
        Suite(
            "fuzz", "bad-input", "scenarios.test_fuzz", "generated frames each answered as PROTOCOL.md says"
        ),
        Suite("soak", "soak", "scenarios.test_soak", "steady traffic through seeded fault cycles"),
    )
}
ALIASES = {"fmea1": "storage", "fmea2": "subscribers", "fmea3": "crash", "fmea4": "port"}
