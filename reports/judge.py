"""The gate's judgement of a recorded run: verdicts plus thresholds, pure and re-runnable.

A run's ``results.json`` holds each scenario's verdicts with their evidence.
:func:`judge` turns that into one outcome with an exit code:

* ``0`` pass: every applicable verdict passed and no threshold was crossed;
* ``1`` fail: an invariant was violated, a threshold of ``gate.toml`` was crossed,
  or a seeded bug (a ``--flaw`` of the reference broker, a ``--mutant`` of the
  foreign broker) was *not* caught by the checker expected to catch it;
* ``2`` unknown: nothing failed but some verdict could not be shown either way
  (``[gate] unknown = "warn"`` turns this into 0 with a warning);
* ``3`` environment error: the suites could not run (decided by the caller).

The thresholds re-judge only evidence the checkers recorded (latency p99 per
fault window, the baseline p99 and recovery times of the ``recovery`` verdict,
hydration times, the duplicate ratio, the start-up exit time), so a team can
tighten budgets without touching the checkers, and re-judge an old run
(``fastport-lab gate --from RUN_DIR``). Nothing is measured here.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos.checkers.availability import NAME as AVAILABILITY
from chaos.checkers.duplicates import NAME as DUPLICATES
from chaos.checkers.hydration import HYDRATION
from chaos.checkers.isolation import NAME as ISOLATION
from chaos.checkers.recovery import NAME as RECOVERY
from chaos.checkers.startup import NAME as STARTUP
from chaos.checkers.verdict import is_not_applicable

EXIT_PASS, EXIT_FAIL, EXIT_UNKNOWN, EXIT_ENV = 0, 1, 2, 3
LATENCY_CHECKERS = (AVAILABILITY, ISOLATION)


class GateConfigError(ValueError):
    """gate.toml is unreadable or holds a bad value; the message names the key."""


@dataclass(frozen=True)
class Thresholds:
    """Budgets the gate holds a run to; ``None`` disables one. Units are in the names."""

    fault_p99_ms: float | None = 2000.0
    baseline_p99_ms: float | None = 1000.0
    max_duplicate_ratio: float | None = 0.5
    max_recovery_s: float | None = 15.0
    max_hydration_s: float | None = 20.0
    max_startup_exit_s: float | None = 5.0


PROCESS_FAULTS = ("broker-kill", "broker-pause")  # nothing is delivered while the broker is down


@dataclass(frozen=True)
class LoadThresholds:
    """Budgets of a load run (``fastport-lab load``), per phase of its fault schedule.

    Judged on the ``load-figures`` verdict's evidence: one row per phase (baseline,
    each fault window, the gaps, recovery), messages counted in the phase they were
    published in.
    """

    push_p99_ms: float | None = 2000.0  # every phase but the windows of process faults
    max_error_ratio: float | None = 0.05  # (refused + persist_failed) / sent, per phase
    min_deliveries_per_s: float | None = None  # in the baseline; machine-dependent, so off by default
    phase_push_p99_ms: Mapping[str, float | None] = field(default_factory=dict)  # by phase kind or fault


@dataclass(frozen=True)
class GateConfig:
    unknown: str = "fail"  # "fail": exit 2 on an unknown verdict; "warn": report it and exit 0
    thresholds: Thresholds = field(default_factory=Thresholds)
    source: str = "<defaults>"
    load: LoadThresholds = field(default_factory=LoadThresholds)

    def to_dict(self) -> dict[str, Any]:
        load = asdict(self.load)
        load["phase_push_p99_ms"] = dict(self.load.phase_push_p99_ms)
        return {
            "unknown": self.unknown,
            "thresholds": asdict(self.thresholds),
            "load": load,
            "source": self.source,
        }


def load_config(path: str | Path | None) -> GateConfig:
    """Read a gate.toml; ``None`` gives the documented defaults. Unknown keys are errors (typos bite)."""
    if path is None:
        return GateConfig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateConfigError(f"{p}: gate config not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GateConfigError(f"{p}: cannot read the gate config: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GateConfigError(f"{p}: not valid TOML: {exc}") from None
    return config_from(data, str(p))


def config_from(data: Mapping[str, Any], source: str = "<dict>") -> GateConfig:
    extra = set(data) - {"gate", "thresholds", "load"}
    if extra:
        raise GateConfigError(
            f"{source}: unknown section(s) {sorted(extra)}; expected [gate], [thresholds] and [load]"
        )
    gate = data.get("gate", {})
    if not isinstance(gate, Mapping) or set(gate) - {"unknown"}:
        raise GateConfigError(f'{source}: [gate] takes only \'unknown\' ("fail" or "warn"), got {dict(gate)}')
    unknown = gate.get("unknown", "fail")
    if unknown not in ("fail", "warn"):
        raise GateConfigError(f'{source}: [gate] unknown must be "fail" or "warn", got {unknown!r}')
    raw = data.get("thresholds", {})
    if not isinstance(raw, Mapping):
        raise GateConfigError(f"{source}: [thresholds] must be a table")
    known = Thresholds.__dataclass_fields__
    bad = set(raw) - set(known)
    if bad:
        raise GateConfigError(f"{source}: unknown threshold(s) {sorted(bad)}; known: {sorted(known)}")
    values = {key: _limit(v, key, source) for key, v in raw.items()}
    return GateConfig(
        unknown=unknown, thresholds=Thresholds(**values), source=source, load=_load_config(data, source)
    )


def _limit(v: Any, key: str, source: str) -> float | None:
    if v is False:
        return None  # `key = false` switches a threshold off
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise GateConfigError(f"{source}: threshold {key} must be a number >= 0 or false, got {v!r}")
    return float(v)


def _load_config(data: Mapping[str, Any], source: str) -> LoadThresholds:
    raw = data.get("load", {})
    if not isinstance(raw, Mapping):
        raise GateConfigError(f"{source}: [load] must be a table")
    known = set(LoadThresholds.__dataclass_fields__)
    bad = set(raw) - known
    if bad:
        raise GateConfigError(f"{source}: unknown [load] key(s) {sorted(bad)}; known: {sorted(known)}")
    values: dict[str, Any] = {
        k: _limit(v, f"load.{k}", source) for k, v in raw.items() if k != "phase_push_p99_ms"
    }
    phases = raw.get("phase_push_p99_ms", {})
    if not isinstance(phases, Mapping):
        raise GateConfigError(f"{source}: [load.phase_push_p99_ms] must be a table of phase = ms")
    values["phase_push_p99_ms"] = {
        str(k): _limit(v, f"load.phase_push_p99_ms.{k}", source) for k, v in phases.items()
    }
    return LoadThresholds(**values)


@dataclass(frozen=True)
class Finding:
    """A threshold a scenario crossed, with the value, the limit and where the value came from."""

    scenario: str
    threshold: str
    value: float
    limit: float
    source: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScenarioOutcome:
    name: str
    status: str  # pass | fail | unknown
    reasons: list[str]
    findings: list[Finding]


@dataclass
class GateOutcome:
    status: str  # pass | fail | unknown | error
    exit_code: int
    summary: str
    scenarios: list[ScenarioOutcome]
    warnings: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.scenarios for f in s.findings]

    kill_rate: dict[str, Any] | None = None

    def to_dict(self, config: GateConfig) -> dict[str, Any]:
        return {
            "kill_rate": self.kill_rate,
            "status": self.status,
            "exit_code": self.exit_code,
            "summary": self.summary,
            "warnings": self.warnings,
            "config": config.to_dict(),
            "scenarios": [{"name": s.name, "status": s.status, "reasons": s.reasons} for s in self.scenarios],
            "findings": [f.to_dict() for f in self.findings],
        }


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def findings_for(scenario: Mapping[str, Any], th: Thresholds) -> Iterator[Finding]:
    """Every threshold this scenario's recorded evidence crosses."""
    name = scenario.get("name", "?")
    verdicts = {v.get("name"): v for v in scenario.get("verdicts", [])}
    recovery = (verdicts.get(RECOVERY) or {}).get("evidence") or {}
    hydration = (verdicts.get(HYDRATION) or {}).get("evidence") or {}

    def crossed(key: str, value: float | None, limit: float | None, source: str, what: str) -> Finding | None:
        if value is None or limit is None or value <= limit:
            return None
        return Finding(name, key, value, limit, source, f"{what} {value:g} over {key} = {limit:g}")

    for checker in LATENCY_CHECKERS:
        v = verdicts.get(checker)
        if not v or is_not_applicable(v):
            continue
        for w in (v.get("evidence") or {}).get("windows", []):
            if w.get("effective") is False:
                continue
            f = crossed(
                "fault_p99_ms",
                _num((w.get("latency") or {}).get("p99_ms")),
                th.fault_p99_ms,
                f"{checker}.evidence.windows[{w.get('name')}].latency.p99_ms",
                f"p99 publish-to-deliver latency during {w.get('name')} at t={w.get('start_s')}s was",
            )
            if f:
                yield f
    base = _num((recovery.get("baseline") or {}).get("p99_ms"))
    f = crossed(
        "baseline_p99_ms",
        base,
        th.baseline_p99_ms,
        f"{RECOVERY}.evidence.baseline.p99_ms",
        "p99 latency without faults was",
    )
    if f:
        yield f
    dup = verdicts.get(DUPLICATES)
    ratio = _num((dup or {}).get("evidence", {}).get("duplicate_ratio")) if dup else None
    # judged only where the scenario judged duplicates: after a crash, redeliveries are expected
    src = f"{DUPLICATES}.evidence.duplicate_ratio"
    f = crossed("max_duplicate_ratio", ratio, th.max_duplicate_ratio, src, "duplicate delivery ratio was")
    if f:
        yield f
    for w in recovery.get("windows", []):
        if w.get("effective") is False:
            continue
        label = f"{w.get('name')} at t={w.get('start_s')}s"
        f = crossed(
            "max_recovery_s",
            _num(w.get("recovery_s")),
            th.max_recovery_s,
            f"{RECOVERY}.evidence.windows[{w.get('name')}].recovery_s",
            f"recovery after {label} took",
        )
        if f:
            yield f
    for c in hydration.get("crashes", []):
        if c.get("effective") is False:
            continue
        f = crossed(
            "max_hydration_s",
            _num(c.get("redelivery_s")),
            th.max_hydration_s,
            f"{HYDRATION}.evidence.crashes[{c.get('name')}].redelivery_s",
            f"redelivering what was owed after {c.get('name')} at t={c.get('start_s')}s took",
        )
        if f:
            yield f
    st = verdicts.get(STARTUP)
    for a in ((st or {}).get("evidence") or {}).get("attempts", []):
        f = crossed(
            "max_startup_exit_s",
            _num(a.get("elapsed")),
            th.max_startup_exit_s,
            f"{STARTUP}.evidence.attempts[t={a.get('started_s')}].elapsed",
            f"with port {a.get('port')} taken the broker took",
        )
        if f:
            yield f


