"""Writes a run folder's artefacts from its results: judge, results.json, junit.xml, index.html, runs index.

Everything here reads the results dict only (see ``reports.record``), so
:func:`rebuild` re-judges a finished run against today's gate.toml and
re-renders it without its histories. :func:`finish` is the end of a run: it
takes the recorder's results, judges them and writes the folder. HTML comes from jinja2 templates in
``reports/templates``; figures from ``reports.plots``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from chaos.checkers.verdict import is_not_applicable
from reports import plots
from reports.judge import GateConfig, GateOutcome, judge_results, seeded_bug
from reports.junit import build_junit
from reports.record import RunFormatError, RunRecorder, read_results


@dataclass(frozen=True)
class RunReport:
    """What :func:`finish` wrote, and the gate's outcome."""

    run_dir: Path
    results: dict[str, Any]
    outcome: GateOutcome

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code

    @property
    def html(self) -> Path:
        return self.run_dir / "index.html"


TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_RUNS_LISTED = 500
BANNERS = {
    "pass": ("The fixes held", "every applicable invariant passed and no threshold was crossed"),
    "fail": ("An invariant was violated", "at least one scenario failed: see below"),
    "unknown": ("Not shown either way", "some invariants could not be judged: see why below"),
    "error": ("Environment error", "the suites could not run"),
}


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["columns"] = _columns
    env.filters["fmt"] = _fmt
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, default=str)
    env.tests["table_like"] = lambda v: (
        isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
    )
    env.globals["not_applicable"] = is_not_applicable
    return env


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return str(v)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def render_run(results: Mapping[str, Any]) -> str:
    figures = {}
    for s in results.get("scenarios", []):
        if s.get("timeline"):
            figures[f"timeline-{s['slug']}"] = json.loads(plots.to_json(plots.timeline_figure(s["timeline"])))
        load = ((s.get("meta") or {}).get("notes") or {}).get("load")
        if isinstance(load, Mapping) and load.get("series"):
            figures[f"load-{s['slug']}"] = json.loads(plots.to_json(plots.load_figure(load)))
    gate = results.get("gate") or {}
    title, subtitle = BANNERS.get(gate.get("status", "unknown"), BANNERS["unknown"])
    seeded = [s for s in results.get("scenarios", []) if seeded_bug(s)]
    return (
        _env()
        .get_template("run.html.j2")
        .render(
            r=results,
            gate=gate,
            banner_title=title,
            banner_subtitle=subtitle,
            outcomes={o["name"]: o for o in gate.get("scenarios", [])},
            seeded=seeded,
            kill_rate=gate.get("kill_rate"),
            figures_json=json.dumps(figures, separators=(",", ":")).replace("</", "<\\/"),
            plotly_js=plots.PLOTLY_JS,
        )
    )


def write_run(run_dir: Path, results: dict[str, Any], config: GateConfig) -> RunReport:
    """Judge *results*, store the outcome in them, and write every artefact of the run folder."""
    outcome = judge_results(results, config)
    results["gate"] = outcome.to_dict(config)
    _atomic_write(
        run_dir / "results.json", json.dumps(results, indent=1, default=str, allow_nan=False) + "\n"
    )
    tree = build_junit(results, outcome, config)
    tree.write(run_dir / "junit.xml", encoding="utf-8", xml_declaration=True)
    plots.copy_plotly_js(run_dir)
    _atomic_write(run_dir / "index.html", render_run(results))
    write_runs_index(run_dir.parent)
    return RunReport(run_dir, results, outcome)


def finish(
    recorder: RunRecorder, config: GateConfig | None = None, *, environment_error: str | None = None
) -> RunReport:
    """Judge the recorder's run and write results.json, junit.xml, index.html and the runs index."""
    recorder.sealed = True
    return write_run(recorder.run_dir, recorder.results(environment_error), config or GateConfig())


def rebuild(run_dir: str | Path, config: GateConfig) -> RunReport:
    """Re-judge a finished run folder against *config* and re-render its artefacts."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    return write_run(run_dir, results, config)


# --- the list of past runs ---------------------------------------------------------------------------


def run_summary(results: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    gate = results.get("gate") or {}
    counts: dict[str, int] = {}
    for o in gate.get("scenarios", []):
        counts[o["status"]] = counts.get(o["status"], 0) + 1
    worst = None
    for s in results.get("scenarios", []):
        if seeded_bug(s):
            continue  # a broken broker on purpose: its latency is not the product's trend
        for w in (s.get("phases") or {}).get("windows", []):
            p = (w.get("latency") or {}).get("p99_ms")
            if isinstance(p, (int, float)) and (worst is None or p > worst):
                worst = p
    env = results.get("environment") or {}
    return {
        "run_id": results.get("run_id", folder.name),
        "folder": folder.name,
        "started_at": results.get("started_at"),
        "duration_s": results.get("duration_s"),
        "status": gate.get("status", "unknown"),
        "exit_code": gate.get("exit_code"),
        "summary": gate.get("summary", ""),
        "counts": counts,
        "scenarios": len(results.get("scenarios", [])),
        "broker_cmd": env.get("broker_cmd"),
        "store": env.get("store"),
        "commit": (env.get("git") or {}).get("commit"),
        "worst_fault_p99_ms": worst,
    }


def write_runs_index(runs_root: Path) -> Path:
    """``<runs_root>/index.html`` (reports/runs/index.html by default): past runs, newest first, a trend.

    Inside the runs root, beside the run folders it lists: a root of one's own (``--out /tmp/x``) gets
    its own index, and nothing is written outside the folder the user named.
    """
    runs: list[dict[str, Any]] = []
    broken: list[str] = []
    for folder in sorted((p for p in runs_root.iterdir() if p.is_dir()), reverse=True)[:MAX_RUNS_LISTED]:
        if not (folder / "results.json").exists():
            continue
        try:
            runs.append(run_summary(read_results(folder), folder))
        except RunFormatError as exc:
            broken.append(str(exc))
    plots.copy_plotly_js(runs_root)
    index = runs_root / "index.html"
    trend = plots.to_json(plots.trend_figure(list(reversed(runs)))) if runs else "null"
    html = (
        _env()
        .get_template("runs.html.j2")
        .render(runs=runs, broken=broken, trend_json=trend, plotly_js=plots.PLOTLY_JS)
    )
    _atomic_write(index, html)
    return index
