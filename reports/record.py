"""The run folder: what the scenario runner hands over, and what ends up on disk.

The scenario side calls one small interface and knows nothing of HTML::

    recorder = RunRecorder(command=sys.argv, broker_cmd=cfg.broker_cmd, store=cfg.store, seed=seed)
    recorder.add_scenario("storage_faults", 1, history, verdicts, {"nodeid": "scenarios/...::test_x"})
    # or, with a chaos.runner.ScenarioResult:  recorder.add_result(result, fmea=1)
    report = reports.build.finish(recorder)   # judges, writes everything, returns RunReport
    sys.exit(report.exit_code)

``reports/runs/<run-id>/`` then holds, per scenario, ``<slug>/history.jsonl``
(the history as recorded, re-checkable later; ``history.npz``, compact, when it
is big) and the broker logs, and, for the run,
``results.json`` (verdicts with evidence, phase metrics, timeline, environment,
seed, the command that reproduces it, the gate's outcome), ``junit.xml``,
``index.html`` and ``plotly.min.js`` (so the report opens offline). The runs
folder itself gets ``index.html``, the list of past runs with a trend.

The history is reduced to a bounded timeline when it is added
(``reports.timeline``), so the recorder holds bounded data however long the
run; the phase table comes from the ``recovery`` and ``hydration`` verdicts'
evidence, and ``results.json`` is all the report builder needs: a run is
re-judged and re-rendered without re-reading its histories.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos.checkers.availability import NAME as AVAILABILITY
from chaos.checkers.facts import Facts
from chaos.checkers.hydration import HYDRATION, NO_ZOMBIE
from chaos.checkers.isolation import NAME as ISOLATION
from chaos.checkers.recovery import NAME as RECOVERY
from chaos.checkers.startup import NAME as STARTUP
from chaos.history import History
from chaos.runner import HISTORY_FILES, history_file_name
from reports import timeline
from reports.envinfo import environment

FORMAT = "fastport-run"
VERSION = 1
DEFAULT_ROOT = Path("reports") / "runs"  # relative to the current directory: runs stay with the project
# Which FMEA mode a checker's verdict speaks to, for scenarios recorded without one.
FMEA_OF_CHECKER = {AVAILABILITY: 1, ISOLATION: 2, HYDRATION: 3, NO_ZOMBIE: 3, STARTUP: 4}


class RunFormatError(ValueError):
    """A run folder's results.json is missing or malformed; the message names the file."""


def new_run_id(now: float | None = None) -> str:
    t = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"{t:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:80] or "scenario"


def _verdict_dict(v: Any) -> dict[str, Any]:
    d = v.to_dict() if hasattr(v, "to_dict") else dict(v)
    if not isinstance(d.get("name"), str) or d.get("status") not in ("pass", "fail", "unknown"):
        raise TypeError(f"not a verdict (needs name and status pass|fail|unknown): {d!r}")
    d.setdefault("summary", "")
    d.setdefault("evidence", {})
    # evidence must survive JSON: anything else is shown as its repr rather than breaking the run folder
    d["evidence"] = json.loads(json.dumps(d["evidence"], default=repr, allow_nan=False))
    return d