LOAD_FIGURES = "load-figures"


def load_findings(scenario: Mapping[str, Any], th: LoadThresholds) -> Iterator[Finding]:
    """Every ``[load]`` budget this load run's per-phase figures cross."""
    name = scenario.get("name", "?")
    v = next((v for v in scenario.get("verdicts", []) if v.get("name") == LOAD_FIGURES), None)
    if not v or is_not_applicable(v):
        return
    for i, ph in enumerate((v.get("evidence") or {}).get("phases", [])):
        label, kind, fault = ph.get("name"), ph.get("kind"), ph.get("fault")
        src = f"{LOAD_FIGURES}.evidence.phases[{i}]"
        if fault in th.phase_push_p99_ms:
            limit = th.phase_push_p99_ms[fault]
        elif kind in th.phase_push_p99_ms:
            limit = th.phase_push_p99_ms[kind]
        else:
            limit = None if fault in PROCESS_FAULTS else th.push_p99_ms
        p99 = _num((ph.get("push") or {}).get("p99_ms"))
        if p99 is not None and limit is not None and p99 > limit:
            msg = f"push p99 in phase {label} was {p99:g} ms over push_p99_ms = {limit:g}"
            yield Finding(name, "load.push_p99_ms", p99, limit, f"{src}.push.p99_ms", msg)
        sent = _num(ph.get("sent")) or 0.0
        errors = (_num(ph.get("refused")) or 0.0) + (_num(ph.get("persist_failed")) or 0.0)
        if th.max_error_ratio is not None and sent > 0 and errors / sent > th.max_error_ratio:
            ratio = round(errors / sent, 4)
            msg = f"error ratio in phase {label} was {ratio:g} over max_error_ratio = {th.max_error_ratio:g}"
            yield Finding(name, "load.max_error_ratio", ratio, th.max_error_ratio, f"{src}.refused", msg)
        rate = _num(ph.get("deliveries_per_s"))
        low = th.min_deliveries_per_s
        if kind == "baseline" and low is not None and rate is not None and rate < low:
            msg = f"baseline throughput was {rate:g} deliveries/s under min_deliveries_per_s = {low:g}"
            yield Finding(name, "load.min_deliveries_per_s", rate, low, f"{src}.deliveries_per_s", msg)


