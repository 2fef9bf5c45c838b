"""Fault schedules of a load run: baseline, then faults with a start and a duration, then recovery.

Pure data and parsing (no I/O but reading the file). A schedule is written in
TOML or JSON, or named (:data:`NAMED`)::

    recovery = 10            # seconds of load after the last fault ends

    [[fault]]
    name = "storage-latency" # a fault of the registry (fastport-lab load --list-faults)
    start = 10               # seconds after the load started; the baseline is what comes before
    duration = 8             # for broker-kill: the time it stays down
    latency_ms = 300         # the fault's own parameters

JSON has the same keys, the faults under ``"faults"`` (``"fault"`` is accepted
too). Faults run one at a time: windows may not overlap. Every mistake is a
:class:`ScheduleError` naming the file and the line of the fault it is about.

A subscriber fault is aimed at subscribers the lab runs itself beside the load
users (their connections go through fault-proxy links of their own): the
driver supplies ``sub`` / ``subs``; a schedule may say how many with
``targets``.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEP_KEYS = ("name", "start", "duration", "targets")
DRIVER_PARAMS = frozenset({"sub", "subs", "burst"})  # the load driver fills these in
MAX_TARGETS = 8


class ScheduleError(ValueError):
    """A schedule that cannot run; the message says where (file, line) and why."""


@dataclass(frozen=True)
class Step:
    """One fault window: *name* from *start* for *duration* seconds, with the fault's *params*."""

    name: str
    start: float
    duration: float
    params: dict[str, Any] = field(default_factory=dict)
    targets: int = 1  # lab-run subscribers a subscriber fault is aimed at
    line: int | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def label(self) -> str:
        return f"{self.name}@{self.start:g}s"


@dataclass(frozen=True)
class Phase:
    """A stretch of the run: ``baseline``, a fault window, a ``gap`` between two, or ``recovery``."""

    name: str
    kind: str  # baseline, fault, gap, recovery
    start: float
    end: float
    step: Step | None = None


@dataclass(frozen=True)
class Schedule:
    name: str
    steps: tuple[Step, ...] = ()
    recovery: float = 10.0

    @property
    def baseline(self) -> float:
        return self.steps[0].start if self.steps else self.recovery

    @property
    def length(self) -> float:
        """Seconds of load the schedule needs: through the last fault and its recovery."""
        return (self.steps[-1].end if self.steps else 0.0) + self.recovery

    def phases(self, duration: float | None = None) -> list[Phase]:
        """The run cut into phases; the recovery runs to *duration* when that is longer."""
        end = max(self.length, duration or 0.0)
        if not self.steps:
            return [Phase("baseline", "baseline", 0.0, end)]
        out = [Phase("baseline", "baseline", 0.0, self.steps[0].start)]
        for i, s in enumerate(self.steps):
            if i and s.start > self.steps[i - 1].end:
                out.append(Phase(f"gap before {s.label}", "gap", self.steps[i - 1].end, s.start))
            out.append(Phase(s.label, "fault", s.start, s.end, s))
        out.append(Phase("recovery", "recovery", self.steps[-1].end, end))
        return [p for p in out if p.end > p.start]

    def fit(self, duration: float | None) -> Schedule:
        """Check the schedule fits in *duration* seconds of load (None: exactly its own length)."""
        if duration is not None and duration + 1e-9 < self.length:
            raise ScheduleError(
                f"schedule {self.name!r} needs {self.length:g}s of load (last fault ends at "
                f"{self.length - self.recovery:g}s, then {self.recovery:g}s of recovery); "
                f"--duration {duration:g} is shorter"
            )
        return self


def _steps(*rows: tuple[Any, ...]) -> tuple[Step, ...]:
    """Steps from (name, start, duration, params[, targets]) rows."""
    return tuple(Step(r[0], float(r[1]), float(r[2]), dict(r[3]), *r[4:]) for r in rows)


NAMED: dict[str, Schedule] = {
    s.name: s
    for s in (
        Schedule("none", (), 20.0),
        # Every FMEA under load: slow storage, a dead subscriber link, a reader whose buffers fill,
        # a SIGKILL and restart; each after a baseline and with room to recover.
        Schedule(
            "default",
            _steps(
                ("storage-latency", 10, 8, {"latency_ms": 300}),
                ("link-blackhole", 22, 8, {}, 2),
                ("subscriber-slow", 34, 10, {}, 2),
                ("broker-kill", 48, 2, {}),
            ),
            12.0,
        ),
        # The CI run: one storage fault and one kill in about 20 s.
        Schedule(
            "short", _steps(("storage-latency", 5, 4, {"latency_ms": 300}), ("broker-kill", 12, 1, {})), 7.0
        ),
        Schedule(
            "storage",
            _steps(
                ("storage-latency", 10, 8, {"latency_ms": 300}),
                ("storage-hang", 22, 6, {}),
                ("storage-down", 32, 6, {}),
                ("postgres-stop", 42, 6, {}),
            ),
            12.0,
        ),
        Schedule(
            "subscribers",
            _steps(
                ("link-blackhole", 10, 8, {}, 2),
                ("link-reset", 22, 4, {}, 2),
                ("link-cut", 30, 4, {}, 2),
                ("subscriber-slow", 38, 10, {}, 2),
            ),
            10.0,
        ),
        Schedule(
            "process",
            _steps(("broker-kill", 10, 2, {}), ("broker-pause", 20, 3, {}), ("broker-kill", 30, 2, {})),
            12.0,
        ),
    )
}


