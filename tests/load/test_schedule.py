"""The load schedule parser: named schedules, TOML and JSON files, and clear errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.faults import REGISTRY
from chaos.load.schedule import NAMED, Schedule, ScheduleError, Step, parse, resolve

FAULTS = {c["name"]: c["params"] for c in REGISTRY.catalogue()}


def toml(text: str) -> Schedule:
    return parse(text, FAULTS, source="s.toml", json_format=False)


def js(text: str) -> Schedule:
    return parse(text, FAULTS, source="s.json", json_format=True)


GOOD_TOML = """
recovery = 6

[[fault]]
name = "storage-latency"
start = 5
duration = 4
latency_ms = 250

[[fault]]
name = "broker-kill"
start = 12
duration = 1
"""


def test_a_toml_schedule_gives_steps_phases_and_length() -> None:
    s = toml(GOOD_TOML)
    assert s.steps == (
        Step("storage-latency", 5.0, 4.0, {"latency_ms": 250}, 1, 4),
        Step("broker-kill", 12.0, 1.0, {}, 1, 10),
    )
    assert s.baseline == 5 and s.length == 19
    assert [(p.kind, p.start, p.end) for p in s.phases()] == [
        ("baseline", 0, 5), ("fault", 5, 9), ("gap", 9, 12), ("fault", 12, 13), ("recovery", 13, 19)
    ]  # fmt: skip
    assert s.phases(30)[-1].end == 30  # a longer --duration stretches the recovery


def test_json_is_the_same_schedule() -> None:
    s = js(
        '{"recovery": 6, "faults": [\n'
        '  {"name": "storage-latency", "start": 5, "duration": 4, "latency_ms": 250},\n'
        '  {"name": "broker-kill", "start": 12, "duration": 1}\n]}'
    )
    assert [(st.name, st.start, st.line) for st in s.steps] == [
        ("storage-latency", 5, 2),
        ("broker-kill", 12, 3),
    ]
    assert s.length == 19


def test_every_named_schedule_is_valid() -> None:
    for name in NAMED:
        s = resolve(name, FAULTS)
        assert s.name == name and s.length > 0


def test_steps_out_of_order_are_sorted() -> None:
    s = toml(
        '[[fault]]\nname = "broker-kill"\nstart = 20\nduration = 1\n'
        '[[fault]]\nname = "storage-down"\nstart = 5\nduration = 3\n'
    )
    assert [st.name for st in s.steps] == ["storage-down", "broker-kill"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('recovery = "x"', "'recovery' must be a number"),
        ("[[fault]]\nname = 'storage-lag'\nstart = 1\nduration = 2\n", "line 1: unknown fault 'storage-lag'"),
        (
            "\n\n[[fault]]\nname = 'storage-latency'\nstart = 1\n",
            "line 3: fault 'storage-latency' needs 'duration'",
        ),
        ("[[fault]]\nname = 'storage-latency'\nstart = 1\nduration = 0\n", "'duration' must be > 0"),
        ("[[fault]]\nname = 'storage-latency'\nstart = -1\nduration = 1\n", "'start' must be >= 0"),
        (
            "[[fault]]\nname = 'storage-latency'\nstart = 1\nduration = 2\nlatency = 5\n",
            "unknown parameter(s) ['latency']",
        ),
        (
            "[[fault]]\nname = 'link-cut'\nstart = 1\nduration = 2\nsub = 'x'\n",
            "chosen by the lab (use 'targets')",
        ),
        (
            "[[fault]]\nname = 'link-cut'\nstart = 1\nduration = 2\ntargets = 99\n",
            "'targets' must be an integer 1..8",
        ),
        (
            "[[fault]]\nname = 'storage-down'\nstart = 1\nduration = 5\n\n"
            "[[fault]]\nname = 'broker-kill'\nstart = 3\nduration = 1\n",
            "line 6: 'broker-kill' starts at 3s, inside 'storage-down' (1s..6s)",
        ),
        ("[[fault]\nname = 1", "not valid TOML"),
        ("fault = 3", "'fault' must be a list"),
        ("faults = [1]\n", "a fault is a table"),
        ("duration = 30\n", "unknown top-level key(s) ['duration']"),
        ("[[fault]]\nstart = 1\nduration = 2\n", "a fault needs a 'name'"),
    ],
)
def test_bad_toml_gets_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as err:
        toml(text)
    assert message in str(err.value) and "s.toml" in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"faults": [\n{"name": "x", "start": 1, "duration": 1}]}', "line 2: unknown fault 'x'"),
        ('{"faults": [', "not valid JSON"),
        ("[1, 2]", "a schedule is a table"),
        ('{"faults": [{"name": "broker-kill", "start": true, "duration": 1}]}', "'start' must be a number"),
    ],
)
def test_bad_json_gets_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as err:
        js(text)
    assert message in str(err.value)


def test_files_are_read_by_suffix_and_a_missing_one_is_named(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(GOOD_TOML)
    assert resolve(str(tmp_path / "s.toml"), FAULTS).length == 19
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ScheduleError, match="cannot read"):
        resolve(str(tmp_path / "bin.toml"), FAULTS)
    with pytest.raises(ScheduleError, match="not a named schedule"):
        resolve(str(tmp_path / "nope.toml"), FAULTS)


def test_a_duration_shorter_than_the_schedule_is_refused() -> None:
    s = toml(GOOD_TOML)
    assert s.fit(19) is s and s.fit(None) is s
    with pytest.raises(ScheduleError, match="needs 19s of load"):
        s.fit(10)
