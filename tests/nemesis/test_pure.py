"""Pure parts of the environment, scenario runner and schedules: config resolution, reports, parsing."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from chaos.checkers.bad_input import BAD_INPUT, check_bad_input
from chaos.checkers.persistence import PERSIST_OUTCOME, check_persistence_outcomes
from chaos.checkers.verdict import failed, not_applicable, passed
from chaos.config import (
    ENV_BROKER_CMD,
    ENV_INTENSITY,
    ENV_STORE,
    REFERENCE_BROKER_CMD,
    LabConfig,
    LabConfigError,
)
from chaos.environment import _dsn_via
from chaos.history import History
from chaos.runner import ScenarioResult, assert_all_pass
from chaos.suites.schedules import ScheduleError, parse_schedule, replay_command

USER_CMD = "node mybroker.js --port {port} --db {dsn}"


def test_config_precedence_explicit_then_env_then_default():
    env = {ENV_BROKER_CMD: USER_CMD, ENV_STORE: "memory"}
    assert LabConfig.resolve(env={}) == LabConfig()
    assert LabConfig.resolve(env={}).broker_cmd == REFERENCE_BROKER_CMD
    c = LabConfig.resolve(env=env)
    assert (c.broker_cmd, c.store, c.is_reference, c.durable) == (USER_CMD, "memory", False, False)
    c = LabConfig.resolve("other --port {port}", "postgres", env=env)
    assert (c.broker_cmd, c.store) == ("other --port {port}", "postgres")
    assert LabConfig.resolve(env={ENV_INTENSITY: "heavy"}).intensity == "heavy"
    assert LabConfig.resolve(env={ENV_INTENSITY: "heavy"}, intensity="smoke").intensity == "smoke"


@pytest.mark.parametrize(
    ("cmd", "store", "needle"),
    [
        ("mybroker --port {port}", "disk", "store must be one of"),
        ("mybroker --port {prot}", "memory", "unknown placeholder {prot}"),
        ("mybroker --listen 9000", "memory", "no {port} placeholder"),
        ("mybroker 'unterminated --port {port}", "memory", "cannot be split"),
        ("", "memory", "empty"),
    ],
)
def test_bad_config_gets_a_clear_error(cmd, store, needle):
    with pytest.raises(LabConfigError) as err:
        LabConfig(broker_cmd=cmd or " ", store=store)
    assert needle in str(err.value)
    with pytest.raises(LabConfigError, match="intensity must be one of smoke, default, heavy"):
        LabConfig(intensity="extreme")


def test_flaw_variants_only_for_the_reference_broker():
    ref = LabConfig()
    assert ref.is_reference and ref.with_flaw("no-hydrate").broker_cmd.endswith("--flaw no-hydrate")
    with pytest.raises(LabConfigError, match="unknown flaw"):
        ref.with_flaw("slow-start")
    with pytest.raises(LabConfigError, match="only for the reference broker"):
        LabConfig(broker_cmd=USER_CMD).with_flaw("no-hydrate")


def test_the_flaw_matrix_runs_at_default_intensity_or_more():
    assert LabConfig(intensity="smoke").with_flaw("no-hydrate").intensity == "default"
    assert LabConfig(intensity="heavy").with_flaw("no-hydrate").intensity == "heavy"


def test_dsn_goes_through_the_proxy_keeping_user_and_database():
    dsn = "postgresql://postgres@127.0.0.1:5432/lab_x?sslmode=disable"
    assert _dsn_via(dsn, "127.0.0.1", 4000) == "postgresql://postgres@127.0.0.1:4000/lab_x?sslmode=disable"
    assert _dsn_via("postgresql://h:1/db", "127.0.0.1", 2) == "postgresql://127.0.0.1:2/db"


def _bad_history(rows: list[tuple[str, str, dict]]) -> History:
    h = History(clock=iter(range(1000)).__next__, start=0.0)
    for type_, f, value in rows:
        h.append("bad", type_, f, value=value)
    return h


def test_bad_input_checker_passes_fails_and_says_unknown():
    ok = _bad_history(
        [
            ("invoke", "bad-frame", {"case": "not-json", "expect": ["bad_request"]}),
            ("ok", "bad-frame", {"case": "not-json", "answer": {"type": "error", "code": "bad_request"}}),
            ("invoke", "ping", {"ref": "a", "after": "not-json"}),
            ("ok", "ping", {"ref": "a", "after": "not-json"}),
        ]
    )
    assert check_bad_input(ok).status == "pass"
    wrong = _bad_history(
        [
            ("invoke", "bad-frame", {"case": "unknown-type", "expect": ["unknown_type"]}),
            ("fail", "bad-frame", {"case": "unknown-type", "answer": {"type": "error", "code": "internal"}}),
            ("invoke", "ping", {"ref": "a", "after": "unknown-type"}),
            ("fail", "ping", {"ref": "a", "after": "unknown-type"}),
        ]
    )
    v = check_bad_input(wrong)
    assert v.status == "fail" and v.name == BAD_INPUT
    assert "unknown-type" in v.summary and "stopped answering" in v.summary
    assert check_bad_input(History()).status == "unknown"


def _result(verdicts, error=None) -> ScenarioResult:
    return ScenarioResult("demo", LabConfig(), verdicts, History(), Path("/tmp/run-x"), 1.0, error)


def test_failure_report_names_the_invariant_the_evidence_and_the_history():
    bad = failed("at-least-once", "2 pairs lost; first: p-1 -> s1 at t=1.2s", lost=[{"id": "p-1"}])
    r = _result([passed("integrity", "fine"), bad, not_applicable("no-zombie", "memory store")])
    with pytest.raises(AssertionError) as err:
        assert_all_pass(r)
    msg = str(err.value)
    assert "at-least-once=fail" in msg and "p-1 -> s1 at t=1.2s" in msg
    assert '"lost"' in msg and "/tmp/run-x" in msg
    assert "[N/A ] no-zombie" in msg and "no-zombie=" not in msg.splitlines()[0]


def test_not_applicable_is_not_a_problem_but_an_error_is():
    assert_all_pass(_result([passed("x", "ok"), not_applicable("y", "why")]))
    with pytest.raises(AssertionError, match="did not complete: LaunchError"):
        assert_all_pass(_result([passed("x", "ok")], error="LaunchError: exited 3"))


def test_schedule_parsing_rejects_bad_steps_clearly():
    steps = [{"op": "publish", "n": 2}, {"op": "storage-down", "n": 1}, {"op": "broker-kill", "n": 0}]
    assert parse_schedule(json.dumps(steps)) == steps
    legacy = [{"op": "publish", "n": 2}, {"op": "storage", "fault": "down", "n": 1}, {"op": "kill"}]
    assert parse_schedule(json.dumps(legacy)) == steps  # schedules printed by older labs still replay
    for text, needle in [
        ("{", "not JSON"),
        ("[]", "non-empty"),
        ('[{"op": "nuke"}]', "step 0: unknown op 'nuke'"),
        ('[{"op": "publish", "n": 0}]', "'n' must be"),
        ('[{"op": "publish", "n": true}]', "'n' must be"),
        ('[{"op": "storage", "fault": "fire", "n": 1}]', "'fault' must be"),
        ('[{"op": "port-squat", "n": 1}]', "unknown op 'port-squat'"),
        ('["publish"]', "expected an object"),
    ]:
        with pytest.raises(ScheduleError) as err:
            parse_schedule(text)
        assert needle in str(err.value)
    with pytest.raises(ScheduleError, match="needs --store postgres"):
        parse_schedule('[{"op": "kill"}]', durable=False)


def test_replay_command_round_trips():
    steps = [{"op": "subscriber-cut", "n": 3}, {"op": "broker-kill", "n": 0}]
    argv = shlex.split(replay_command(steps, USER_CMD, "memory"))
    assert argv[:2] == ["pytest", "scenarios/test_schedules.py"]
    assert parse_schedule(argv[argv.index("--schedule") + 1]) == steps
    assert argv[argv.index("--broker-cmd") + 1] == USER_CMD and argv[-1] == "memory"


def test_persistence_outcome_checker():
    def hist(outcomes: dict[str, list[str]]) -> History:
        h = History(clock=iter(range(1000)).__next__, start=0.0)
        for i in outcomes:
            h.append("p", "ok", "publish", "t", i, {"recipients": 1})
        for i, fs in outcomes.items():
            for f in fs:
                h.append("p", "ok" if f == "persisted" else "fail", f, "t", i)
        return h

    assert check_persistence_outcomes(hist({"a": ["persisted"], "b": ["persist_failed"]})).status == "pass"
    v = check_persistence_outcomes(hist({"a": ["persisted"], "b": []}))
    assert v.status == "fail" and v.name == PERSIST_OUTCOME and "first: b" in v.summary
    v = check_persistence_outcomes(hist({"a": ["persisted", "persist_failed"]}))
    assert v.status == "fail" and "more than one outcome" in v.summary
    assert check_persistence_outcomes(History()).status == "unknown"