def phases_of(verdicts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The phase table (baseline, then each fault window) from the recovery and hydration evidence."""
    by_name = {v["name"]: v for v in verdicts}
    rec = by_name.get(RECOVERY)
    if rec is None or not isinstance(rec.get("evidence"), dict) or "windows" not in rec["evidence"]:
        return None
    ev = rec["evidence"]
    hyd = {
        c.get("start_s"): c.get("redelivery_s")
        for c in (by_name.get(HYDRATION, {}).get("evidence") or {}).get("crashes", [])
    }
    windows = [dict(w, hydration_s=hyd.get(w.get("start_s"))) for w in ev["windows"]]
    return {"baseline": ev.get("baseline") or {}, "windows": windows}


def _fmea_of(fmea: int | str | None, verdicts: Iterable[Mapping[str, Any]]) -> int | str | None:
    if fmea is not None:
        return fmea
    modes = {FMEA_OF_CHECKER[v["name"]] for v in verdicts if v["name"] in FMEA_OF_CHECKER}
    return modes.pop() if len(modes) == 1 else None


def reproduce_scenario(meta: Mapping[str, Any], broker_cmd: str | None, store: str | None) -> str | None:
    """A command that reruns one scenario: given in meta, or pytest on its node id with the same broker.

    A generated schedule (meta ``schedule``) is replayed with ``--schedule`` on its test module, not
    its node id: the generated test skips itself when a schedule is given, and the module's replay
    test runs exactly that schedule, whatever the seed it was drawn with.
    """
    if meta.get("reproduce"):
        return str(meta["reproduce"])
    nodeid = meta.get("nodeid")
    if not nodeid:
        return None
    target = str(nodeid).split("::")[0] if meta.get("schedule") is not None else str(nodeid)
    args = ["./lab", "test", target]
    if broker_cmd:
        args += ["--broker-cmd", broker_cmd]
    if store:
        args += ["--store", store]
    if meta.get("schedule") is not None:
        args += ["--schedule", json.dumps(meta["schedule"], separators=(",", ":"))]
    return shlex.join(args)


class RunRecorder:
    """Collects a run's scenarios; ``reports.build.finish`` judges them and writes the run folder.

    Thread-safe.
    """

    def __init__(
        self,
        root: str | Path = DEFAULT_ROOT,
        *,
        run_id: str | None = None,
        command: Sequence[str] | str | None = None,
        seed: int | str | None = None,
        broker_cmd: str | None = None,
        store: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.run_id = run_id or new_run_id()
        if slug(self.run_id) != self.run_id:
            raise ValueError(f"run id {self.run_id!r} may hold only letters, digits, '.', '_' and '-'")
        self.run_dir = self.root / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=False)
        self.command = command if isinstance(command, str) or command is None else shlex.join(command)
        self.seed = seed
        self.broker_cmd = broker_cmd
        self.store = store
        self.started = time.time()
        self._t0 = time.monotonic()
        self._scenarios: list[dict[str, Any]] = []
        self._slugs: set[str] = set()
        self._lock = threading.Lock()
        self.sealed = False  # results taken for writing: no more scenarios

    def add_scenario(
        self,
        name: str,
        fmea: int | str | None,
        history: History,
        verdicts: Iterable[Any],
        meta: Mapping[str, Any] | None = None,
        *,
        error: str | None = None,
        duration: float | None = None,
        files: Iterable[str | Path] = (),
    ) -> dict[str, Any]:
        """Record one scenario: its history (written now), verdicts, and metadata.

        *fmea*: the FMEA mode (1-4, or a label such as ``"bad-input"``; None infers it from the
        checkers). *meta* keys the report understands: ``nodeid`` (pytest node, for the reproduce
        command), ``flaw`` and ``expect`` (a flaw-matrix run: the ``--flaw`` and the checker that
        must fail), ``schedule`` and ``seed`` (a generated fault schedule), ``broker_cmd``,
        ``store``, ``notes``, ``reproduce`` (an explicit command). *error*: the scenario itself
        broke (hang, launch failure); its verdicts may then be partial. *files* (the broker logs) are
        copied into the scenario's folder, where the report links them.

        The history is written as JSON lines (``history.jsonl``), or compact (``history.npz``) when it
        holds over ``chaos.runner.COMPACT_OVER`` events: a load run's millions would take a minute and
        a gigabyte as JSON lines. ``results.json`` names the file (``history``); ``History.read`` reads
        either.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"scenario name must be a non-empty string, got {name!r}")
        if not isinstance(history, History):
            raise TypeError(f"history must be a chaos.history.History, got {type(history).__name__}")
        if self.sealed:
            raise RuntimeError("the run is finished; start a new RunRecorder")
        vs = [_verdict_dict(v) for v in verdicts]
        meta = json.loads(json.dumps(dict(meta or {}), default=repr))
        files = [Path(f) for f in files]
        names = [f.name for f in files]
        clash = [n for i, n in enumerate(names) if n in HISTORY_FILES or n in names[:i]]
        if clash:
            raise ValueError(f"files {clash}: the scenario folder holds one file of each name, history too")
        with self._lock:
            base = s = slug(name)
            n = 1
            while s in self._slugs:
                n += 1
                s = f"{base}-{n}"
            self._slugs.add(s)
        folder = self.run_dir / s
        folder.mkdir()
        history_name = history_file_name(history)
        history.write(folder / history_name)
        for f in files:
            shutil.copyfile(f, folder / f.name)
        facts = Facts(history)
        broker_cmd = meta.get("broker_cmd", self.broker_cmd)
        store = meta.get("store", self.store)
        record = {
            "name": name,
            "slug": s,
            "fmea": _fmea_of(fmea, vs),
            "history": f"{s}/{history_name}",
            "logs": [f"{s}/{name}" for name in names],
            "events": len(history),
            "duration_s": None if duration is None else round(duration, 3),
            "error": error,
            "meta": meta,
            "broker_cmd": broker_cmd,
            "store": store,
            # a flaw test adds its --flaw itself: rerun it with the run's broker command
            "reproduce": reproduce_scenario(
                meta, self.broker_cmd if meta.get("flaw") and self.broker_cmd else broker_cmd, store
            ),
            "verdicts": vs,
            "phases": phases_of(vs),
            "totals": timeline.counts(history, facts),
            "timeline": timeline.timeline(history, facts),
            "events_notable": timeline.notable_events(history),
        }
        with self._lock:
            self._scenarios.append(record)
        return record

    def add_result(
        self, result: Any, *, fmea: int | str | None = None, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record a :class:`chaos.scenario.ScenarioResult` (its name, history, verdicts, config, notes)."""
        config = getattr(result, "config", None)
        m: dict[str, Any] = {
            "broker_cmd": getattr(config, "broker_cmd", None),
            "store": getattr(config, "store", None),
            "notes": getattr(result, "notes", None) or {},
            "scenario_dir": str(getattr(result, "run_dir", "")) or None,
        }
        m.update(meta or {})
        run_dir = getattr(result, "run_dir", None)
        logs = sorted(Path(run_dir).glob("*.log")) if run_dir else []  # gone already after a pass
        return self.add_scenario(
            result.name,
            fmea,
            result.history,
            result.verdicts,
            m,
            error=getattr(result, "error", None),
            duration=getattr(result, "duration", None),
            files=logs,
        )

    def results(self, environment_error: str | None = None) -> dict[str, Any]:
        with self._lock:
            scenarios = list(self._scenarios)
        return {
            "format": FORMAT,
            "version": VERSION,
            "run_id": self.run_id,
            "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - self._t0, 3),
            "command": self.command,
            "reproduce": self.command,
            "seed": self.seed,
            "environment": environment(self.broker_cmd, self.store),
            "environment_error": environment_error,
            "scenarios": scenarios,
        }


def read_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFormatError(f"{path}: no results.json; is {run_dir} a run folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFormatError(f"{path}: unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise RunFormatError(f"{path}: not a {FORMAT} v{VERSION} results file")
    if not isinstance(data.get("scenarios"), list):
        raise RunFormatError(f"{path}: 'scenarios' must be a list")
    for i, s in enumerate(data["scenarios"]):
        if (
            not isinstance(s, dict)
            or not isinstance(s.get("name"), str)
            or not isinstance(s.get("verdicts"), list)
        ):
            raise RunFormatError(f"{path}: scenarios[{i}] needs a name and a list of verdicts")
    return data
