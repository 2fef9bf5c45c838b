"""Live progress of running scenarios, for ``fastport-lab run``'s display.

Scenarios run inside pytest, possibly in several xdist workers, so progress
travels through a file of JSON lines named by ``$FASTPORT_LAB_PROGRESS``: each
scenario's history gets a listener that appends a short snapshot (phase, active
faults, deliveries so far) at most a few times a second and whenever a fault
starts or stops. Lines of a few hundred bytes written with ``O_APPEND`` do not
interleave between processes. Without the variable nothing is written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaos.history import Event, History

ENV = "FASTPORT_LAB_PROGRESS"


@dataclass
class ScenarioProgress:
    scenario: str
    phase: str = "starting"  # starting, baseline, fault, recovery, done
    faults: list[str] = field(default_factory=list)
    delivered: int = 0
    published: int = 0
    status: str = "running"  # running, pass, fail, unknown, error
    elapsed: float = 0.0


class ProgressWriter:
    """A :class:`History` listener that snapshots a scenario's progress into the progress file."""

    def __init__(self, path: str | Path, scenario: str, *, interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.state = ScenarioProgress(scenario)
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last = -interval
        self._active: dict[str, int] = {}

    def __call__(self, ev: Event) -> None:
        s = self.state
        urgent = False
        if ev.f == "deliver" and ev.type == "ok":
            s.delivered += 1
        elif ev.f == "publish" and ev.type == "ok":
            s.published += 1
        elif ev.f in ("fault-start", "fault-stop") and isinstance(name := ev.get("name"), str):
            count = self._active.get(name, 0) + (1 if ev.f == "fault-start" else -1)
            if count > 0:
                self._active[name] = count
            else:
                self._active.pop(name, None)
            s.faults = sorted(self._active)
            s.phase = "fault" if s.faults else "recovery"
            urgent = True
        if s.phase == "starting" and s.published:
            s.phase = "baseline"
        now = self.clock()
        if urgent or now - self._last >= self.interval:
            self._write(now)

    def finish(self, status: str) -> None:
        self.state.phase, self.state.status, self.state.faults = "done", status, []
        self._write(self.clock())

    def _write(self, now: float) -> None:
        self._last = now
        self.state.elapsed = round(now - self.started, 2)
        line = json.dumps(self.state.__dict__, separators=(",", ":")) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as fp:
                fp.write(line)
        except OSError:
            pass  # progress is a courtesy; never fail a scenario over it


def attach(history: History, scenario: str) -> ProgressWriter | None:
    """Report *history*'s progress when ``$FASTPORT_LAB_PROGRESS`` names a file; else None."""
    path = os.environ.get(ENV)
    if not path:
        return None
    writer = ProgressWriter(path, scenario)
    history.add_listener(writer)
    return writer


class ProgressReader:
    """Tails the progress file; keeps the latest snapshot of every scenario seen."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.scenarios: dict[str, ScenarioProgress] = {}
        self._offset = 0
        self._partial = ""

    def poll(self) -> dict[str, ScenarioProgress]:
        try:
            with open(self.path, encoding="utf-8") as fp:
                fp.seek(self._offset)
                chunk = fp.read()
                self._offset = fp.tell()
        except FileNotFoundError:
            return self.scenarios
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        for line in lines:
            try:
                d = json.loads(line)
                snap = ScenarioProgress(**d)
            except (ValueError, TypeError):
                continue  # not ours or torn: skip, the next snapshot supersedes it
            self.scenarios[snap.scenario] = snap
        return self.scenarios