SEEDED_KINDS = ("flaw", "mutant")  # meta keys of scenarios run against a bug put in on purpose


def seeded_bug(scenario: Mapping[str, Any]) -> str | None:
    """``"flaw store-first"`` / ``"mutant backlog-cap"`` for a seeded-bug scenario, else None."""
    meta = scenario.get("meta") or {}
    for kind in SEEDED_KINDS:
        if meta.get(kind):
            return f"{kind} {meta[kind]}"
    return None


def kill_rate(scenarios: list[Mapping[str, Any]], outcomes: Mapping[str, str]) -> dict[str, Any] | None:
    """How many seeded bugs the run caught (outcome pass): the lab's own kill rate; None without any."""
    seeded = [s for s in scenarios if seeded_bug(s)]
    if not seeded:
        return None
    caught = [s["name"] for s in seeded if outcomes.get(s.get("name", "")) == "pass"]
    return {
        "seeded": len(seeded),
        "caught": len(caught),
        "rate": round(len(caught) / len(seeded), 4),
        "missed": [s.get("name") for s in seeded if s.get("name") not in caught],
    }


def judge_scenario(scenario: Mapping[str, Any], config: GateConfig) -> ScenarioOutcome:
    name = scenario.get("name", "?")
    verdicts = scenario.get("verdicts", [])
    error = scenario.get("error")
    seeded = seeded_bug(scenario)
    if seeded:
        return _judge_flaw(scenario, seeded)
    reasons: list[str] = []
    fails = [v for v in verdicts if v.get("status") == "fail"]
    unknowns = [v for v in verdicts if v.get("status") == "unknown" and not is_not_applicable(v)]
    findings = list(findings_for(scenario, config.thresholds)) + list(load_findings(scenario, config.load))
    reasons += [f"{v.get('name')} failed: {v.get('summary')}" for v in fails]
    reasons += [f"threshold crossed: {f.message} ({f.source})" for f in findings]
    if fails or findings:
        status = "fail"
    elif error or unknowns or not verdicts:
        status = "unknown"
    else:
        status = "pass"
    if error:
        reasons.append(f"the scenario did not complete: {error}")
    if not verdicts and not error:
        reasons.append("the scenario returned no verdict")
    reasons += [f"{v.get('name')} unknown: {v.get('summary')}" for v in unknowns]
    return ScenarioOutcome(name, status, reasons, findings)