def resolve(spec: str, faults: Mapping[str, Collection[str]]) -> Schedule:
    """A named schedule, or the TOML/JSON file *spec* names; *faults* maps fault names to parameters."""
    if spec in NAMED:
        return validate(NAMED[spec], faults, source=f"schedule {spec!r}")
    path = Path(spec)
    if not path.is_file():
        raise ScheduleError(
            f"--faults {spec!r}: not a named schedule ({', '.join(NAMED)}) nor a readable file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"{path}: cannot read: {exc}") from None
    return parse(text, faults, source=str(path), json_format=path.suffix.lower() == ".json")


def parse(text: str, faults: Mapping[str, Collection[str]], *, source: str, json_format: bool) -> Schedule:
    """Parse and validate one schedule text."""
    if json_format:
        doc, lines = _json(text, source)
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its message names the line and column
            raise ScheduleError(f"{source}: not valid TOML: {exc}") from None
        lines = [i + 1 for i, ln in enumerate(text.splitlines()) if re.match(r"\s*\[\[\s*faults?\s*\]\]", ln)]
    if not isinstance(doc, dict):
        raise ScheduleError(f"{source}: a schedule is a table (TOML) or an object (JSON)")
    unknown = set(doc) - {"fault", "faults", "recovery", "name"}
    if unknown:
        raise ScheduleError(
            f"{source}: unknown top-level key(s) {sorted(unknown)}; use recovery and [[fault]]"
        )
    rows = doc.get("faults", doc.get("fault", []))
    if not isinstance(rows, list):
        raise ScheduleError(f"{source}: 'fault' must be a list of tables ([[fault]] in TOML)")
    recovery = _seconds(doc.get("recovery", 10.0), "recovery", f"{source}", allow_zero=True)
    steps = []
    for i, row in enumerate(rows):
        line = lines[i] if i < len(lines) else None
        where = f"{source}, line {line}" if line else f"{source}, fault {i + 1}"
        if not isinstance(row, dict):
            raise ScheduleError(f"{where}: a fault is a table with name, start and duration")
        steps.append(_step(row, where, line))
    name = str(doc.get("name") or Path(source).stem)
    steps.sort(key=lambda st: st.start)
    return validate(Schedule(name, tuple(steps), recovery), faults, source=source)


def _json(text: str, source: str) -> tuple[Any, list[int]]:
    """The document, and the line each element of its fault list starts on (json has no positions)."""
    decoder = json.JSONDecoder()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScheduleError(
            f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    lines: list[int] = []
    m = re.search(r'"faults?"\s*:\s*\[', text)
    if m is not None:
        pos = m.end()
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text) or text[pos] == "]":
                break
            try:
                _, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                break
            lines.append(text.count("\n", 0, pos) + 1)
            pos = end
    return doc, lines


def _seconds(value: Any, key: str, where: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScheduleError(f"{where}: '{key}' must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ScheduleError(
            f"{where}: '{key}' must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}"
        )
    return float(value)


def _step(row: dict[str, Any], where: str, line: int | None) -> Step:
    name = row.get("name")
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"{where}: a fault needs a 'name' (a fault of the registry)")
    for key in ("start", "duration"):
        if key not in row:
            raise ScheduleError(f"{where}: fault {name!r} needs '{key}' (seconds)")
    targets = row.get("targets", 1)
    if isinstance(targets, bool) or not isinstance(targets, int) or not 1 <= targets <= MAX_TARGETS:
        raise ScheduleError(f"{where}: 'targets' must be an integer 1..{MAX_TARGETS}, got {targets!r}")
    params = {k: v for k, v in row.items() if k not in STEP_KEYS}
    return Step(
        name,
        _seconds(row["start"], "start", where, allow_zero=True),
        _seconds(row["duration"], "duration", where),
        params,
        targets,
        line,
    )


def validate(schedule: Schedule, faults: Mapping[str, Collection[str]], *, source: str) -> Schedule:
    """Known faults, known parameters, windows in order and apart."""
    previous: Step | None = None
    for i, s in enumerate(schedule.steps):
        where = f"{source}, line {s.line}" if s.line else f"{source}, fault {i + 1}"
        if s.name not in faults:
            raise ScheduleError(f"{where}: unknown fault {s.name!r}; known: {', '.join(sorted(faults))}")
        allowed = set(faults[s.name]) - DRIVER_PARAMS
        bad = sorted(set(s.params) - allowed)
        if bad:
            given_by_lab = [b for b in bad if b in DRIVER_PARAMS]
            hint = (
                f"{', '.join(given_by_lab)} are chosen by the lab (use 'targets')"
                if given_by_lab
                else f"parameters of {s.name}: {', '.join(sorted(allowed)) or 'none'}"
            )
            raise ScheduleError(f"{where}: unknown parameter(s) {bad} for {s.name!r}; {hint}")
        if previous is not None and s.start < previous.end:
            raise ScheduleError(
                f"{where}: {s.name!r} starts at {s.start:g}s, inside {previous.name!r} "
                f"({previous.start:g}s..{previous.end:g}s); faults run one at a time"
            )
        previous = s
    return schedule
