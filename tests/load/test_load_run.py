"""``fastport-lab load`` end to end: a real Locust (--processes 2), the lab's faults during it, the judgement.

Each run is the command a user types, in a subprocess, against a real broker on
embedded PostgreSQL. In CI: the short schedule (a storage fault and a kill in
about 20 s of load) on the reference broker passes, and its ``--flaw
store-first`` / ``--flaw no-hydrate`` fail by the checker of their FMEA mode,
with evidence. With ``--mutants``: the default schedule against the foreign
broker, correct (must pass) and with each load-only mutant (must fail by its
checker), which is what the closing note of the load issue reports.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos.checkers.verdict import is_not_applicable
from chaos.config import REFERENCE_BROKER_CMD, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
FOREIGN = (
    shlex.join([sys.executable, "-m", "tests.foreign"])
    + " --host {host} --port {port} --store {store} --dsn {dsn}"
)
SHORT = ["--faults", "short", "--users", "20", "--processes", "2", "--no-live"]


def load(out: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``fastport-lab load`` and return (exit code, results.json, output)."""
    done = subprocess.run(
        [sys.executable, "-m", "fastport_lab.cli", "load", "--out", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=560,
    )  # fmt: skip
    runs = sorted(out.glob("*/results.json"))
    assert len(runs) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    return done.returncode, json.loads(runs[0].read_text()), done.stdout + done.stderr


def verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (scenario,) = results["scenarios"]
    return {v["name"]: v for v in scenario["verdicts"]}


def test_a_short_load_run_with_a_storage_fault_and_a_kill(tmp_path: Path) -> None:
    code, results, out = load(tmp_path, *SHORT)
    assert code == 0, out[-4000:]
    vs = verdicts(results)
    for name in ("at-least-once", "hydration", "resurrection", "availability-under-storage-faults",
                 "duplicates-and-order", "integrity", "recovery", "load-figures"):  # fmt: skip
        assert vs[name]["status"] == "pass", (name, vs[name]["summary"])
    assert is_not_applicable(vs["isolation"])  # the short schedule has no subscriber fault
    (run,) = [p.parent for p in tmp_path.glob("*/results.json")]
    for f in (
        "locust/locust.html",
        "locust/locust_stats.csv",
        "locust/summary.json",
        "junit.xml",
        "index.html",
    ):
        assert (run / f).is_file(), f
    assert len(list((run / "locust" / "histories").glob("*.npz"))) == 3  # the master and two workers
    load_notes = results["scenarios"][0]["meta"]["notes"]["load"]
    phases = {p["kind"] for p in load_notes["phases"]}
    assert phases == {"baseline", "fault", "gap", "recovery"}
    base = load_notes["phases"][0]
    assert base["name"] == "baseline" and base["sent"] > 100 and base["delivered"] > base["sent"]
    assert [f["fault"] for f in load_notes["faults"]] == ["storage-latency", "broker-kill"]
    assert all(f["effective"] for f in load_notes["faults"])
    html = (run / "index.html").read_text()
    assert 'data-figure="load-' in html and "data-load-phases" in html and 'href="locust/locust.html"' in html


@pytest.mark.parametrize(
    ("flaw", "checker", "phase"),
    [
        ("store-first", "availability-under-storage-faults", "storage-latency"),
        ("no-hydrate", "hydration", "broker-kill"),
    ],
)
def test_a_flawed_broker_fails_the_short_load_run_by_its_checker(
    tmp_path: Path, flaw: str, checker: str, phase: str
) -> None:
    code, results, out = load(tmp_path, *SHORT, "--broker-cmd", f"{REFERENCE_BROKER_CMD} --flaw {flaw}")
    assert code == 1, out[-4000:]
    v = verdicts(results)[checker]
    assert v["status"] == "fail", v["summary"]
    ev = v["evidence"]
    if checker == "hydration":
        assert ev["pairs_missing"] > 0 and ev["missing"][0]["id"] and ev["missing"][0]["crash"] == phase
    else:
        (window,) = [w for w in ev["windows"] if w["name"] == phase]
        bounds = [t["bound_ms"] for t in window["by_topic"].values()]
        lat = window["latency"]  # waited on storage (or never came): evidence with ids
        assert lat["undelivered"] > 0 or lat["p99_ms"] > max(bounds), lat
        assert (window.get("slowest") or window.get("undelivered"))[0]["id"]


LOAD_MUTANTS = [
    pytest.param(None, (), id="correct"),
    pytest.param("backlog-cap", ("hydration", "at-least-once"), id="backlog-cap"),
    pytest.param("write-behind", ("hydration",), id="write-behind"),
    pytest.param("drain-stall", ("isolation",), id="drain-stall"),
]


@pytest.mark.mutants
@pytest.mark.parametrize(("mutant", "checkers"), LOAD_MUTANTS)
def test_the_default_load_run_on_the_foreign_broker(
    request: pytest.FixtureRequest, tmp_path: Path, mutant: str | None, checkers: tuple[str, ...]
) -> None:
    """The correct foreign broker passes a default load run; each load-only mutant fails it by its checker."""
    if not request.config.getoption("--mutants"):
        pytest.skip("default load runs against the foreign broker's mutants: pytest --mutants")
    cmd = FOREIGN if mutant is None else f"{FOREIGN} --mutant {mutant}"
    code, results, out = load(tmp_path, "--users", "50", "--processes", "2", "--no-live", "--broker-cmd", cmd)
    vs = verdicts(results)
    if mutant is None:
        assert code == 0, out[-4000:]
        return
    assert code == 1, out[-4000:]
    failed = {n for n, v in vs.items() if v["status"] == "fail"}
    assert failed & set(checkers), f"{mutant} not caught by {checkers}: {failed}\n{out[-3000:]}"
