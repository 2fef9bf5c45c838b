"""Generated fault schedules (Hypothesis): random mixes of faults and workload, shrunk on failure.

Reproducible: examples are derandomized (the same schedules on every run and in CI),
unless ``FASTPORT_LAB_SEED`` (``fastport-lab run / gate --seed N``) gives the draw a
seed: other schedules, the same ones for the same seed (recorded in each scenario's meta).
As many are drawn as the intensity says (12 at ``default``, 60 at ``heavy``);
``FASTPORT_LAB_SCHEDULE_EXAMPLES`` overrides it. A failure
prints the smallest failing schedule and the command that replays it::

    pytest scenarios/test_schedules.py --schedule '[{"op":"broker-kill","n":0},{"op":"subscriber-cut","n":3}]'

(``FASTPORT_LAB_SCHEDULE`` does the same as ``--schedule``.) The steps and the
strategy are :mod:`chaos.suites.schedules`.
"""

import os

import pytest
from hypothesis import HealthCheck, given, note, seed, settings

from chaos.config import REFERENCE_BROKER_CMD
from chaos.runner import ScenarioResult
from chaos.suites.schedules import (
    ENV_SEED,
    ScheduleError,
    label,
    parse_schedule,
    replay_command,
    schedule_scenario,
    seed_from_env,
    steps_strategy,
)


def examples(lab_config) -> int:
    given = os.environ.get("FASTPORT_LAB_SCHEDULE_EXAMPLES", "").strip()
    return int(given) if given else lab_config.load.schedule_examples


def _replay(steps, lab_config) -> str:
    cmd = None if lab_config.broker_cmd == REFERENCE_BROKER_CMD else lab_config.broker_cmd
    return replay_command(steps, cmd, None if lab_config.store == "postgres" else lab_config.store)


def _judge(result: ScenarioResult, steps, lab_config) -> None:
    bad = [v for v in result.verdicts if v.status == "fail"]
    if result.error is not None or bad or not result.verdicts:
        replay = _replay(steps, lab_config)
        raise AssertionError(
            f"schedule failed: {', '.join(v.name for v in bad) or result.error}\n"
            f"replay it with:\n  {replay}\n{result.report()}"
        )
    assert result.verdict("at-least-once").status == "pass", result.report()


@pytest.mark.integration
@pytest.mark.fmea("schedules")
@pytest.mark.timeout(900)  # passing takes ~20 s; shrinking a failure: ~20 more runs (5 min cap)
def test_generated_schedules(run_lab, lab_config, request):
    if request.config.getoption("--schedule") or os.environ.get("FASTPORT_LAB_SCHEDULE"):
        pytest.skip("replaying one given schedule instead (test_replay_schedule)")
    try:
        drawn_with = seed_from_env()
    except ScheduleError as exc:
        pytest.fail(f"bad {ENV_SEED}: {exc}", pytrace=False)
    meta = {} if drawn_with is None else {"seed": drawn_with}

    @settings(
        max_examples=examples(lab_config),
        derandomize=drawn_with is None,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        print_blob=False,
    )
    @given(steps=steps_strategy(lab_config.durable))
    def check(steps):
        note(f"replay: {_replay(steps, lab_config)}")
        result = run_lab(schedule_scenario(steps), name=label(steps), meta={"schedule": steps, **meta})
        _judge(result, steps, lab_config)

    (check if drawn_with is None else seed(drawn_with)(check))()


@pytest.mark.integration
@pytest.mark.fmea("schedules")
def test_replay_schedule(run_lab, lab_config, request):
    text = request.config.getoption("--schedule") or os.environ.get("FASTPORT_LAB_SCHEDULE")
    if not text:
        pytest.skip("no --schedule given (FASTPORT_LAB_SCHEDULE)")
    try:
        steps = parse_schedule(text, lab_config.durable)
    except ScheduleError as exc:
        pytest.fail(f"bad --schedule: {exc}", pytrace=False)
    _judge(
        run_lab(schedule_scenario(steps), name=f"replay {label(steps)}", meta={"schedule": steps}),
        steps,
        lab_config,
    )
