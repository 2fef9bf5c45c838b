"""The gate's judgement: config loading, exit codes, thresholds re-judging real checker evidence."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.checkers import check_startup
from chaos.checkers.verdict import unknown
from chaos.history import History
from reports.judge import (
    EXIT_ENV,
    EXIT_FAIL,
    EXIT_PASS,
    EXIT_UNKNOWN,
    GateConfig,
    GateConfigError,
    Thresholds,
    config_from,
    judge,
    load_config,
)
from tests.reports.histories import crash_run, crash_verdicts, storage_run, storage_verdicts

ROOT = Path(__file__).resolve().parents[2]


def scenario(name, history, verdicts, meta=None):
    return {
        "name": name,
        "meta": meta or {},
        "verdicts": [v.to_dict() for v in verdicts],
    }


def run_of(*scenarios):
    return {"scenarios": list(scenarios)}


def test_shipped_gate_toml_documents_the_defaults():
    cfg = load_config(ROOT / "gate.toml")
    assert cfg.thresholds == Thresholds() and cfg.unknown == GateConfig().unknown
    text = (ROOT / "gate.toml").read_text()
    for key in Thresholds.__dataclass_fields__:
        assert f"\n{key} = " in text, f"{key} is not documented in gate.toml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[thresholds\n", "not valid TOML"),
        ("[thresholds]\nfault_p99 = 3\n", "unknown threshold(s) ['fault_p99']"),
        ("[thresholds]\nmax_recovery_s = -1\n", "max_recovery_s must be a number >= 0"),
        ("[thresholds]\nmax_recovery_s = 'soon'\n", "max_recovery_s must be a number"),
        ("[gate]\nunknown = 'maybe'\n", 'unknown must be "fail" or "warn"'),
        ("[gate]\nunknwon = 'warn'\n", "[gate] takes only 'unknown'"),
        ("[gates]\n", "unknown section(s) ['gates']"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    p = tmp_path / "gate.toml"
    p.write_text(text)
    with pytest.raises(GateConfigError) as exc:
        load_config(p)
    assert message in str(exc.value) and str(p) in str(exc.value)


def test_missing_config_and_disabled_thresholds(tmp_path):
    with pytest.raises(GateConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    cfg = config_from(
        {"thresholds": {"fault_p99_ms": False, "max_recovery_s": 3}, "gate": {"unknown": "warn"}}
    )
    assert cfg.thresholds.fault_p99_ms is None and cfg.thresholds.max_recovery_s == 3.0
    assert cfg.unknown == "warn"


def test_all_pass_exits_0():
    h = storage_run()
    out = judge(run_of(scenario("fmea1", h, storage_verdicts(h))), GateConfig())
    assert (out.status, out.exit_code) == ("pass", EXIT_PASS)
    assert out.findings == []


def test_a_violated_invariant_exits_1_and_names_it():
    h = storage_run(lose={100, 101})  # after the fault: only at-least-once can see it
    out = judge(run_of(scenario("fmea1", h, storage_verdicts(h))), GateConfig())
    assert (out.status, out.exit_code) == ("fail", EXIT_FAIL)
    assert "at-least-once failed" in out.summary and "p-100" in out.summary


def test_unknown_exits_2_or_warns():
    h = storage_run(effective=None)  # the nemesis never confirmed the fault landed
    s = scenario("fmea1", h, storage_verdicts(h))
    assert s["verdicts"][0]["status"] == "unknown"
    out = judge(run_of(s), GateConfig())
    assert (out.status, out.exit_code) == ("unknown", EXIT_UNKNOWN)
    assert "availability-under-storage-faults unknown" in out.scenarios[0].reasons[0]
    warned = judge(run_of(s), GateConfig(unknown="warn"))
    assert (warned.status, warned.exit_code) == ("pass", EXIT_PASS)
    assert warned.warnings and "could not show" in warned.warnings[0]


def test_not_applicable_is_not_unknown():
    h = storage_run()
    na = unknown("hydration", "not applicable here: --store memory", **{"not-applicable": True})
    out = judge(run_of(scenario("fmea3", h, [*storage_verdicts(h), na])), GateConfig())
    assert out.exit_code == EXIT_PASS


def test_fault_latency_budget_is_rejudged_from_the_checker_evidence():
    # the checker's own bound is loose (factor 1000), so it passes; the gate's budget is not
    h = storage_run(fault_latency=0.8)
    s = scenario("fmea1", h, storage_verdicts(h, factor=1000, slack=10))
    assert s["verdicts"][0]["status"] == "pass"
    assert judge(run_of(s), GateConfig()).exit_code == EXIT_PASS  # 2000 ms default budget
    out = judge(run_of(s), GateConfig(thresholds=Thresholds(fault_p99_ms=500)))
    assert out.exit_code == EXIT_FAIL
    (f,) = out.findings
    assert f.threshold == "fault_p99_ms" and f.limit == 500 and 800 <= f.value <= 1200
    assert f.source.startswith("availability-under-storage-faults.evidence.windows[storage-latency]")
    assert "threshold crossed" in out.summary


def test_duplicate_ratio_recovery_and_hydration_budgets():
    h = storage_run(duplicate=set(range(0, 120, 2)))
    out = judge(
        run_of(scenario("dups", h, storage_verdicts(h))),
        GateConfig(thresholds=Thresholds(max_duplicate_ratio=0.1)),
    )
    assert [f.threshold for f in out.findings] == ["max_duplicate_ratio"]
    assert out.findings[0].value == pytest.approx(60 / 300, abs=1e-6)

    h = crash_run()
    s = scenario("crash", h, crash_verdicts(h))
    assert judge(run_of(s), GateConfig()).exit_code == EXIT_PASS
    out = judge(run_of(s), GateConfig(thresholds=Thresholds(max_hydration_s=0.1, max_recovery_s=0.1)))
    assert sorted(f.threshold for f in out.findings) == ["max_hydration_s", "max_recovery_s"]
    assert all(f.scenario == "crash" for f in out.findings)


def test_startup_exit_time_budget():
    h = History(clock=lambda: 0.0)
    h.append("nemesis", "info", "fault-start", value={"name": "port-squat", "port": 4100, "effective": True})
    h.append("broker", "invoke", "launch", value={"port": 4100, "command": "x"}, time=0.1)
    stderr = ["error: [Errno 98] address already in use: port 4100"]
    h.append(
        "broker",
        "fail",
        "launch",
        value={"reason": "exited", "exit_code": 1, "elapsed": 3.5, "stderr": stderr},
        time=3.6,
    )
    h.append("nemesis", "info", "fault-stop", value={"name": "port-squat"}, time=4.0)
    s = scenario("fmea4", h, [check_startup(h)])
    assert s["verdicts"][0]["status"] == "pass"
    assert judge(run_of(s), GateConfig()).exit_code == EXIT_PASS
    out = judge(run_of(s), GateConfig(thresholds=Thresholds(max_startup_exit_s=2)))
    assert [f.threshold for f in out.findings] == ["max_startup_exit_s"] and out.findings[0].value == 3.5


def test_flaw_scenarios_pass_when_their_flaw_is_caught():
    bad = storage_run(fault_latency=0.6, lose={45})
    good = storage_run()
    meta = {"flaw": "store-first", "expect": "availability-under-storage-faults"}
    caught = judge(run_of(scenario("flaw-store-first", bad, storage_verdicts(bad), meta)), GateConfig())
    assert caught.exit_code == EXIT_PASS and "caught by" in caught.scenarios[0].reasons[0]
    missed = judge(run_of(scenario("flaw-store-first", good, storage_verdicts(good), meta)), GateConfig())
    assert missed.exit_code == EXIT_FAIL and "NOT caught" in missed.summary
    no_expect = judge(run_of(scenario("flaw-x", good, storage_verdicts(good), {"flaw": "x"})), GateConfig())
    assert no_expect.exit_code == EXIT_FAIL


def test_scenario_error_and_empty_runs():
    h = storage_run(per_phase=5)
    s = scenario("broke", h, []) | {"error": "hung: the scenario did not finish within 120s"}
    out = judge(run_of(s), GateConfig())
    assert out.exit_code == EXIT_UNKNOWN and "did not complete" in " ".join(out.scenarios[0].reasons)
    assert judge(run_of(), GateConfig()).exit_code == EXIT_ENV


def _load_run(phases: list[dict]) -> dict:
    figures = {"name": "load-figures", "status": "pass", "summary": "", "evidence": {"phases": phases}}
    return run_of({"name": "load default", "verdicts": [figures]})


def _phase(name: str, kind: str, fault: str | None = None, **kw: object) -> dict:
    row = {"name": name, "kind": kind, "fault": fault, "sent": 1000, "refused": 0, "persist_failed": 0}
    row["push"] = {"p99_ms": kw.pop("p99", 20.0)}
    return {**row, **kw}


def test_load_budgets_judge_each_phase_but_a_kill_window() -> None:
    run = _load_run(
        [
            _phase("baseline", "baseline", deliveries_per_s=900.0),
            _phase("storage-latency@10s", "fault", "storage-latency", p99=2500.0),
            _phase("broker-kill@40s", "fault", "broker-kill", p99=9000.0),  # down: no budget
            _phase("recovery", "recovery", refused=80),
        ]
    )
    out = judge(run, GateConfig())
    assert out.exit_code == EXIT_FAIL
    found = {(f.threshold, f.value) for f in out.findings}
    assert found == {("load.push_p99_ms", 2500.0), ("load.max_error_ratio", 0.08)}
    cfg = config_from(
        {"load": {"min_deliveries_per_s": 1000, "max_error_ratio": False,
                  "phase_push_p99_ms": {"storage-latency": 3000, "broker-kill": 5000}}}
    )  # fmt: skip
    found = {(f.threshold, f.value) for f in judge(run, cfg).findings}
    assert found == {("load.min_deliveries_per_s", 900.0), ("load.push_p99_ms", 9000.0)}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"load": {"push_p99": 1}}, "unknown [load] key(s) ['push_p99']"),
        ({"load": {"push_p99_ms": "fast"}}, "load.push_p99_ms must be a number"),
        ({"load": {"phase_push_p99_ms": 3}}, "must be a table of phase = ms"),
        ({"load": 3}, "[load] must be a table"),
    ],
)
def test_bad_load_section(data: dict, message: str) -> None:
    with pytest.raises(GateConfigError) as err:
        config_from(data)
    assert message in str(err.value)