def _judge_flaw(scenario: Mapping[str, Any], flaw: str) -> ScenarioOutcome:
    """A seeded-bug scenario passes when its bug was caught: the expected checker *failed*."""
    name = scenario.get("name", "?")
    expect = (scenario.get("meta") or {}).get("expect")
    verdicts = {v.get("name"): v for v in scenario.get("verdicts", [])}
    if scenario.get("error"):
        return ScenarioOutcome(
            name, "unknown", [f"{flaw}: scenario did not complete: {scenario['error']}"], []
        )
    if expect:
        v = verdicts.get(expect)
        if v is None:
            return ScenarioOutcome(name, "unknown", [f"{flaw}: no {expect} verdict was recorded"], [])
        if v.get("status") == "fail":
            return ScenarioOutcome(name, "pass", [f"{flaw} caught by {expect}"], [])
        status = "unknown" if v.get("status") == "unknown" else "fail"
        return ScenarioOutcome(
            name, status, [f"{flaw} NOT caught: {expect} said {v.get('status')}: {v.get('summary')}"], []
        )
    caught = [n for n, v in verdicts.items() if v.get("status") == "fail"]
    if caught:
        return ScenarioOutcome(name, "pass", [f"{flaw} caught by {', '.join(caught)}"], [])
    return ScenarioOutcome(name, "fail", [f"{flaw} NOT caught: no checker failed"], [])


def judge(results: Mapping[str, Any], config: GateConfig) -> GateOutcome:
    """The gate's outcome for a run (``results.json`` as a dict)."""
    scenarios = results.get("scenarios") or []
    outs = [judge_scenario(s, config) for s in scenarios]
    if not outs:
        return GateOutcome("error", EXIT_ENV, "the run holds no scenario: nothing was tested.", [])
    rate = kill_rate(scenarios, {o.name: o.status for o in outs})
    outcome = _overall(outs, config)
    outcome.kill_rate = rate
    return outcome


def _overall(outs: list[ScenarioOutcome], config: GateConfig) -> GateOutcome:
    failed = [o for o in outs if o.status == "fail"]
    unknown = [o for o in outs if o.status == "unknown"]
    if failed:
        first = failed[0]
        return GateOutcome(
            "fail",
            EXIT_FAIL,
            f"{len(failed)} of {len(outs)} scenario(s) failed; first: {first.name}: {first.reasons[0]}",
            outs,
        )
    if unknown:
        msg = (
            f"{len(unknown)} of {len(outs)} scenario(s) could not show their invariants; first: "
            f"{unknown[0].name}: {unknown[0].reasons[0] if unknown[0].reasons else 'unknown'}"
        )
        if config.unknown == "warn":
            return GateOutcome("pass", EXIT_PASS, f"passed with warnings: {msg}", outs, [msg])
        return GateOutcome("unknown", EXIT_UNKNOWN, msg, outs)
    return GateOutcome("pass", EXIT_PASS, f"all {len(outs)} scenario(s) held their invariants.", outs)


def judge_results(results: Mapping[str, Any], config: GateConfig) -> GateOutcome:
    """The gate's outcome, with an environment error taking precedence over any verdict."""
    err = results.get("environment_error")
    if err:
        return GateOutcome("error", EXIT_ENV, f"environment error: {err}", [])
    return judge(results, config)
